"""The [server] table: listen address, TLS on the listeners, the address clients see through a
reverse proxy, and the folder for files the proxy makes itself (the local CA)."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from ..credential_files import CredentialError, ServerPairError, check_server_pair
from .model import Secret, ServerConfig, TlsConfig
from .parse import Problems, _FromEnv, get, only, show
from .route_options import str_list

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
_KEYS = {
    "host",
    "port",
    "allowed_hosts",
    "allow_anonymous_remote",
    "drain_delay",
    "shutdown_timeout",
    "workers",
    "event_loop",
    "tls",
    "tls_cert",
    "tls_key",
    "tls_key_password",
    "tls_key_password_file",
    "state_dir",
    "public_url",
    "trusted_proxies",
    "body_timeout",
    "header_timeout",
    "idle_timeout",
    "max_connections",
    "max_held_batch_bytes",
}
_TLS_FILE_KEYS = ("tls_cert", "tls_key", "tls_key_password", "tls_key_password_file")
LOCAL_TLS_FOLDER = "tls"  # below server.state_dir: the local CA and its certificate


def default_state_dir(env: Mapping[str, str], platform: str = sys.platform) -> Path | None:
    """The per-user folder for the proxy's own files; None when the environment names no home.

    Windows ``%LOCALAPPDATA%\\ppproxy``; macOS ``~/Library/Application Support/ppproxy``;
    elsewhere ``$XDG_STATE_HOME/ppproxy``, else ``~/.local/state/ppproxy`` (XDG base dirs).
    """
    if platform == "win32":
        local = env.get("LOCALAPPDATA")
        return Path(local) / "ppproxy" if local else None
    home = env.get("HOME")
    if platform == "darwin":
        return Path(home) / "Library" / "Application Support" / "ppproxy" if home else None
    xdg = env.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the spec says relative values are to be ignored
        return Path(xdg) / "ppproxy"
    return Path(home) / ".local" / "state" / "ppproxy" if home else None


def parse_server(
    t: Mapping[str, Any], env: Mapping[str, str], base_dir: Path, p: Problems
) -> ServerConfig:
    """Validate [server]; relative paths are relative to ``base_dir``, the default state
    folder comes from ``env``."""
    only(t, _KEYS, "server", p)
    d = ServerConfig()
    host = get(t, "host", str, "server", p, d.host)
    port = get(t, "port", int, "server", p, d.port)
    if not 0 <= port <= 65535:
        p.add("server.port", f"must be between 0 and 65535, got {port}")
    if not host:
        p.add("server.host", "must not be empty")
    allowed = str_list(t, "allowed_hosts", "server", p)
    anonymous = get(t, "allow_anonymous_remote", bool, "server", p, d.allow_anonymous_remote)
    drain = get(t, "drain_delay", float, "server", p, d.drain_delay)
    if drain < 0:
        p.add("server.drain_delay", "must be 0 or more seconds")
    shutdown = get(t, "shutdown_timeout", float, "server", p, d.shutdown_timeout)
    if shutdown < 0:
        p.add("server.shutdown_timeout", "must be 0 or more seconds")
    workers = get(t, "workers", int, "server", p, d.workers)
    if workers < 1:
        p.add("server.workers", f"must be 1 or more, got {workers}")
    event_loop = get(t, "event_loop", str, "server", p, d.event_loop)
    if event_loop not in EVENT_LOOPS:
        p.add(
            "server.event_loop", f"must be one of {', '.join(EVENT_LOOPS)}, got {show(event_loop)}"
        )
    elif event_loop == "uvloop":
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:
            p.add("server.event_loop", "uvloop is not installed: pip install 'ppproxy[speed]'")
    held = get(t, "max_held_batch_bytes", int, "server", p, d.max_held_batch_bytes)
    if held < 1:
        p.add("server.max_held_batch_bytes", f"must be 1 or more bytes, got {held}")
    folder = state_dir(t, env, base_dir, p)
    return ServerConfig(
        host,
        port,
        tuple(h.lower() for h in allowed),
        anonymous,
        drain,
        shutdown,
        workers,
        event_loop,
        tls=_tls(t, base_dir, folder, p),
        public_url=_public_url(t, p),
        trusted_proxies=_trusted_proxies(t, p),
        state_dir=folder,
        body_timeout=_seconds(t, "body_timeout", d.body_timeout, p),
        header_timeout=_seconds(t, "header_timeout", d.header_timeout, p),
        idle_timeout=_seconds(t, "idle_timeout", d.idle_timeout, p),
        max_connections=_max_connections(t, d.max_connections, p),
        max_held_batch_bytes=held,
    )


def _max_connections(t: Mapping[str, Any], default: int, p: Problems) -> int:
    value: int = get(t, "max_connections", int, "server", p, default)
    if value < 1:
        p.add("server.max_connections", f"must be 1 or more, got {value}")
        return default
    return value


def _seconds(t: Mapping[str, Any], key: str, default: float, p: Problems) -> float:
    """A positive number of seconds under ``server``."""
    value: float = get(t, key, float, "server", p, default)
    if value <= 0:
        p.add(f"server.{key}", "must be a positive number of seconds")
        return default
    return value


def _path(t: Mapping[str, Any], key: str, base_dir: Path, p: Problems) -> Path | None:
    value: str | None = get(t, key, str, "server", p, None)
    if value is None:
        return None
    if not value:
        p.add(f"server.{key}", "must not be empty")
        return None
    return (base_dir / value).resolve()


def state_dir(
    t: Mapping[str, Any], env: Mapping[str, str], base_dir: Path, p: Problems
) -> Path | None:
    """``state_dir`` of a [server] table, relative to ``base_dir``, else the default."""
    folder = _path(t, "state_dir", base_dir, p) if "state_dir" in t else default_state_dir(env)
    if folder is not None and folder.exists() and not folder.is_dir():
        p.add("server.state_dir", f"{folder} is not a folder")
    return folder


def _tls(
    t: Mapping[str, Any], base_dir: Path, state_dir: Path | None, p: Problems
) -> TlsConfig | None:
    mode = get(t, "tls", str, "server", p, None)
    given = [k for k in _TLS_FILE_KEYS if k in t]
    if mode is not None:
        if mode != "local":
            p.add("server.tls", f'must be "local" (or give tls_cert and tls_key), got {show(mode)}')
            return None
        for name in given:
            p.add(f"server.{name}", 'is not used with tls = "local": give one or the other')
        if state_dir is None:
            p.add("server.state_dir", 'is needed for tls = "local" (no home folder is known)')
            return None
        folder = state_dir / LOCAL_TLS_FOLDER
        return TlsConfig(folder / "localhost.pem", local_dir=folder)
    if not given:
        return None
    cert = _path(t, "tls_cert", base_dir, p)
    key = _path(t, "tls_key", base_dir, p)
    secret = _password(t, p)
    password_file = _path(t, "tls_key_password_file", base_dir, p)
    for name in ("tls_cert", "tls_key"):
        if name not in t:
            others = " and ".join(k for k in given if k != name)
            p.add(f"server.{name}", f"is required with {others}")
    if "tls_key_password" in t and "tls_key_password_file" in t:
        p.add("server", "give tls_key_password or tls_key_password_file, not both")
    if cert is None or key is None:
        return None
    literal = (
        ("server.tls_key_password",)
        if isinstance(t.get("tls_key_password"), str)
        and not isinstance(t["tls_key_password"], _FromEnv)
        else ()
    )
    tls = TlsConfig(cert, key, secret, password_file, literal_secrets=literal)
    missing = [(k, f) for k, f in (("tls_cert", cert), ("tls_key", key)) if not f.is_file()]
    if password_file is not None and not password_file.is_file():
        missing.append(("tls_key_password_file", password_file))
    for name, file in missing:
        p.add(f"server.{name}", f"no such file: {file}")
    if not missing:
        try:
            password = tls.password()
        except CredentialError as e:
            p.add("server.tls_key_password_file", str(e))
            return tls
        try:
            check_server_pair(cert, key, password)
        except ServerPairError as e:
            p.add(f"server.{e.key}", str(e))
    return tls


def _password(t: Mapping[str, Any], p: Problems) -> Secret | None:
    if "tls_key_password" not in t:
        return None
    value = t["tls_key_password"]
    if not isinstance(value, str) or not value:
        p.add("server.tls_key_password", "must be a non-empty string")  # never shown: a secret
        return None
    return Secret(value)


def _public_url(t: Mapping[str, Any], p: Problems) -> str | None:
    value = get(t, "public_url", str, "server", p, None)
    if value is None:
        return None
    try:
        url = URL(value.rstrip("/"))
    except ValueError:
        url = URL()
    if (
        url.scheme not in ("http", "https")
        or not url.host
        or url.raw_path not in ("", "/")
        or url.query_string
        or url.fragment
        or url.user is not None
    ):
        p.add(
            "server.public_url",
            "must be an http:// or https:// origin (scheme, host, optional port; no path), "
            f'e.g. "https://ppproxy.corp.example", got {show(value)}',
        )
        return None
    return str(url.origin())


def _trusted_proxies(t: Mapping[str, Any], p: Problems) -> tuple[str, ...]:
    networks = []
    for i, value in enumerate(str_list(t, "trusted_proxies", "server", p)):
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=True)))
        except ValueError as e:
            hint = ""
            if "host bits set" in str(e):
                hint = f"; did you mean {ipaddress.ip_network(value.strip(), strict=False)}?"
            p.add(
                f"server.trusted_proxies[{i}]",
                f"must be an IP address or a network such as 10.0.0.0/8, got {show(value)}{hint}",
            )
    return tuple(networks)
