"""What ``serve`` tells the person who started it: the routes it serves (local URL, upstream,
scope, identity) and the tap's address once it listens, and, loudly, a token it could not get
at start with the portal step that fixes it. A table on a console, one structured event each
(``server.ready``, ``server.token_unavailable``) when logs are JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from . import __version__, aadsts, paths
from .columns import columns
from .config import Config
from .observe import console


def announce(event: str, text: str, **fields: Any) -> None:
    """``text`` as it is on a console; one structured ``event`` with ``fields`` when logs are
    JSON (a machine reads them)."""
    stream = console()
    if stream is not None:
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()
        return
    level = fields.pop("level", "info")
    getattr(structlog.get_logger("proxy"), level)(event, **fields)


def _origin(address: str, port: int) -> str:
    """``address`` (``http://host:port``) with another port."""
    return f"{address.rsplit(':', 1)[0]}:{port}"


def ready(config: Config, address: str) -> None:
    """The routes and the tap, once ``address`` (the main listener) accepts connections."""
    routes = [
        {
            "name": r.name,
            "url": address + ("" if r.prefix == "/" else r.prefix),
            **({"own_port_url": _origin(address, r.port)} if r.port else {}),
            "upstream": r.upstream,
            "scope": r.scope,
            "identity": r.identity,
        }
        for r in config.routes
    ]
    tap = f"{address}{paths.TAP}" if config.tap.enabled else None
    rows = [("ROUTE", "LOCAL URL", "UPSTREAM", "SCOPE", "IDENTITY")]
    for route in routes:
        url = route["url"] + (f" and {route['own_port_url']}" if "own_port_url" in route else "")
        rows.append((route["name"], url, route["upstream"], route["scope"], route["identity"]))
    lines = [f"ppproxy {__version__} is ready on {address}", *columns(rows, indent="  ")]
    if tap is not None:
        lines.append(f"debugging tap: {tap}")
    lines.append("Stop it with Ctrl+C.")
    announce("server.ready", "\n".join(lines), address=address, routes=routes, tap=tap)


def token_unavailable(
    config: Config,
    identity: str,
    scope: str,
    error: str,
    description: str,
    codes: Sequence[int] = (),
) -> None:
    """No token for (identity, scope) at start: every request of these routes gets 503."""
    routes = [r.name for r in config.routes if r.identity == identity and r.scope == scope]
    hint = aadsts.hint(codes, description)
    summary = description.split(" Trace ID:", 1)[0]
    lines = [
        "",
        f"!! ppproxy has no token for identity {identity!r} (scope {scope}):",
        f"!!   {error}: {summary}",
        *([f"!!   fix: {hint}"] if hint else []),
        f"!! Requests to {', '.join(routes)} get 503 token_unavailable until this is fixed;",
        "!! the proxy keeps retrying. `ppproxy check` shows every route's token.",
        "",
    ]
    announce(
        "server.token_unavailable",
        "\n".join(lines),
        level="error",
        identity=identity,
        scope=scope,
        routes=routes,
        error=error,
        description=description,
        **({"hint": hint} if hint else {}),
    )
