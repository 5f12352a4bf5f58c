"""The guard: the one middleware that decides whether a request may go any further.

Order, cheapest and least trusting first: hygiene (400/501) -> Host, Origin and Sec-Fetch-Site
(403) -> the [access] client key, or a member's Entra ID token (401) and the entry it matches
(403) -> method overrides (400) -> the client's grants and whether the route needs a member
(403) -> the route's policy (405/403) -> the client's rate_limit (429, ``rate_limit``) -> for
a ``$batch``, every inner request against the same grants and policy (``proxy.batch``:
400/403/413) -> the handler. A refused request is answered here, recorded as a refused
:class:`~proxy.exchange.Exchange`, and never reaches the forwarder. Every rule is a pure
function in its own module (``hygiene``, ``browsers``, ``access``, ``overrides``, ``policy``,
``batch.check``; the rate limit keeps one number per client in ``rate_limit``); this module
only runs them in order against the current :class:`~proxy.state.State`. A batch is the one
request whose body the guard reads: its check needs it, and checking it here keeps every
refusal in one place, before a token is fetched or a route's concurrency slot taken.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from . import access, acting, batch, overrides, paths
from .browsers import check_browser
from .config import RouteConfig
from .config.access import AccessClient
from .errors import ExpectationFailed, NotGranted, PayloadTooLarge, ProxyError, to_response
from .exchange import KEY, Exchange
from .hygiene import check_request, check_stripped_path
from .peers import peer_is_loopback
from .runtime import Runtime
from .signin import SIGNED_IN, SignedIn, looks_like_jwt
from .state import State

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    """Reads the runtime's current state for every request; holds nothing of its own."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        state = self._runtime.state
        try:
            client, request = await self._admit(request, state)
        except ProxyError as e:
            return self._refuse(request, e, None)
        if client is None:
            return await self._pass(request, handler, state, None)
        signed_in = request.get(SIGNED_IN)
        # The client's name (and the member's) on every log event of its request: the audit trail.
        with structlog.contextvars.bound_contextvars(
            access_client=client.name,
            **({"caller": signed_in.caller.name} if signed_in is not None else {}),
        ):
            return await self._pass(request, handler, state, client)

    async def _pass(
        self,
        request: web.Request,
        handler: Handler,
        state: State,
        client: AccessClient | None,
    ) -> web.StreamResponse:
        """The grants and policy, then the handler with the request's exchange."""
        checked = None
        if not paths.is_reserved(request.path):  # the proxy's own endpoints: not exchanges
            try:
                method_override, route = _authorize(request, client, state)
                if route is not None and client is not None and client.rate_limit is not None:
                    self._runtime.throttling.clients.take(client, route.name)
                if batch.is_batch(request.method, request.path):
                    checked = await batch.admit(request, state, client, self._runtime.held_batches)
            except ProxyError as e:
                return self._refuse(request, e, client)
            exchange = Exchange.of(request)
            exchange.client = client.name if client is not None else None
            signed_in = request.get(SIGNED_IN)
            if signed_in is not None:
                exchange.caller = signed_in.caller.name
            exchange.method_override = method_override
            exchange.state = state  # forwarded under the version it was checked against
            if checked is not None:
                request[batch.CHECKED] = checked
                exchange.batch = checked.summary
            request[KEY] = exchange
            self._runtime.observers.received(exchange)
        try:
            return await handler(request)
        finally:
            if checked is not None:  # the batch body is no longer held
                checked.release()

    async def _admit(
        self, request: web.Request, state: State
    ) -> tuple[AccessClient | None, web.Request]:
        """Hygiene, browser checks and the client key or the member's token; the request
        without either."""
        presented = _checked(request, state)
        if presented is None:
            return None, request
        settings = state.config.access
        signed_in = None
        if presented.bearer and state.signin is not None and looks_like_jwt(presented.key):
            session = self._runtime.session
            assert session is not None  # opened before the first request is accepted
            caller = await state.signin.authenticate(presented.key, session)
            client = access.match_member(settings, caller)
            signed_in = SignedIn(caller, presented.key)
        else:
            client = access.authenticate(settings, presented)
        headers = CIMultiDict(request.headers)
        credential = (presented.header, headers.get(presented.header, ""))
        headers.popall(access.KEY_HEADER, None)
        if presented.header != access.KEY_HEADER:
            headers.popall(presented.header, None)
        request = request.clone(headers=headers)
        request[access.CLIENT] = client
        request[access.CREDENTIAL] = credential
        if signed_in is not None:
            request[SIGNED_IN] = signed_in
        return client, request

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: the same checks before the client is told to send its body,
        so a client without a key, or with a body over the route's limit, never uploads it
        (aiohttp answers Expect before middlewares run)."""
        state = self._runtime.state
        client = None
        try:
            client, checked = await self._admit(request, state)
            if not paths.is_reserved(request.path):
                _, route = _authorize(checked, client, state)
                if route is not None and client is not None and client.rate_limit is not None:
                    self._runtime.throttling.clients.check(client, route.name)
            target = state.resolver.resolve(request).target
            limit = target.route.policy.max_body_bytes if target is not None else None
            if target is not None and batch.is_batch(request.method, request.path):
                limit = batch.limit(limit)
            length = request.content_length
            if limit is not None and length is not None and length > limit:
                raise PayloadTooLarge(f"the body is {length} bytes; this route takes {limit}")
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise ExpectationFailed("only Expect: 100-continue is understood")
        except ProxyError as e:
            return self._refuse(request, e, client)
        if request.version >= HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim response is not part of the body
        return None

    def _refuse(
        self, request: web.Request, error: ProxyError, client: AccessClient | None
    ) -> web.Response:
        exchange = Exchange.of(request)
        exchange.refused = True
        exchange.client = client.name if client is not None else None
        signed_in = request.get(SIGNED_IN)
        if signed_in is not None:
            exchange.caller = signed_in.caller.name
        elif isinstance(error, NotGranted):
            exchange.caller = error.caller
        exchange.error = error.code
        observers = self._runtime.observers
        observers.received(exchange)
        response = to_response(error, request_id=exchange.request_id)
        # A refused request's body is not read, and after CONNECT or Upgrade the connection is
        # no longer HTTP: close it rather than guess where the next request starts.
        response.force_close()
        exchange.respond(response.status, response.reason, response.headers.items())
        observers.response_started(exchange)
        exchange.close(request.content.total_bytes)
        observers.finished(exchange)
        return response


def _checked(request: web.Request, state: State) -> access.Presented | None:
    """Hygiene and browser checks; the credential the request must be admitted with, or None
    when it needs none (no [access], liveness, readiness without a credential)."""
    check_request(request.method, request.raw_path, request.headers)
    path = request.raw_path.split("?", 1)[0]
    if path == paths.LIVEZ:
        return None  # liveness says nothing and costs nothing: always open
    if path != paths.METRICS or peer_is_loopback(request):
        # A scraper reaches a pod by its IP, which no allowlist can name; the Host check
        # exists for browsers on this machine (DNS rebinding), whose peer is loopback.
        forwarded = state.addresses.forwarding(request)
        check_browser(request.headers, state.allowed_hosts, forwarded.hosts, state.allowed_origins)
    settings = state.config.access
    if not settings.enabled:
        return None
    presented = access.presented_key(request.headers)
    if presented is None:
        if path == paths.READYZ:
            return None  # probes get the status without a key; details need one
        access.authenticate(settings, None)  # raises: no credential
    return presented


def _authorize(
    request: web.Request, client: AccessClient | None, state: State
) -> tuple[str | None, RouteConfig | None]:
    """Method overrides, the client's grants and the route's policy, for a request that names
    a route; the overriding method, if the route takes it, and the route."""
    resolved = state.resolver.resolve(request)
    if resolved.target is None:
        return None, None  # the forwarder answers 404 no_route
    route, prefixed = resolved.target.route, resolved.listener is None
    if prefixed and route.strip_prefix:
        check_stripped_path(request.raw_path, route.prefix)
    override = overrides.override(request.headers, route.policy.allow_method_override)
    # An upstream may act on either method, so both must be allowed.
    methods = (request.method,) if override is None else (request.method, override)
    if client is not None:
        for method in methods:
            access.authorize(client, route, method)
    acting.check(route, request.get(SIGNED_IN))
    policy = state.policies[route.name]
    for method in methods:
        policy.check(method, request.raw_path, prefixed=prefixed)
    return override, route
