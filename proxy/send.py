"""Sending a request upstream: the request's token, the call, and one retry after a 401.

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
from .errors import PayloadTooLarge, UpstreamTimeout, UpstreamUnreachable
from .exchange import Exchange
from .headers import HeaderRules
from .routing import Target
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
) -> aiohttp.ClientResponse:
    """The upstream's response (headers read, body not yet) to ``request`` sent to ``target``,
    with the token from ``source``, ``headers`` rules and outbound ``proxy``."""
    waited = time.perf_counter()
    token = await source.token()
    exchange.token_source = token.source
    exchange.token_wait_ms = round((time.perf_counter() - waited) * 1000, 2)
    sent = time.perf_counter()
    upstream = await _call(session, request, exchange, target, body, token, source, proxy, headers)
    if upstream.status == 401 and body.replayable:
        # Revoked, rotated or challenged (CAE): drop this token if it is still the current
        # one, get a fresh one and try once more. Never twice.
        upstream.release()
        source.invalidate(token)
        token = await source.token()
        exchange.retried_401 = True
        upstream = await _call(
            session, request, exchange, target, body, token, source, proxy, headers
        )
    exchange.upstream_ms = round((time.perf_counter() - sent) * 1000, 2)
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
    except PayloadTooLarge:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"{name}: the upstream did not answer in time") from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise UpstreamUnreachable(
            f"{name}: the TLS certificate of {e.host} is not trusted; {CA_FILE_HINT}"
        ) from None
    except aiohttp.ClientConnectorError as e:
        raise UpstreamUnreachable(
            f"{name}: cannot connect to {e.host}:{e.port}: "
            f"{e.os_error.strerror or 'connection failed'}"
        ) from None
    except aiohttp.ClientError as e:
        if body.too_large:
            raise PayloadTooLarge(f"{name}: the body is over the route's limit") from None
        # Never str()/repr() the exception: some aiohttp errors carry the request headers.
        raise UpstreamUnreachable(f"{name}: upstream failed ({type(e).__name__})") from None
