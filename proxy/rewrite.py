"""URLs handed back by the API, rewritten to the proxy so that a tool that follows them
(long-running operations, paging) keeps going through the proxy.

The proxy's own address is the one the client used (``public_address.PublicAddress`` finds
it): its scheme, host and the listener it reached, never a guess. Relative links
(``"Accounts?$skiptoken=3"``) already resolve against the client's URL and are left alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from yarl import URL

from .config import RouteConfig

# Response headers that carry URLs to poll or follow (BAP and Power Platform long-running
# operations answer 202 with Location / Operation-Location / Azure-AsyncOperation; Dataverse
# names a created record in OData-EntityId, where SDKs read its id from).
LINK_HEADERS = (
    "Location",
    "Content-Location",
    "Operation-Location",
    "Azure-AsyncOperation",
    "OData-EntityId",
)
REWRITE_HEADER = "X-Ppproxy-Links"

# A JSON string literal holding an absolute http(s) URL (slashes possibly escaped as \/).
_JSON_URL = re.compile(rb'"(https?:(?:\\?/){2}(?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class _Upstream:
    route: RouteConfig
    origin: str  # scheme://host[:port], normalised by yarl
    base_path: str  # "" or "/api/data/v9.2"


@dataclass(frozen=True, slots=True)
class ClientView:
    """How the client reached the proxy: what to put in rewritten URLs."""

    host: str  # as the client wrote it, e.g. "localhost:8080" (its Host, or from in front)
    listener: RouteConfig | None  # the route whose own port was reached; None: main listener
    main_port: int
    scheme: str = "http"  # "https" on a TLS listener, or as the proxy in front says
    # The address is one in front of the proxy (public_url, Forwarded): the proxy's own ports
    # mean nothing there, so every route is reached through its prefix.
    behind_proxy: bool = False


class LinkRewriter:
    """Prepared once from the routes; maps upstream URLs to the proxy's."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        upstreams = []
        for r in routes:
            url = URL(r.upstream)
            upstreams.append(_Upstream(r, str(url.origin()), url.raw_path.rstrip("/")))
        # The most specific base path first: two routes may share an origin.
        self._upstreams = sorted(upstreams, key=lambda u: len(u.base_path), reverse=True)
        self.origins = frozenset(u.origin for u in upstreams)

    def public_base(self, route: RouteConfig, client: ClientView) -> str:
        """The proxy URL that stands for ``route``'s upstream base, as this client sees it."""
        origin = f"{client.scheme}://{client.host}"
        if client.listener is not None and client.listener.name == route.name:
            return origin
        prefix = "" if route.prefix == "/" else route.prefix
        if client.behind_proxy or (client.listener is None and route.port is None):
            return origin + prefix
        hostname = URL(f"http://{client.host}").raw_host or "localhost"
        if ":" in hostname:
            hostname = f"[{hostname}]"
        if route.port is not None:
            return f"{client.scheme}://{hostname}:{route.port}"
        return f"{client.scheme}://{hostname}:{client.main_port}{prefix}"

    def rewrite(self, value: str, client: ClientView, current: RouteConfig) -> str:
        """``value`` pointed at the proxy if it is a URL of a configured upstream."""
        if value.startswith("/") and not value.startswith("//"):
            # A path on the current upstream: relative to the client's URL, which is the proxy's.
            return self._map_path(value, current, client) or value
        try:
            url = URL(value)
        except ValueError:
            return value
        if not url.absolute or url.scheme not in ("http", "https"):
            return value
        origin = str(url.origin())
        if origin not in self.origins:
            return value
        rest = value[len(origin) :] if value.lower().startswith(origin.lower()) else None
        if rest is None:  # the origin was written differently (default port, case): rebuild
            rest = url.raw_path_qs + (f"#{url.raw_fragment}" if url.raw_fragment else "")
        for u in self._upstreams:
            if u.origin == origin and _under(rest, u.base_path):
                return self.public_base(u.route, client) + rest[len(u.base_path) :]
        return value

    def _map_path(self, path: str, route: RouteConfig, client: ClientView) -> str | None:
        base = URL(route.upstream).raw_path.rstrip("/")
        if not _under(path, base):
            return None
        rest = path[len(base) :]
        if client.listener is None:  # keep it relative: prefix + rest on the same listener
            return ("" if route.prefix == "/" else route.prefix) + (rest or "/")
        return rest or "/"

    def rewrite_json(self, body: bytes, client: ClientView, current: RouteConfig) -> bytes:
        """``body`` with every JSON string that is an upstream URL rewritten; all other bytes
        (whitespace, number formats, escapes) stay exactly as they were."""

        def one(m: re.Match[bytes]) -> bytes:
            literal = m.group(0)
            value = json.loads(literal)
            new = self.rewrite(value, client, current)
            if new == value:
                return literal
            return json.dumps(new, ensure_ascii=False).encode("utf-8")

        return _JSON_URL.sub(one, body)


def _under(path: str, base: str) -> bool:
    """Whether ``path`` (with query) lies under ``base`` on a segment boundary."""
    if not base:
        return True
    return path == base or path.startswith((base + "/", base + "?", base + "#"))


def is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def is_multipart(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "multipart/mixed"


def add_default_query(url: URL, defaults: Mapping[str, str] | None) -> URL:
    """``url`` with each default parameter appended unless the client sent it already."""
    if not defaults:
        return url
    raw = url.raw_query_string
    sent = {unquote_plus(part.split("=", 1)[0]) for part in raw.split("&") if part}
    extra = [
        f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in defaults.items() if k not in sent
    ]
    if not extra:
        return url
    query = "&".join([raw, *extra] if raw else extra)
    return URL(str(url).split("?", 1)[0] + "?" + query, encoded=True)
