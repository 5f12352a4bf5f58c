"""Sending a request upstream: the route's token, the call, and one retry after a 401.

The only module that calls the upstream ``ClientSession``. aiohttp's client errors are turned
into the proxy's own errors here, without ever printing them: their repr holds the request's
headers, and so the token.
"""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from .body import RequestBody
from .errors import ProxyError, UpstreamTimeout, UpstreamUnreachable
from .exchange import Exchange
from .headers import HeaderRules
from .routing import Target
from .tokens import Token, TokenProvider


async def send(
    session: aiohttp.ClientSession,
    request: web.Request,
    exchange: Exchange,
    target: Target,
    body: RequestBody,
    provider: TokenProvider,
    proxy: str | None,
    headers: HeaderRules,
    *,
    trusted_proxy: bool = False,
) -> aiohttp.ClientResponse:
    """The upstream's response (headers read, body not yet) to ``request`` sent to ``target``,
    with the route's token, ``headers`` rules and outbound ``proxy``; ``trusted_proxy``: the
    request came through a trusted proxy, whose forwarding headers go upstream too."""
    scope = target.route.scope
    waited = time.perf_counter()
    token = await provider.token(scope)
    exchange.token_source = token.source
    exchange.token_wait_ms = round((time.perf_counter() - waited) * 1000, 2)
    sent = time.perf_counter()
    upstream = await _call(
        session, request, exchange, target, body, token, proxy, headers, trusted_proxy
    )
    if upstream.status == 401 and body.replayable and provider.invalidate(token):
        # Revoked, rotated or challenged (CAE): drop this token if it is still the current
        # one, get a fresh one and try once more. Never twice. (The provider refuses when it
        # was refreshed for a 401 within tokens.min_refresh_interval: the 401 passes through.)
        upstream.release()
        token = await provider.token(scope)
        exchange.retried_401 = True
        upstream = await _call(
            session, request, exchange, target, body, token, proxy, headers, trusted_proxy
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
    proxy: str | None,
    rules: HeaderRules,
    trusted_proxy: bool,
) -> aiohttp.ClientResponse:
    route = target.route
    headers = rules.request(
        request.headers,
        token=token.value,
        request_id=exchange.request_id,
        content_length=body.content_length,
        trusted_proxy=trusted_proxy,
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
    except aiohttp.ClientConnectorCertificateError:
        raise UpstreamUnreachable(
            f"{name}: the upstream's TLS certificate is not trusted"
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
