"""The configuration: frozen dataclasses built once by :func:`load` and passed explicitly.

``load`` reads TOML, replaces ``${NAME}`` from the given environment, validates everything and
raises one :class:`ConfigError` that lists every problem by key path. Nothing else in the
package reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from . import presets
from .errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECRET_KEYS = frozenset({"client_secret"})


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


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    ca_file: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    proxy: str | None = None


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


class _FromEnv(str):
    """A string that took a value from the environment: error messages never show it."""

    __slots__ = ()


def _show(value: object) -> str:
    """``value`` for an error message; values from the environment may be secrets."""
    return "(value from the environment)" if isinstance(value, _FromEnv) else f"{value!r:.80}"


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.unset: set[str] = set()  # keys whose ${VAR} was missing: one message is enough

    def add(self, path: str, message: str) -> None:
        if path not in self.unset:
            self.items.append(f"{path}: {message}")

    def missing_variable(self, path: str, name: str) -> None:
        self.add(path, f"environment variable {name} is not set")
        self.unset.add(path)


def load(path: Path | str, env: Mapping[str, str]) -> Config:
    """Read and validate the TOML file at ``path``; relative paths in it are relative to it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return loads(text, env, base_dir=path.parent)


def loads(text: str, env: Mapping[str, str], *, base_dir: Path | None = None) -> Config:
    """Parse and validate configuration text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax: {e}"]) from None
    return from_dict(raw, env, base_dir=base_dir or Path.cwd())


def from_dict(raw: Mapping[str, Any], env: Mapping[str, str], *, base_dir: Path) -> Config:
    """Validate an already-parsed configuration mapping."""
    p = _Problems()
    raw = _interpolate(raw, env, "", p)
    _only(raw, {"server", "outbound", "tokens", "identities", "routes"}, "", p)
    server = _server(_table(raw, "server", p), p)
    outbound = _outbound(_table(raw, "outbound", p), base_dir, p)
    tokens = _tokens(_table(raw, "tokens", p), p)
    identities = _identities(raw.get("identities"), env, p)
    routes = _routes(raw.get("routes"), identities, p)
    if p.items:
        raise ConfigError(p.items)
    return Config(server, outbound, tokens, identities, routes)


def _interpolate(value: Any, env: Mapping[str, str], path: str, p: _Problems) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                p.missing_variable(path, m.group(1))
                return ""
            return env[m.group(1)]

        replaced = _VAR.sub(sub, value)
        return _FromEnv(replaced) if replaced != value else replaced
    if isinstance(value, Mapping):
        return {k: _interpolate(v, env, _join(path, k), p) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", p) for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _only(table: Mapping[str, Any], allowed: set[str], path: str, p: _Problems) -> None:
    for key in table:
        if key not in allowed:
            p.add(_join(path, key), f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def _table(raw: Mapping[str, Any], key: str, p: _Problems) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        p.add(key, "must be a table")
        return {}
    return value


def _get(t: Mapping[str, Any], key: str, kind: type, path: str, p: _Problems, default: Any) -> Any:
    if key not in t:
        return default
    value = t[key]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        shown = "" if key in _SECRET_KEYS else f", got {_show(value)}"
        p.add(_join(path, key), f"must be {_KIND_NAMES[kind]}{shown}")
        return default
    return value


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _server(t: Mapping[str, Any], p: _Problems) -> ServerConfig:
    _only(t, {"host", "port"}, "server", p)
    host = _get(t, "host", str, "server", p, ServerConfig().host)
    port = _get(t, "port", int, "server", p, ServerConfig().port)
    if not 0 <= port <= 65535:
        p.add("server.port", f"must be between 0 and 65535, got {port}")
    if not host:
        p.add("server.host", "must not be empty")
    return ServerConfig(host, port)


def _outbound(t: Mapping[str, Any], base_dir: Path, p: _Problems) -> OutboundConfig:
    _only(t, {"ca_file", "connect_timeout", "read_timeout", "proxy"}, "outbound", p)
    ca = _get(t, "ca_file", str, "outbound", p, None)
    ca_file = None
    if ca:
        ca_file = (base_dir / ca).resolve()
        if not ca_file.is_file():
            p.add("outbound.ca_file", f"no such file: {ca}")
    timeouts = []
    for key in ("connect_timeout", "read_timeout"):
        value = _get(t, key, float, "outbound", p, getattr(OutboundConfig(), key))
        if value <= 0:
            p.add(f"outbound.{key}", "must be a positive number of seconds")
        timeouts.append(value)
    proxy = _get(t, "proxy", str, "outbound", p, None) or None
    if proxy is not None:
        url = URL(proxy)
        if url.scheme not in ("http", "https") or not url.host:
            p.add("outbound.proxy", "must be an http:// or https:// URL with a host")
    return OutboundConfig(ca_file, timeouts[0], timeouts[1], proxy)


def _tokens(t: Mapping[str, Any], p: _Problems) -> TokensConfig:
    _only(t, {"wait_timeout", "prefetch"}, "tokens", p)
    wait = _get(t, "wait_timeout", float, "tokens", p, TokensConfig().wait_timeout)
    if wait <= 0:
        p.add("tokens.wait_timeout", "must be a positive number of seconds")
    return TokensConfig(wait, _get(t, "prefetch", bool, "tokens", p, TokensConfig().prefetch))


_AZURE_ENV = {
    "tenant_id": "AZURE_TENANT_ID",
    "client_id": "AZURE_CLIENT_ID",
    "client_secret": "AZURE_CLIENT_SECRET",
    "authority_host": "AZURE_AUTHORITY_HOST",
}


def _identities(raw: Any, env: Mapping[str, str], p: _Problems) -> dict[str, IdentityConfig]:
    if raw is None:
        # No [identities]: one identity named "default" from azure-identity's variables.
        raw = {"default": {k: env[v] for k, v in _AZURE_ENV.items() if env.get(v)}}
        missing = [v for k, v in _AZURE_ENV.items() if k != "authority_host" and not env.get(v)]
        if missing:
            p.add("identities", f"no [identities] table, and {', '.join(missing)} not set")
            return {}
    if not isinstance(raw, Mapping) or not raw:
        p.add("identities", "must be a table of named identities, e.g. [identities.default]")
        return {}
    result = {}
    for name, t in raw.items():
        path = f"identities.{name}"
        if not isinstance(t, Mapping):
            p.add(path, "must be a table")
            continue
        if not _NAME.match(name):
            p.add(path, "name must be letters, digits, '_', '.' or '-'")
        _only(t, {"tenant_id", "client_id", "client_secret", "authority_host"}, path, p)
        values = {}
        for key in ("tenant_id", "client_id", "client_secret"):
            values[key] = _get(t, key, str, path, p, "")
            if key not in t or t[key] == "":
                p.add(f"{path}.{key}", "is required")
        authority = _get(t, "authority_host", str, path, p, presets.DEFAULT_AUTHORITY_HOST)
        url = URL(authority.rstrip("/"))
        if url.scheme != "https" or not url.host or url.path not in ("", "/") or url.query_string:
            p.add(f"{path}.authority_host", f"must be an https:// origin, got {_show(authority)}")
        result[name] = IdentityConfig(
            name,
            values["tenant_id"],
            values["client_id"],
            Secret(values["client_secret"]),
            str(url.origin()) if url.host else authority,
        )
    return result


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (an ``http://`` upstream is allowed only there)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_ROUTE_KEYS = {"name", "prefix", "upstream", "scope", "identity", "strip_prefix", "preset"}


def _routes(
    raw: Any, identities: Mapping[str, IdentityConfig], p: _Problems
) -> tuple[RouteConfig, ...]:
    if raw is None:
        raw = [{"preset": name} for name in presets.DEFAULT_ROUTE_PRESETS]
    if not isinstance(raw, list) or not raw:
        p.add("routes", "must be a non-empty array of tables, written [[routes]]")
        return ()
    routes: list[RouteConfig] = []
    for i, t in enumerate(raw):
        path = f"routes[{i}]"
        if not isinstance(t, Mapping):
            p.add(path, "must be a table")
            continue
        _only(t, _ROUTE_KEYS, path, p)
        route = _route(t, path, identities, p)
        if route is not None:
            routes.append(route)
    for field_name in ("name", "prefix"):
        seen: dict[str, int] = {}
        for i, r in enumerate(routes):
            value = getattr(r, field_name)
            if value in seen:
                p.add(
                    f"routes[{i}].{field_name}", f"{value!r} is also used by routes[{seen[value]}]"
                )
            seen.setdefault(value, i)
    return tuple(routes)


def _route(
    t: Mapping[str, Any], path: str, identities: Mapping[str, IdentityConfig], p: _Problems
) -> RouteConfig | None:
    preset_name = _get(t, "preset", str, path, p, None)
    preset = presets.Preset(None, None)
    if preset_name is not None:
        if preset_name not in presets.PRESETS:
            choices = ", ".join(presets.PRESETS)
            p.add(f"{path}.preset", f"unknown preset {preset_name!r} (choose from: {choices})")
        preset = presets.PRESETS.get(preset_name, preset)
    name = _get(t, "name", str, path, p, preset_name or "")
    if not name:
        p.add(f"{path}.name", "is required (or give a preset)")
    elif not _NAME.match(name):
        p.add(f"{path}.name", "must be letters, digits, '_', '.' or '-'")
    prefix = _get(t, "prefix", str, path, p, f"/{name}")
    if not prefix.startswith("/") or "?" in prefix or "#" in prefix or "//" in prefix:
        p.add(f"{path}.prefix", f"must be a path starting with '/', got {_show(prefix)}")
    prefix = prefix.rstrip("/") or "/"
    upstream = _get(t, "upstream", str, path, p, preset.upstream or "")
    if not upstream:
        p.add(f"{path}.upstream", "is required" + (" for this preset" if preset_name else ""))
    else:
        upstream = _check_upstream(upstream, f"{path}.upstream", p)
    scope = _get(t, "scope", str, path, p, preset.scope or "")
    if not scope and upstream:
        scope = presets.default_scope(upstream)
    if "scope" in t and not scope:
        p.add(f"{path}.scope", "must not be empty")
    identity = _get(t, "identity", str, path, p, "")
    if not identity:
        if len(identities) == 1:
            identity = next(iter(identities))
        elif len(identities) > 1:
            p.add(f"{path}.identity", f"is required: there are {len(identities)} identities")
    elif identities and identity not in identities:
        p.add(f"{path}.identity", f"no identity named {identity!r} in [identities]")
    strip = _get(t, "strip_prefix", bool, path, p, True)
    return RouteConfig(name, prefix, upstream, scope, identity, strip)


def _check_upstream(upstream: str, path: str, p: _Problems) -> str:
    try:
        url = URL(upstream)
    except ValueError:
        p.add(path, f"not a URL: {_show(upstream)}")
        return upstream
    if url.scheme not in ("http", "https") or not url.host:
        p.add(path, f"must be an https:// URL, got {_show(upstream)}")
    elif url.scheme == "http" and not is_loopback(url.host):
        p.add(
            path,
            "http:// only for a loopback host: a token never crosses a network in clear",
        )
    if url.user or url.password or url.raw_query_string or url.raw_fragment:
        p.add(path, "must not hold user info, a query or a fragment")
    return upstream.rstrip("/")
