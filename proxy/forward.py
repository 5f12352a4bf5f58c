"""The forwarder: the catch-all handler, as a pipeline of one stage per idea.

::

    resolve (routing) -> client cap (client_limits) -> cool-down (throttle) -> body (body, or
    the $batch the guard read and checked) -> route slot (limits) -> token (acting) + pace +
    send, resend after 429 (send, throttle) -> relay (relay)

Each stage fills its own fields of the request's :class:`~proxy.exchange.Exchange`; the
observers read it when the response starts and when the exchange is over. Every error a stage
raises is a :class:`~proxy.errors.ProxyError`, answered here through ``errors.to_response``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import access, acting, paths
from .batch import CHECKED
from .body import RequestBody
from .body import held as held_body
from .body import prepare as prepare_body
from .config import RouteConfig
from .errors import NoRoute, ProxyError, to_response
from .exchange import KEY, Exchange
from .relay import relay
from .rewrite import add_default_query
from .routing import Target
from .runtime import Runtime
from .send import send
from .signin import SIGNED_IN
from .state import State


class Forwarder:
    """Reads the runtime's state; holds nothing per request."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        runtime = self._runtime
        exchange = request.get(KEY)
        unchecked = exchange is None  # the guard made one for every path outside /_proxy
        if exchange is None:
            exchange = request[KEY] = Exchange.of(request)
            runtime.observers.received(exchange)
        try:
            if unchecked and paths.is_reserved(request.path):
                raise NoRoute(f"no proxy endpoint {request.path}")
            return await self._forward(request, exchange, exchange.state or runtime.state)
        except ProxyError as e:
            return self._answer(request, exchange, e)
        except asyncio.CancelledError:
            exchange.status = 499  # the client went away; its upstream request went with it
            raise
        finally:
            exchange.close(request.content.total_bytes)
            runtime.observers.finished(exchange)

    async def _forward(
        self, request: web.Request, exchange: Exchange, state: State
    ) -> web.StreamResponse:
        resolved = state.resolver.resolve(request)  # the guard resolved it already
        target = resolved.target
        if target is None:
            raise NoRoute("no route matches this path", prefixes=_prefixes(request, state))
        route = target.route
        exchange.route = route.name
        if route.edits.default_query:
            target = Target(route, add_default_query(target.url, route.edits.default_query))
        runtime = self._runtime
        client = request.get(access.CLIENT)
        runtime.in_flight[route.name] += 1
        try:
            if client is None or client.max_concurrency is None:
                return await self._upstream(request, exchange, state, target, resolved.listener)
            with runtime.clients.hold(client):  # 429 at once beyond the client's own cap
                return await self._upstream(request, exchange, state, target, resolved.listener)
        finally:
            runtime.in_flight[route.name] -= 1

    async def _upstream(
        self,
        request: web.Request,
        exchange: Exchange,
        state: State,
        target: Target,
        listener: RouteConfig | None,
    ) -> web.StreamResponse:
        """The body, then the route's slot, then the upstream call and the relay.

        The slot is taken only once a replayable body has been read: a client trickling its
        body holds its own slots, never the route's (a streamed body is read while it is sent,
        so it holds the slot; ``server.body_timeout`` bounds every pause)."""
        route = target.route
        gate = state.gates[route.name]
        if not gate.idle:
            # A cool-down too long to wait is answered before the body is read (it never will be).
            await gate.admit(exchange)
        if exchange.batch is not None:  # read and checked whole by the guard
            body = held_body(request[CHECKED].body, exchange.request_capture)
        else:
            body = await prepare_body(
                request,
                replay_limit=state.config.outbound.replay_body_bytes,
                max_bytes=route.policy.max_body_bytes,
                pause=state.config.server.body_timeout,
                capture=exchange.request_capture,
            )
        limiter = state.limiters[route.name]
        # The slot and the route's pace share one queue_timeout.
        waited = 0.0 if limiter.try_acquire() else await limiter.acquire()
        budget = route.limits.queue_timeout - waited
        try:
            return await self._send(request, exchange, state, target, listener, body, budget)
        finally:
            limiter.release()

    async def _send(
        self,
        request: web.Request,
        exchange: Exchange,
        state: State,
        target: Target,
        listener: RouteConfig | None,
        body: RequestBody,
        budget: float,
    ) -> web.StreamResponse:
        """Token and upstream call, then the relay of the answer."""
        route = target.route
        runtime = self._runtime
        assert runtime.session is not None  # opened before the first request is accepted
        rules = state.headers[route.name]
        upstream = await send(
            runtime.session,
            request,
            exchange,
            target,
            body,
            acting.token_source(route, state, request.get(SIGNED_IN)),
            state.upstream_proxies[route.name],
            rules,
            state.gates[route.name],
            budget=budget,
        )
        async with upstream:
            exchange.respond(upstream.status, upstream.reason, upstream.headers.items())
            runtime.observers.response_started(exchange)
            client = state.addresses.view(request, listener)
            return await relay(request, exchange, upstream, route, client, state.links, rules)

    def _answer(self, request: web.Request, exchange: Exchange, error: ProxyError) -> web.Response:
        """The proxy's own answer: a JSON error, recorded on the exchange like any response."""
        exchange.error = error.code
        response = to_response(error, request_id=exchange.request_id)
        if not request.content.is_eof():
            # The body was not read to its end: close rather than read (and wait for) the
            # rest of it, which aiohttp would otherwise do for up to ten seconds.
            response.force_close()
        exchange.respond(response.status, response.reason, response.headers.items())
        if exchange.response_capture is not None and isinstance(response.body, bytes):
            exchange.response_capture.add(response.body)
        self._runtime.observers.response_started(exchange)
        return response


def _prefixes(request: web.Request, state: State) -> list[str]:
    """The prefixes of the main listener's routes this client may use (a 404's help)."""
    client = request.get(access.CLIENT)
    allowed = None if client is None else client.routes
    return sorted(r.prefix for r in state.config.routes if allowed is None or r.name in allowed)
