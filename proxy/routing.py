"""Route matching: longest prefix on path-segment boundaries, on the raw (undecoded) path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from yarl import URL

from .config import RouteConfig


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: its route and the upstream URL, byte for byte."""

    route: RouteConfig
    url: URL


class RouteTable:
    """Prepared once from the configuration; ``match`` is the per-request path."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        # Longest prefix first, so the first hit is the most specific.
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self._bases = {r.name: r.upstream for r in routes}

    def match(self, raw_path: str) -> Target | None:
        """The target for ``raw_path`` (path and query as received), or ``None``."""
        if not raw_path.startswith("/"):
            return None
        path = raw_path.split("?", 1)[0]
        for route in self._routes:
            prefix = route.prefix
            if prefix == "/":
                rest = raw_path
            elif path == prefix or path.startswith(prefix + "/"):
                rest = raw_path[len(prefix) :] if route.strip_prefix else raw_path
            else:
                continue
            if route.strip_prefix and route.prefix != "/" and rest.startswith("?"):
                rest = "/" + rest
            # encoded=True keeps the path and query exactly as the client sent them.
            return Target(route, URL(self._bases[route.name] + rest, encoded=True))
        return None
