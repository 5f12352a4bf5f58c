"""Where an inner request of a ``$batch`` goes: its request-line URL resolved to the path the
route's policy matches, and, on a ``rewrite_links`` route, the URL to send upstream instead.

An inner URL may be written four ways; each is read as the upstream will read what the proxy
sends, so that what is checked is what runs:

- absolute on the proxy's address (the ``Host`` the client used; SDKs build inner URLs from
  their base URL): the path is the proxy's, mapped to the upstream as a standalone request
  would be. With ``rewrite_links`` it is rewritten to the upstream; without, it is sent as is
  (and the upstream, which accepts only its own service root, refuses it);
- absolute on the route's upstream: sent as is;
- path-absolute (``/api/data/v9.2/accounts``): with ``rewrite_links``, a path this route takes
  on the proxy is the proxy's (and rewritten); otherwise it is the upstream's, sent as is;
- relative (``accounts``): resolved against the batch URL (RFC 3986 §5.2), which OData
  servers read against their service root instead (Microsoft.OData resolves them against its
  base URI). The two agree only when the batch URL is ``{service root}/$batch`` exactly: the
  last segment ``$batch`` with no trailing slash or ``;parameters``, in the directory that is
  the route's upstream base path (or, on a route whose upstream is an origin, a Dataverse
  service root ``/api/data/v{version}/``). Under any other batch URL a relative inner URL is
  refused (``400 bad_batch``) rather than checked as one path and run as another.

Any other host is refused, and so is an upstream path outside the route's base path or one
that a standalone request would reach through another route.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from yarl import URL

from ..config import RouteConfig
from ..errors import BadBatch, BadRequest, BatchForbidden
from ..hygiene import check_path

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # raw spaces are fine: SDKs write them in queries
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A Dataverse Web API service root, as the directory of a batch URL on an origin upstream.
_SERVICE_ROOT = re.compile(r"/api/data/v[0-9]+(?:\.[0-9]+)*/", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A route's upstream origin and base path, as inner URLs are compared with them."""

    scheme: str
    host: str  # lower-case, IPv6 without brackets
    port: int
    base: str  # "" or "/api/data/v9.2"

    @staticmethod
    @functools.lru_cache(maxsize=64)  # one per configured upstream: parsed once
    def of(upstream: str) -> Upstream:
        url = URL(upstream)
        host = (url.host or "").lower()
        return Upstream(url.scheme, host, url.port or 0, url.raw_path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Place:
    """Where one batch was sent, on the proxy and upstream: what its inner URLs resolve in."""

    route: RouteConfig
    upstream: Upstream
    listener: RouteConfig | None  # the route whose own port took the batch
    route_for: Callable[[str], RouteConfig | None]  # the main listener's route for a path
    client_host: str  # the Host the client used, lower-case, IPv6 without brackets
    client_port: int | None  # None: the default port of the URL's scheme
    batch_dir: str  # the upstream directory of the batch URL, ending with "/"
    relative: bool  # relative inner URLs read the same against batch_dir and the service root
    rewrite: bool  # rewrite_links: inner URLs on the proxy's address go out on the upstream

    @classmethod
    def of(
        cls,
        route: RouteConfig,
        listener: RouteConfig | None,
        route_for: Callable[[str], RouteConfig | None],
        host_header: str,
        upstream_batch_path: str,
    ) -> Place:
        host, port = host_port(host_header)
        upstream = Upstream.of(route.upstream)
        folder, _, last = upstream_batch_path.rpartition("/")
        folder += "/"
        return cls(
            route,
            upstream,
            listener,
            route_for,
            host,
            port,
            folder,
            _at_service_root(folder, last, upstream.base),
            route.edits.rewrite_links,
        )


@dataclass(frozen=True, slots=True)
class Resolved:
    path: str  # what the route's allow_paths/deny_paths match: the path after the prefix
    sent: str | None  # the URL written in its place upstream; None: the target goes as is


def resolve(target: str, place: Place) -> Resolved:
    """The route path of an inner request-line ``target`` (not a ``$n`` reference).

    Raises ``BadBatch`` for a URL that could be read two ways, ``Forbidden`` for one that
    leaves the route."""
    if _CONTROL.search(target):
        raise BadBatch("control characters in the URL")
    if "#" in target:
        raise BadBatch("a request URL has no fragment")
    scheme = _SCHEME.match(target)
    if scheme is not None:
        rest = target[scheme.end() :]
        if not rest.startswith("//") or scheme.group(1).lower() not in _DEFAULT_PORTS:
            raise _outside("only http(s) URLs on the proxy or the route's upstream are allowed")
        return _absolute(scheme.group(1).lower(), rest[2:], place)
    if target.startswith("//"):
        raise _outside("a URL starting with // names another host")
    if target.startswith("/"):
        path = target.partition("?")[0]
        if place.rewrite and _takes(place, path):
            return _on_proxy(target, place)
        return _on_upstream(target, place)
    if target.startswith("?"):
        raise BadBatch("a URL of only a query names the batch itself")
    if not place.relative:
        raise BadBatch(
            "a relative URL under this batch URL could be read two ways (against the batch "
            "URL or the service root): post the batch to {service root}/$batch, or write the "
            "URL path-absolute"
        )
    return _on_upstream(place.batch_dir + target, place)


def _at_service_root(folder: str, last: str, base: str) -> bool:
    """Whether a batch posted to upstream ``folder`` + ``last`` (raw) is ``{root}/$batch``."""
    if unquote(last).lower() != "$batch":  # "$batch/" has last == "", "$batch;x" keeps ";x"
        return False
    if base:
        return folder == base + "/"
    return _SERVICE_ROOT.fullmatch(unquote(folder)) is not None


def host_port(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` as (lower-case host without IPv6 brackets, port or None)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0 or (end + 1 < len(authority) and authority[end + 1] != ":"):
            raise BadBatch("a malformed host in a URL")
        host, rest = authority[1:end], authority[end + 1 :]
        port = rest[1:]
    else:
        host, _, port = authority.partition(":")
    if not host or (port and not (port.isascii() and port.isdigit() and len(port) <= 5)):
        raise BadBatch("a malformed host or port in a URL")
    return host.lower(), int(port) if port else None


def _absolute(scheme: str, rest: str, place: Place) -> Resolved:
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path_qs = rest[:cut], rest[cut:]
    if "@" in authority:
        raise BadBatch("user information in a URL")
    host, port = host_port(authority)
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    if not path_qs.startswith("/"):
        path_qs = "/" + path_qs
    upstream = place.upstream
    on_upstream = (scheme, host, port) == (upstream.scheme, upstream.host, upstream.port)
    # The proxy's address by host and port: the client may reach it by http or https.
    default = _DEFAULT_PORTS[scheme]
    on_proxy = host == place.client_host and port == (place.client_port or default)
    if on_proxy and (place.rewrite or not on_upstream):
        return _on_proxy(path_qs, place)
    if on_upstream:
        return _on_upstream(path_qs, place)
    raise _outside("the URL is on another host than the proxy or the route's upstream")


def _on_proxy(path_qs: str, place: Place) -> Resolved:
    """A path on the proxy: mapped to the upstream as the route maps a standalone request."""
    path = path_qs.partition("?")[0]
    check_inner_path(path)
    route = place.route
    if not _takes(place, path):
        raise _outside("the URL names another route of this proxy, or none")
    prefix = route.prefix
    if place.listener is not None or prefix == "/":
        rest, route_path = path_qs, path
    else:
        route_path = path[len(prefix) :] or "/"
        rest = path_qs[len(prefix) :] if route.strip_prefix else path_qs
        if rest.startswith("?"):
            rest = "/" + rest
    return Resolved(route_path, route.upstream + rest if place.rewrite else None)


def _on_upstream(path_qs: str, place: Place) -> Resolved:
    """A path on the upstream: the route path a standalone request reaching it would have."""
    path = path_qs.partition("?")[0]
    check_inner_path(path)
    base, route = place.upstream.base, place.route
    if base and not (path == base or path.startswith(base + "/")):
        raise _outside(f"the URL is outside the route's upstream base path {base}")
    below = path[len(base) :] or "/"
    prefix = "" if route.prefix == "/" else route.prefix
    if place.listener is not None:
        return Resolved(below, None)
    if prefix and not route.strip_prefix:
        if not (below == prefix or below.startswith(prefix + "/")):
            raise _outside(f"the URL is outside what the route forwards ({prefix} upstream)")
        proxy_path, route_path = below, below[len(prefix) :] or "/"
    else:
        proxy_path, route_path = prefix + below, below
    if not _takes(place, proxy_path):
        # Sent alone, this path would go to another route, with its own policy and identity.
        raise _outside("a request for this path sent alone would go to another route")
    return Resolved(route_path, None)


def _takes(place: Place, path: str) -> bool:
    """Whether a standalone request for proxy ``path`` would reach the batch's route."""
    if place.listener is not None:
        return True
    found = place.route_for(path)
    return found is not None and found.name == place.route.name


def check_inner_path(path: str) -> None:
    """The request hygiene of standalone paths (``proxy.hygiene``), as ``BadBatch``."""
    try:
        check_path(path)
    except BadRequest as e:
        raise BadBatch(e.message) from None


def _outside(message: str) -> BatchForbidden:
    return BatchForbidden(message, where={"reason": "outside_route"})
