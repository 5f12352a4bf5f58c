"""The configuration: frozen dataclasses built once by :func:`load` and passed explicitly.

``load`` reads TOML, replaces ``${NAME}`` from the given environment, validates everything and
raises one :class:`ConfigError` that lists every problem by key path. Nothing else in the
package reads the environment.
"""

from ..errors import ConfigError
from .load import from_dict, load, load_state_dir, loads
from .model import (
    Config,
    IdentityConfig,
    OutboundConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    TlsConfig,
    TokensConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "IdentityConfig",
    "OutboundConfig",
    "RouteConfig",
    "Secret",
    "ServerConfig",
    "TlsConfig",
    "TokensConfig",
    "from_dict",
    "load",
    "load_state_dir",
    "loads",
]
