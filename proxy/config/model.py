"""The configuration's data: frozen, slotted dataclasses built once and passed explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from .. import presets
from .route_options import RouteEdits, RouteLimits, RoutePolicy


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential value that never shows itself in a repr, a log or an error."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the loopback ones
    allow_anonymous_remote: bool = False  # bind a non-loopback address without [access]
    drain_delay: float = 0.0  # seconds between "not ready" and closing the listener
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish on shutdown
    workers: int = 1


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    ca_file: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    proxy: str | None = None
    replay_body_bytes: int = 65536  # bodies up to this size are kept to retry once after a 401


@dataclass(frozen=True, slots=True)
class TokensConfig:
    wait_timeout: float = 5.0
    prefetch: bool = True


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    name: str
    tenant_id: str
    client_id: str
    client_secret: Secret
    authority_host: str = presets.DEFAULT_AUTHORITY_HOST

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def instance_discovery(self) -> bool:
        return URL(self.authority_host).host in presets.KNOWN_AUTHORITY_HOSTS


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    prefix: str
    upstream: str
    scope: str
    identity: str
    strip_prefix: bool = True
    port: int | None = None  # a listener of its own: every path there goes to this route
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    limits: RouteLimits = field(default_factory=RouteLimits)
    edits: RouteEdits = field(default_factory=RouteEdits)

    @property
    def upstream_origin(self) -> str:
        return str(URL(self.upstream).origin())


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    outbound: OutboundConfig = OutboundConfig()
    tokens: TokensConfig = TokensConfig()
    identities: Mapping[str, IdentityConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
