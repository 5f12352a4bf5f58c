"""The catch-all handler: match the route, inject the token, stream both ways.

This is the only module that talks to the upstream ``ClientSession``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web

from . import headers as hdr
from .body import RequestBody
from .body import prepare as prepare_body
from .config import OutboundConfig, RouteConfig
from .errors import (
    NoRoute,
    PayloadTooLarge,
    ProxyError,
    UpstreamTimeout,
    UpstreamUnreachable,
    to_response,
)
from .limits import Limiter
from .metrics import Metrics
from .rewrite import (
    LINK_HEADERS,
    REWRITE_HEADER,
    ClientView,
    LinkRewriter,
    add_default_query,
    is_json,
)
from .routing import Resolver, Target
from .tokens import Token, TokenProvider

if TYPE_CHECKING:
    from .tap import Tap

log = structlog.get_logger("proxy.access")

_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
# Request ids are GUID-shaped (x-ms-client-request-id is a GUID by convention): a random
# per-process prefix and a counter, unique without asking the OS for randomness per request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    n = next(_ID_COUNTER)
    p = _ID_PREFIX
    return f"{p[:8]}-{p[8:12]}-{p[12:16]}-{(n >> 48) & 0xFFFF:04x}-{n & 0xFFFFFFFFFFFF:012x}"


_NO_BODY_STATUS = frozenset({204, 304})


class Forwarder:
    """Prepared at start; ``handle`` only reads this state."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        providers: Mapping[str, TokenProvider],
        outbound: OutboundConfig,
        routes: Sequence[RouteConfig],
        main_port: int = 8080,
        metrics: Metrics | None = None,
        tap: Tap | None = None,
    ) -> None:
        self._session = session
        self._providers = providers
        self._route_proxy = {r.name: outbound.proxy_for(r.upstream) for r in routes}
        self._replay_limit = outbound.replay_body_bytes
        self.limiters = {
            r.name: Limiter(r.name, r.limits) for r in routes if r.limits.max_concurrency
        }
        self._links = LinkRewriter(routes)
        self._resolver = Resolver(routes)
        self._main_port = main_port
        self._metrics = metrics
        self._tap = tap  # the debugging tap; None (off) costs one check per hook
        self.in_flight: dict[str, int] = {r.name: 0 for r in routes}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        raw_request_id = request.headers.get(hdr.REQUEST_ID, "")
        request_id = raw_request_id if _REQUEST_ID.match(raw_request_id) else _new_request_id()
        fields: dict[str, object] = {
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
        }
        if self._tap is not None:
            self._tap.begin(request, request_id)
        status = 0
        try:
            response = await self._forward(request, request_id, fields)
            status = response.status
            return response
        except ProxyError as e:
            status = e.status
            fields["error"] = e.code
            answer = to_response(e, request_id=request_id)
            if self._tap is not None:
                self._tap.proxy_response(request, answer)
            return answer
        except asyncio.CancelledError:
            status = 499  # the client went away; its upstream request was cancelled with it
            raise
        finally:
            fields["status"] = status
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
            fields["bytes_in"] = request.content.total_bytes
            log.info("request", **fields)
            if self._metrics is not None:
                self._metrics.observe(fields)
            if self._tap is not None:
                self._tap.finish(request, fields)

    async def _forward(
        self, request: web.Request, request_id: str, fields: dict[str, object]
    ) -> web.StreamResponse:
        if request.path == "/_proxy" or request.path.startswith("/_proxy/"):
            raise NoRoute(f"no proxy endpoint {request.path}")
        resolved = self._resolver.resolve(request)  # usually done by the guard already
        target, listener = resolved.target, resolved.listener
        if target is None:
            raise NoRoute("no route matches this path")
        route = target.route
        fields["route"] = route.name
        self.in_flight[route.name] += 1  # every route has its counter from the start
        try:
            return await self._forward_route(request, request_id, fields, target, listener)
        finally:
            self.in_flight[route.name] -= 1

    async def _forward_route(
        self,
        request: web.Request,
        request_id: str,
        fields: dict[str, object],
        target: Target,
        listener: RouteConfig | None,
    ) -> web.StreamResponse:
        route = target.route
        if route.edits.default_query:
            target = Target(route, add_default_query(target.url, route.edits.default_query))
        limiter = self.limiters.get(route.name)
        async with limiter.slot() if limiter is not None else contextlib.nullcontext():
            body = await prepare_body(
                request, replay_limit=self._replay_limit, max_bytes=route.policy.max_body_bytes
            )
            if self._tap is not None:  # copies chunks as they pass; holds nothing back
                body.data = self._tap.request_body(request, body.data)
            provider = self._providers[route.identity]
            waited = time.perf_counter()
            token = await provider.get(route.scope)
            fields["token"] = token.source
            fields["token_wait_ms"] = round((time.perf_counter() - waited) * 1000, 2)
            sent = time.perf_counter()
            upstream = await self._send(request, target, token, body, request_id)
            if upstream.status == 401 and body.replayable:
                # Revoked, rotated or challenged (CAE): drop this token if it is still the
                # current one, get a fresh one and try once more. Never twice.
                upstream.release()
                provider.invalidate(token)
                token = await provider.get(route.scope)
                fields["retried_401"] = True
                upstream = await self._send(request, target, token, body, request_id)
            async with upstream:
                fields["upstream_ms"] = round((time.perf_counter() - sent) * 1000, 2)
                client = ClientView(
                    request.headers.get("Host") or f"127.0.0.1:{self._main_port}",
                    listener,
                    self._main_port,
                )
                return await self._relay(request, upstream, request_id, fields, route, client)

    async def _send(
        self,
        request: web.Request,
        target: Target,
        token: Token,
        body: RequestBody,
        request_id: str,
    ) -> aiohttp.ClientResponse:
        name = target.route.name
        out_headers = hdr.request_headers(
            request.headers.items(),
            token=token.value,
            request_id=request_id,
            content_length=body.content_length,
            edits=target.route.edits,
        )
        if self._tap is not None:  # keeps the URL, headers and a claims summary; never the token
            self._tap.sent(request, target.url, out_headers, token.value)
        try:
            return await self._session.request(
                request.method,
                target.url,
                headers=out_headers,
                data=body.data,
                allow_redirects=False,
                proxy=self._route_proxy.get(target.route.name),
            )
        except PayloadTooLarge:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
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
            if body.too_large:
                raise PayloadTooLarge(f"{name}: the body is over the route's limit") from None
            # Never str()/repr() the exception: some aiohttp errors carry the request headers.
            raise UpstreamUnreachable(f"{name}: upstream failed ({type(e).__name__})") from None

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        request_id: str,
        fields: dict[str, object],
        route: RouteConfig,
        client: ClientView,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        if self._tap is not None:
            self._tap.response_start(
                request, upstream.status, upstream.reason, upstream.headers.items()
            )
        headers = hdr.response_headers(upstream.headers.items(), edits=route.edits)
        for name in LINK_HEADERS:
            if name in headers:
                headers[name] = self._links.rewrite(headers[name], client, route)
        response.headers.extend(headers)
        response.headers.setdefault(hdr.REQUEST_ID, request_id)
        length = upstream.headers.get("Content-Length")
        bodyless = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        if (
            route.edits.rewrite_links
            and not bodyless
            and is_json(upstream.headers.get("Content-Type", ""))
        ):
            return await self._relay_rewritten(request, upstream, response, fields, route, client)
        if length is not None and "Transfer-Encoding" not in upstream.headers:
            if bodyless:
                response.headers["Content-Length"] = length
            else:
                response.content_length = int(length)
        await response.prepare(request)
        if not bodyless:
            await self._stream(request, upstream, response, fields)
            if fields.get("error") == "upstream_aborted":
                return response
        else:
            fields["bytes_out"] = 0
        await response.write_eof()
        return response

    async def _stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        fields: dict[str, object],
        sent: int = 0,
    ) -> None:
        chunks: AsyncIterator[bytes] = upstream.content.iter_any()
        if self._tap is not None:
            chunks = self._tap.response_chunks(request, chunks)
        try:
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
        except (TimeoutError, aiohttp.ClientError) as e:
            # Headers are gone: the only honest signal left is a broken connection, so the
            # client cannot take a truncated body for a whole one.
            fields["error"] = "upstream_aborted"
            log.warning("upstream.aborted", reason=type(e).__name__, bytes_out=sent)
            if request.transport is not None:
                request.transport.abort()
        fields["bytes_out"] = sent

    async def _relay_rewritten(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        fields: dict[str, object],
        route: RouteConfig,
        client: ClientView,
    ) -> web.StreamResponse:
        """A JSON body with its upstream URLs rewritten, when small enough to hold; otherwise
        streamed unchanged, and the client is told why in a header."""
        cap = route.edits.rewrite_max_bytes
        length = upstream.headers.get("Content-Length")
        reason = None
        if upstream.headers.get("Content-Encoding", "identity").lower() != "identity":
            reason = "content-encoding"
        elif length is not None and int(length) > cap:
            reason = "too-large"
        held = b""
        if reason is None:
            try:
                held = await upstream.content.read(cap + 1)
                while len(held) <= cap and not upstream.content.at_eof():
                    more = await upstream.content.read(cap + 1 - len(held))
                    if not more:
                        break
                    held += more
            except (TimeoutError, aiohttp.ClientError):
                raise UpstreamUnreachable(f"{route.name}: the upstream broke off") from None
            if len(held) > cap:
                reason = "too-large"
        if self._tap is not None and held:
            self._tap.response_chunk(request, held)
        if reason is None:
            body = self._links.rewrite_json(held, client, route)
            response.headers[REWRITE_HEADER] = "rewritten"
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            fields["bytes_out"] = len(body)
            await response.write_eof()
            return response
        response.headers[REWRITE_HEADER] = f"unchanged; reason={reason}"
        if length is not None and "Transfer-Encoding" not in upstream.headers:
            response.content_length = int(length)
        await response.prepare(request)
        if held:
            await response.write(held)
        await self._stream(request, upstream, response, fields, sent=len(held))
        if fields.get("error") != "upstream_aborted":
            await response.write_eof()
        return response
