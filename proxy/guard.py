"""Request hygiene and access control: pure checks plus the one middleware that runs them.

Order, cheapest and least trusting first: hygiene (400/501) -> Host, Origin and Sec-Fetch-Site
(403) -> the [access] client key (401) -> the client's grants (403) -> the route's policy
(405/403) -> the handler. A rejected request is answered here and never reaches the forwarder.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

import structlog
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict, MultiMapping

from . import access
from .config import Config, ServerConfig, is_loopback
from .config.access import AccessClient
from .errors import (
    BadRequest,
    CrossSiteRequest,
    ExpectationFailed,
    HostNotAllowed,
    NotProxied,
    PayloadTooLarge,
    ProxyError,
    to_response,
)
from .routing import Resolver

log = structlog.get_logger("proxy.access")

LIVEZ = "/_proxy/livez"
READYZ = "/_proxy/readyz"
METRICS = "/_proxy/metrics"
CLIENT = web.RequestKey("access_client", AccessClient)
_ACCESS_ON = web.AppKey("access_enabled", bool)
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # raw controls and space: never in a request target
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9a-f]|7f)", re.IGNORECASE)
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")
_HOST = re.compile(r"^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+))(?::[0-9]{0,5})?$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_request(method: str, target: str, headers: MultiMapping[str]) -> None:
    """Raise ``BadRequest`` (400) or ``NotProxied`` (501) for a request never to forward.

    ``target`` is the raw request target as received. Every rule keeps the token of a route
    going to that route's upstream, under its base path, and nowhere else.
    """
    if method == "CONNECT":
        raise BadRequest("CONNECT is not supported: this is a reverse proxy")
    if method in ("TRACE", "TRACK"):
        # The upstream would echo the request back, with the injected token in it.
        raise NotProxied(f"{method} is not proxied: the answer would carry the proxy's token")
    # An upgrade request is Upgrade plus "upgrade" in Connection (RFC 9110 §7.8), as aiohttp's
    # parser sees it too; a bare Upgrade header is hop-by-hop noise the forwarder drops.
    connection = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    if "Upgrade" in headers and "upgrade" in connection:
        raise NotProxied("Upgrade requests (WebSockets, h2c) are not proxied")
    if "Host" not in headers:
        raise BadRequest("a Host header is required (RFC 9112 §3.2)")
    if _CONTROL.search(target):
        raise BadRequest("control characters in the request target")
    if not target.startswith("/"):
        # Absolute form (GET http://host/...), authority form and OPTIONS *: only origin form
        # names a path on this proxy, so only it can be matched to a route.
        raise BadRequest("the request target must be a path: /path?query (RFC 9112 §3.2.1)")
    if "#" in target:
        raise BadRequest("a request target has no fragment (RFC 9112 §3.2.1)")
    path = target.split("?", 1)[0]
    if path.startswith("//"):
        raise BadRequest("the path must not start with //")
    if "\\" in path:
        raise BadRequest("backslashes are not allowed in the path")
    if _BAD_ESCAPE.search(path):
        raise BadRequest("malformed percent-encoding in the path")
    if _ENCODED_SEPARATOR.search(path):
        raise BadRequest("encoded slashes (%2F, %5C) are not allowed in the path")
    if _ENCODED_CONTROL.search(path):
        raise BadRequest("encoded control characters are not allowed in the path")
    try:
        segments = [unquote(s, errors="strict") for s in path.split("/")]
    except UnicodeDecodeError:
        raise BadRequest("percent-encoded bytes in the path are not UTF-8") from None
    # ";" because some servers drop path parameters, so "..;x" is ".." to them.
    if any(s.split(";", 1)[0] in (".", "..") for s in segments):
        raise BadRequest("'.' and '..' segments are not allowed in the path, encoded or not")


def host_name(value: str) -> str | None:
    """The lowercased name in a ``Host`` value (``name``, ``name:port``, ``[v6]:port``)."""
    m = _HOST.match(value.strip())
    if m is None:
        return None
    return (m.group(1) or m.group(2)).lower()


def allowed_hosts(server: ServerConfig) -> frozenset[str]:
    """The loopback names plus ``server.allowed_hosts``, as ``host_name`` returns them."""
    return LOOPBACK_HOSTS | {h.strip().strip("[]").lower() for h in server.allowed_hosts}


def check_browser(headers: Mapping[str, str], allowed: frozenset[str]) -> None:
    """403 unless ``Host`` is allowed and the request is not from another site's page.

    The Host check stops DNS rebinding: a page on evil.example whose name now resolves to
    127.0.0.1 still sends ``Host: evil.example``. Origin and Sec-Fetch-Site stop a page
    from driving the proxy with a plain cross-site request.
    """
    host = host_name(headers.get("Host", ""))
    if host not in allowed:
        raise HostNotAllowed(
            f"Host {headers.get('Host', '')[:100]!r} is not allowed; add its name to "
            "server.allowed_hosts if this proxy is meant to be reached by that name"
        )
    origin = headers.get("Origin")
    if origin is not None:
        try:
            origin_host = urlsplit(origin).hostname
        except ValueError:
            origin_host = None
        if origin_host not in allowed:
            raise CrossSiteRequest("requests from web pages of other sites are refused")
    if headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        raise CrossSiteRequest("requests from web pages of other sites are refused")


def exposure_problem(config: Config) -> str | None:
    """Why the proxy must not start on ``server.host``, or ``None`` when it may."""
    host = config.server.host
    if is_loopback(host) or config.access.enabled or config.server.allow_anonymous_remote:
        return None
    return (
        f"refusing to listen on {host}: it is not a loopback address, and anyone who can reach "
        "it would act as the service principal. Add [[access.clients]] (keys from "
        "`ppproxy keygen`), or set server.allow_anonymous_remote = true if the network in front "
        "of it is controlled, or listen on 127.0.0.1."
    )


def anonymous_warning(config: Config) -> str | None:
    """The warning shown at start and on /_proxy/readyz while anyone may use the proxy."""
    if not config.server.allow_anonymous_remote or config.access.enabled:
        return None
    return (
        "server.allow_anonymous_remote is on and [access] has no clients: anyone who can "
        f"reach {config.server.host}:{config.server.port} acts as the service principal"
    )


def _peer_is_loopback(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return peer is not None and is_loopback(str(peer[0]))


def is_trusted(request: web.Request) -> bool:
    """Whether the request may see details (readyz): no [access], or a valid client key."""
    return CLIENT in request or not request.config_dict.get(_ACCESS_ON, False)


def install(app: web.Application, config: Config) -> ExpectHandler:
    """Add the guard middleware to ``app``; everything it needs is prepared here, once.

    Returns the ``Expect: 100-continue`` handler for the catch-all route: it runs the same
    checks before the client is told to send its body, so a client without a key, or with a
    body over the route's limit, never uploads it (aiohttp answers Expect before middlewares).
    """
    app[_ACCESS_ON] = config.access.enabled
    guard = _Guard(config)
    app[GUARD] = guard
    app.middlewares.append(guard.middleware)
    return guard.expect


def reconfigure(app: web.Application, config: Config) -> None:
    """A reloaded configuration: new clients, keys, routes and policies from now on."""
    app[GUARD].reconfigure(config)


ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class _Guard:
    def __init__(self, config: Config) -> None:
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Prepare everything from ``config`` (at start, and on reload)."""
        self._access = config.access
        self._allowed = allowed_hosts(config.server)
        # The route a request goes to, including a route's own port: its grants and policy
        # are the ones that apply there.
        self._resolver = Resolver(config.routes)
        self._policies = access.policies(config.routes)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            client, request = self._admit(request)
        except ProxyError as e:
            return _reject(request, e)
        with _bound(client):
            try:
                self._authorize(request, client)
            except ProxyError as e:
                return _reject(request, e)
            return await handler(request)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        try:
            client, checked = self._admit(request)
            self._authorize(checked, client)
            target = self._resolver.resolve(request).target
            route = target.route if target is not None else None
            limit = route.policy.max_body_bytes if route is not None else None
            length = request.content_length
            if limit is not None and length is not None and length > limit:
                raise PayloadTooLarge(f"the body is {length} bytes; this route takes {limit}")
        except ProxyError as e:
            return _reject(request, e)
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _reject(request, ExpectationFailed("only Expect: 100-continue is understood"))
        if request.version >= HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim response is not part of the body
        return None

    def _admit(self, request: web.Request) -> tuple[AccessClient | None, web.Request]:
        """Hygiene, browser checks and the client key; the request without the key."""
        check_request(request.method, request.raw_path, request.headers)
        path = request.raw_path.split("?", 1)[0]
        if path == LIVEZ:
            return None, request  # liveness says nothing and costs nothing: always open
        if path != METRICS or _peer_is_loopback(request):
            # A scraper reaches a pod by its IP, which no allowlist can name; the Host check
            # exists for browsers on this machine (DNS rebinding), whose peer is loopback.
            check_browser(request.headers, self._allowed)
        if not self._access.enabled:
            return None, request
        presented = access.presented_key(request.headers)
        if path == READYZ and presented is None:
            return None, request  # probes get the status without a key; details need one
        client = access.authenticate(self._access, presented)
        headers = CIMultiDict(request.headers)
        headers.popall(access.KEY_HEADER, None)
        if presented is not None and presented.header != access.KEY_HEADER:
            headers.popall(presented.header, None)
        request = request.clone(headers=headers)
        request[CLIENT] = client
        return client, request

    def _authorize(self, request: web.Request, client: AccessClient | None) -> None:
        path = request.raw_path.split("?", 1)[0]
        if path == "/_proxy" or path.startswith("/_proxy/"):
            return
        resolved = self._resolver.resolve(request)
        if resolved.target is None:
            return  # the forwarder answers 404 no_route
        route, prefixed = resolved.target.route, resolved.listener is None
        if client is not None:
            access.authorize(client, route, request.method)
        self._policies[route.name].check(request.method, request.raw_path, prefixed=prefixed)


@contextlib.contextmanager
def _bound(client: AccessClient | None) -> Iterator[None]:
    """The client's name on every log event of its request (the audit trail), then unbound."""
    if client is None:
        yield
        return
    with structlog.contextvars.bound_contextvars(access_client=client.name):
        yield


def _reject(request: web.Request, error: ProxyError) -> web.Response:
    raw_id = request.headers.get("x-ms-client-request-id", "")
    request_id = raw_id if _REQUEST_ID.match(raw_id) else str(uuid.uuid4())
    log.info(
        "request.rejected",
        request_id=request_id,
        method=request.method,
        path=request.raw_path.split("?", 1)[0][:200],  # never the query
        status=error.status,
        error=error.code,
    )
    response = to_response(error, request_id=request_id)
    # A rejected request's body is not read, and after CONNECT or Upgrade the connection is no
    # longer HTTP: close it rather than guess where the next request starts.
    response.force_close()
    return response


GUARD = web.AppKey("guard", _Guard)
