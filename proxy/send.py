"""Sending a request upstream: the request's token, the call, one retry after a 401, and the
throttling around every call (``proxy.throttle``: cool-down, pace, wait and resend).

The token comes from the :class:`~proxy.acting.TokenSource` the forwarder picked for the route
and the caller: the route's identity's own token, the same naming the member
(``CallerObjectId``), or a token for the member by on-behalf-of.

The only module that calls the upstream ``ClientSession``. aiohttp's client errors are turned
into the proxy's own errors here, without ever printing them: their repr holds the request's
headers, and so the token.
"""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from .acting import TokenSource
from .body import RequestBody
from .errors import ProxyError, UpstreamTimeout, UpstreamUnreachable
from .exchange import Exchange
from .headers import HeaderRules
from .routing import Target
from .throttle import THROTTLING, Gate
from .tokens import Token
from .trust import CA_FILE_HINT


async def send(
    session: aiohttp.ClientSession,
    request: web.Request,
    exchange: Exchange,
    target: Target,
    body: RequestBody,
    source: TokenSource,
    proxy: str | None,
    headers: HeaderRules,
    gate: Gate,
    *,
    budget: float,
) -> aiohttp.ClientResponse:
    """The upstream's response (headers read, body not yet) to ``request`` sent to ``target``,
    with the token from ``source``, ``headers`` rules and outbound ``proxy``, through the
    route's throttling ``gate`` (``budget``: seconds the first call may still wait for its
    pace)."""
    waited = time.perf_counter()
    token = await source.token()
    exchange.token_source = token.source
    exchange.token_wait_ms = round((time.perf_counter() - waited) * 1000, 2)
    if not gate.idle:
        await gate.before_call(exchange, budget)
    sent = time.perf_counter()
    paused = exchange.throttle_wait_ms or 0.0  # waits from here on are not the upstream's time
    upstream = await _call(session, request, exchange, target, body, token, source, proxy, headers)
    if upstream.status == 401 and body.replayable and source.invalidate(token):
        # Revoked, rotated or challenged (CAE): drop this token if it is still the current
        # one, get a fresh one and try once more. Never twice. (The provider refuses when it
        # was refreshed for a 401 within tokens.min_refresh_interval: the 401 passes through.)
        upstream.release()
        token = await source.token()
        exchange.retried_401 = True
        if not gate.idle:
            await gate.before_call(exchange, budget)
        upstream = await _call(
            session, request, exchange, target, body, token, source, proxy, headers
        )
    while (
        upstream.status in THROTTLING
        and (wait := gate.throttled(upstream, exchange)) is not None
        and gate.may_resend(wait, exchange.throttle_retries, body.replayable)
    ):
        # Retry-After is within max_throttle_wait: wait it out and send the same bytes again,
        # with the cache's token (it may have been refreshed meanwhile).
        upstream.release()
        await gate.wait(exchange, wait)
        token = await source.token()
        exchange.throttle_retries += 1
        await gate.before_call(exchange, gate.settings.max_throttle_wait)
        upstream = await _call(
            session, request, exchange, target, body, token, source, proxy, headers
        )
    gate.hint(upstream)
    paused = (exchange.throttle_wait_ms or 0.0) - paused
    exchange.upstream_ms = round((time.perf_counter() - sent) * 1000 - paused, 2)
    return upstream


async def _call(
    session: aiohttp.ClientSession,
    request: web.Request,
    exchange: Exchange,
    target: Target,
    body: RequestBody,
    token: Token,
    source: TokenSource,
    proxy: str | None,
    rules: HeaderRules,
) -> aiohttp.ClientResponse:
    route = target.route
    headers = rules.request(
        request.headers,
        token=token.value,
        request_id=exchange.request_id,
        content_length=body.content_length,
        extra=source.headers,
    )
    exchange.upstream_url = target.url
    exchange.upstream_headers = headers.items()  # only redacting observers read these
    exchange.token_claims = token.claims
    name = route.name
    try:
        return await session.request(
            request.method,
            target.url,
            headers=headers,
            data=body.data,
            allow_redirects=False,
            proxy=proxy,
        )
    except ProxyError:  # the body's own failure (too large, paused), raised through the call
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        if body.failure is not None:
            raise body.failure from None
        raise UpstreamTimeout(f"{name}: the upstream did not answer in time") from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise UpstreamUnreachable(
            f"{name}: the TLS certificate of {e.host} is not trusted; {CA_FILE_HINT}"
        ) from None
    except aiohttp.ClientSSLError as e:  # a handshake that failed for another reason
        raise UpstreamUnreachable(
            f"{name}: the TLS handshake with {e.host}:{e.port} failed (does it speak HTTPS on "
            f"that port?); {CA_FILE_HINT}"
        ) from None
    except aiohttp.ClientConnectorError as e:
        raise UpstreamUnreachable(
            f"{name}: cannot connect to {e.host}:{e.port}: "
            f"{e.os_error.strerror or 'connection failed'}"
        ) from None
    except aiohttp.ClientError as e:
        if body.failure is not None:  # the body stopped; the upstream request went with it
            raise body.failure from None
        # Never str()/repr() the exception: some aiohttp errors carry the request headers.
        raise UpstreamUnreachable(f"{name}: upstream failed ({type(e).__name__})") from None
