"""``load``: read TOML, interpolate, validate every section, raise one ConfigError."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from ..errors import ConfigError
from ..peers import is_loopback
from .access import parse_access
from .identities import parse_identities
from .model import Config, OutboundConfig, RouteConfig, TokensConfig
from .parse import Problems, get, interpolate, only, table
from .routes import parse_routes
from .server import default_state_dir, parse_server, state_dir
from .signin import check_route_callers
from .tap import parse_tap


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


def load_state_dir(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """Only ``server.state_dir`` (or its default) of the file at ``path``: for commands that
    need nothing else and must work while the rest of the file is still incomplete."""
    if path is None:
        return default_state_dir(env)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([f"{path}: {e}"]) from None
    p = Problems()
    server = interpolate(table(raw, "server", p), env, "server", p)
    folder = state_dir(server, env, path.parent, p)
    if p.items:
        raise ConfigError(p.items)
    return folder


def loads(text: str, env: Mapping[str, str], *, base_dir: Path | None = None) -> Config:
    """Parse and validate configuration text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax: {e}"]) from None
    return from_dict(raw, env, base_dir=base_dir or Path.cwd())


def from_dict(raw: Mapping[str, Any], env: Mapping[str, str], *, base_dir: Path) -> Config:
    """Validate an already-parsed configuration mapping."""
    p = Problems()
    raw = interpolate(raw, env, "", p)
    only(raw, {"server", "outbound", "tokens", "identities", "routes", "access", "tap"}, "", p)
    server = parse_server(table(raw, "server", p), env, base_dir, p)
    outbound = _outbound(table(raw, "outbound", p), base_dir, p, env)
    tokens = _tokens(table(raw, "tokens", p), p)
    identities = parse_identities(raw.get("identities"), env, p, base_dir=base_dir)
    routes = parse_routes(raw.get("routes"), identities, p)
    for i, route in enumerate(routes):
        if route.port is not None and route.port == server.port:
            p.add(f"routes[{i}].port", f"{route.port} is server.port; a route needs its own port")
    _no_cleartext_through_proxy(routes, outbound, p)
    access = parse_access(raw.get("access"), {r.name for r in routes}, p)
    check_route_callers(raw.get("routes"), routes, identities, access.entra, p)
    tap = parse_tap(raw.get("tap"), base_dir, p)
    if p.items:
        raise ConfigError(p.items)
    return Config(server, outbound, tokens, identities, routes, access, tap)


_PROXY_VARS = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")


def _proxy_env(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables, lower-case names winning over upper-case as in urllib."""
    found = {k.lower(): v for k, v in env.items() if k.isupper() and k.lower() in _PROXY_VARS}
    found.update({k: v for k, v in env.items() if k in _PROXY_VARS})
    return {k: v for k, v in found.items() if v}


def _outbound(
    t: Mapping[str, Any], base_dir: Path, p: Problems, env: Mapping[str, str]
) -> OutboundConfig:
    only(
        t,
        {"ca_file", "connect_timeout", "read_timeout", "proxy", "replay_body_bytes"},
        "outbound",
        p,
    )
    ca = get(t, "ca_file", str, "outbound", p, None)
    ca_file = None
    if ca:
        ca_file = (base_dir / ca).resolve()
        if not ca_file.is_file():
            p.add("outbound.ca_file", f"no such file: {ca}")
    timeouts = []
    for key in ("connect_timeout", "read_timeout"):
        value = get(t, key, float, "outbound", p, getattr(OutboundConfig(), key))
        if value <= 0:
            p.add(f"outbound.{key}", "must be a positive number of seconds")
        timeouts.append(value)
    proxy = get(t, "proxy", str, "outbound", p, None) or None
    if proxy is not None:
        url = URL(proxy)
        if url.scheme not in ("http", "https") or not url.host:
            p.add("outbound.proxy", "must be an http:// or https:// URL with a host")
    replay = get(t, "replay_body_bytes", int, "outbound", p, OutboundConfig().replay_body_bytes)
    if replay < 0:
        p.add("outbound.replay_body_bytes", "must be 0 or more")
    return OutboundConfig(ca_file, timeouts[0], timeouts[1], proxy, replay, _proxy_env(env))


def _no_cleartext_through_proxy(
    routes: tuple[RouteConfig, ...], outbound: OutboundConfig, p: Problems
) -> None:
    """A plain-http upstream never goes through a proxy (it would read the token), and only a
    loopback one may be reached directly: name both keys when a configuration asks for more."""
    configured = outbound.configured_proxy()
    if configured is None:
        return
    for i, route in enumerate(routes):
        url = URL(route.upstream)
        if url.scheme == "http" and url.host and not is_loopback(url.host):
            p.add(
                f"routes[{i}].upstream",
                f"plain http:// to {url.host} with {configured[0]} set: the token would cross "
                "the proxy and the network in clear; a plain-http upstream is never sent "
                "through a proxy, so only a loopback one can work. Use https://",
            )


def _tokens(t: Mapping[str, Any], p: Problems) -> TokensConfig:
    d = TokensConfig()
    only(t, {"wait_timeout", "prefetch", "min_refresh_interval"}, "tokens", p)
    wait = get(t, "wait_timeout", float, "tokens", p, d.wait_timeout)
    if wait <= 0:
        p.add("tokens.wait_timeout", "must be a positive number of seconds")
    interval = get(t, "min_refresh_interval", float, "tokens", p, d.min_refresh_interval)
    if interval < 0:
        p.add("tokens.min_refresh_interval", "must be 0 or more seconds")
    prefetch = get(t, "prefetch", bool, "tokens", p, d.prefetch)
    return TokensConfig(wait, prefetch, interval)
