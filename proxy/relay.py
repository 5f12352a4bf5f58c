"""Relaying the upstream's response to the client: headers cleaned and their links rewritten,
the body streamed, or, for JSON (and a ``$batch``'s answer, ``proxy.batch.responses``) on a
``rewrite_links`` route, its upstream URLs rewritten.

Once the status line is sent, the only honest signal of an upstream failure is a broken
connection, so a client can never take a truncated body for a whole one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import aiohttp
import structlog
from aiohttp import web

from . import request_id
from .batch import responses as batch_responses
from .config import RouteConfig
from .errors import UpstreamUnreachable
from .exchange import Exchange
from .headers import HeaderRules
from .rewrite import LINK_HEADERS, REWRITE_HEADER, ClientView, LinkRewriter, is_json, is_multipart

log = structlog.get_logger("proxy.access")

_NO_BODY_STATUS = frozenset({204, 304})


class _HeadersWithBody(web.StreamResponse):
    """A response whose status line and headers go out with the first piece of its body, in
    one write, as aiohttp's ``web.Response`` does: one system call per small answer, not two.

    Only for an upstream answer of a declared length, whose body is on its way with its
    headers; a stream of events (no length) still gets its headers at once."""

    _send_headers_immediately = False  # aiohttp's switch for exactly this; ignored if it goes


async def relay(
    request: web.Request,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
    route: RouteConfig,
    client: ClientView,
    links: LinkRewriter,
    rules: HeaderRules,
) -> web.StreamResponse:
    """Send ``upstream``'s answer to the client of ``request``; the response, finished."""
    length = _length(upstream)
    kind = web.StreamResponse if length is None else _HeadersWithBody
    response = kind(status=upstream.status, reason=upstream.reason)
    headers = rules.response(upstream.headers)
    for name in LINK_HEADERS:
        if name in headers:
            headers[name] = links.rewrite(headers[name], client, route)
    response.headers.extend(headers)
    response.headers.setdefault(request_id.HEADER, exchange.request_id)
    if request.method == "HEAD" or upstream.status in _NO_BODY_STATUS:
        if length is not None:  # what a GET would carry, as the upstream wrote it
            response.headers["Content-Length"] = upstream.headers["Content-Length"]
        await response.prepare(request)
        exchange.bytes_out = 0
        await response.write_eof()
        return response
    if route.edits.rewrite_links:
        content_type = upstream.headers.get("Content-Type", "")
        rewrite: Callable[[bytes], bytes | None]
        if is_json(content_type):
            rewrite = functools.partial(links.rewrite_json, client=client, current=route)
            return await _relay_held(request, exchange, upstream, response, route, rewrite)
        if exchange.batch is not None and is_multipart(content_type):
            rewrite = functools.partial(
                batch_responses.rewrite,
                content_type=content_type,
                url=functools.partial(links.rewrite, client=client, current=route),
                json_body=functools.partial(links.rewrite_json, client=client, current=route),
            )
            return await _relay_held(request, exchange, upstream, response, route, rewrite)
    response.content_length = length
    await response.prepare(request)
    if await _stream(request, exchange, upstream, response):
        await response.write_eof()
    return response


def _length(upstream: aiohttp.ClientResponse) -> int | None:
    """The body length the upstream declared, unless it is chunked (then it means nothing)."""
    length = upstream.headers.get("Content-Length")
    if length is None or "Transfer-Encoding" in upstream.headers:
        return None
    return int(length)


async def _stream(
    request: web.Request,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    sent: int = 0,
) -> bool:
    """Copy the rest of the upstream's body; False when the upstream broke off (the client's
    connection is then aborted, see the module docstring)."""
    capture = exchange.response_capture
    try:
        async for chunk in upstream.content.iter_any():
            if capture is not None:
                capture.add(chunk)
            await response.write(chunk)
            sent += len(chunk)
    except (TimeoutError, aiohttp.ClientError) as e:
        exchange.error = "upstream_aborted"
        exchange.bytes_out = sent
        log.warning("upstream.aborted", reason=type(e).__name__, bytes_out=sent)
        if request.transport is not None:
            request.transport.abort()
        return False
    exchange.bytes_out = sent
    return True


async def _relay_held(
    request: web.Request,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    route: RouteConfig,
    rewrite: Callable[[bytes], bytes | None],
) -> web.StreamResponse:
    """A body (JSON, or a batch answer) with its upstream URLs rewritten by ``rewrite``, when
    small enough to hold; otherwise, or when ``rewrite`` cannot read it (None), sent unchanged,
    and the client is told why in a header."""
    cap = route.edits.rewrite_max_bytes
    length = _length(upstream)
    reason = None
    if upstream.headers.get("Content-Encoding", "identity").lower() != "identity":
        reason = "content-encoding"
    elif length is not None and length > cap:
        reason = "too-large"
    held = b""
    if reason is None:
        try:
            held = await _read_up_to(upstream, cap + 1)
        except (TimeoutError, aiohttp.ClientError):
            raise UpstreamUnreachable(f"{route.name}: the upstream broke off") from None
        if len(held) > cap:
            reason = "too-large"
    if held and exchange.response_capture is not None:
        exchange.response_capture.add(held)
    body = rewrite(held) if reason is None else None
    if reason is None and body is None:
        reason = "unparsable"
    if body is not None:
        response.headers[REWRITE_HEADER] = "rewritten" if body != held else "unchanged"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        exchange.bytes_out = len(body)
        await response.write_eof()
        return response
    response.headers[REWRITE_HEADER] = f"unchanged; reason={reason}"
    response.content_length = length
    await response.prepare(request)
    if held:
        await response.write(held)
    if await _stream(request, exchange, upstream, response, sent=len(held)):
        await response.write_eof()
    return response


async def _read_up_to(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body, fewer only when it ends first."""
    held = await upstream.content.read(limit)
    while len(held) < limit and not upstream.content.at_eof():
        more = await upstream.content.read(limit - len(held))
        if not more:
            break
        held += more
    return held
