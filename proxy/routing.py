"""Route matching: longest prefix on path-segment boundaries, on the raw (undecoded) path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
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

    def route_for(self, path: str) -> RouteConfig | None:
        """The route that takes ``path`` (raw, without the query), or ``None``."""
        for route in self._routes:
            prefix = route.prefix
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return route
        return None

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


class Resolver:
    """Which route takes a request: its own listener (``routes[].port``: every path there goes
    to that route, no prefix) or the main listener's prefix table. The guard resolves once
    and leaves the answer on the request; the forwarder reuses it."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._table = RouteTable(routes)
        self._port_routes = {r.port: r for r in routes if r.port is not None}

    def route_for(self, path: str) -> RouteConfig | None:
        """The route the main listener gives ``path`` (raw, without the query)."""
        return self._table.route_for(path)

    def resolve(self, request: web.Request) -> Resolved:
        if RESOLVED in request:
            return request[RESOLVED]
        listener = self._listener(request)
        if listener is None:
            resolved = Resolved(self._table.match(request.raw_path), None)
        elif request.raw_path.startswith("/"):
            url = URL(listener.upstream + request.raw_path, encoded=True)
            resolved = Resolved(Target(listener, url), listener)
        else:
            resolved = Resolved(None, listener)
        request[RESOLVED] = resolved
        return resolved

    def _listener(self, request: web.Request) -> RouteConfig | None:
        if not self._port_routes or request.transport is None:
            return None
        sockname = request.transport.get_extra_info("sockname")
        return self._port_routes.get(sockname[1]) if sockname else None


@dataclass(frozen=True, slots=True)
class Resolved:
    target: Target | None  # None: no route (404 no_route)
    listener: RouteConfig | None  # the route whose own port took the request


RESOLVED = web.RequestKey("resolved", Resolved)
