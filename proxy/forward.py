"""The catch-all handler: match the route, inject the token, stream both ways.

This is the only module that talks to the upstream ``ClientSession``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Mapping

import aiohttp
import structlog
from aiohttp import web

from . import headers as hdr
from .config import OutboundConfig
from .errors import NoRoute, ProxyError, UpstreamTimeout, UpstreamUnreachable, to_response
from .routing import RouteTable
from .tokens import Token, TokenProvider

log = structlog.get_logger("proxy.access")

_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_NO_BODY_STATUS = frozenset({204, 304})


class Forwarder:
    """Prepared at start; ``handle`` only reads this state."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        table: RouteTable,
        providers: Mapping[str, TokenProvider],
        outbound: OutboundConfig,
    ) -> None:
        self._session = session
        self._table = table
        self._providers = providers
        self._proxy = outbound.proxy

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        raw_request_id = request.headers.get(hdr.REQUEST_ID, "")
        request_id = raw_request_id if _REQUEST_ID.match(raw_request_id) else str(uuid.uuid4())
        fields: dict[str, object] = {
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
        }
        status = 0
        try:
            response = await self._forward(request, request_id, fields)
            status = response.status
            return response
        except ProxyError as e:
            status = e.status
            fields["error"] = e.code
            return to_response(e, request_id=request_id)
        except asyncio.CancelledError:
            status = 499  # the client went away; its upstream request was cancelled with it
            raise
        finally:
            fields["status"] = status
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
            fields["bytes_in"] = request.content.total_bytes
            log.info("request", **fields)

    async def _forward(
        self, request: web.Request, request_id: str, fields: dict[str, object]
    ) -> web.StreamResponse:
        if request.path == "/_proxy" or request.path.startswith("/_proxy/"):
            raise NoRoute(f"no proxy endpoint {request.path}")
        target = self._table.match(request.raw_path)
        if target is None:
            raise NoRoute("no route matches this path")
        route = target.route
        fields["route"] = route.name
        waited = time.perf_counter()
        token: Token = await self._providers[route.identity].get(route.scope)
        fields["token"] = token.source
        fields["token_wait_ms"] = round((time.perf_counter() - waited) * 1000, 2)

        has_body = request.body_exists
        out_headers = hdr.request_headers(
            request.headers.items(),
            token=token.value,
            request_id=request_id,
            content_length=request.headers.get("Content-Length") if has_body else None,
        )
        sent = time.perf_counter()
        try:
            upstream = await self._session.request(
                request.method,
                target.url,
                headers=out_headers,
                data=request.content if has_body else None,
                allow_redirects=False,
                proxy=self._proxy,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"{route.name}: the upstream did not answer in time") from None
        except aiohttp.ClientConnectorCertificateError:
            raise UpstreamUnreachable(
                f"{route.name}: the upstream's TLS certificate is not trusted"
            ) from None
        except aiohttp.ClientConnectorError as e:
            raise UpstreamUnreachable(
                f"{route.name}: cannot connect to {e.host}:{e.port}: "
                f"{e.os_error.strerror or 'connection failed'}"
            ) from None
        except aiohttp.ClientError as e:
            # Never str()/repr() the exception: some aiohttp errors carry the request headers.
            raise UpstreamUnreachable(
                f"{route.name}: upstream failed ({type(e).__name__})"
            ) from None
        async with upstream:
            fields["upstream_ms"] = round((time.perf_counter() - sent) * 1000, 2)
            return await self._relay(request, upstream, request_id, fields)

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        request_id: str,
        fields: dict[str, object],
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(hdr.response_headers(upstream.headers.items()))
        response.headers.setdefault(hdr.REQUEST_ID, request_id)
        length = upstream.headers.get("Content-Length")
        bodyless = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        if length is not None and "Transfer-Encoding" not in upstream.headers:
            if bodyless:
                response.headers["Content-Length"] = length
            else:
                response.content_length = int(length)
        await response.prepare(request)
        sent = 0
        if not bodyless:
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    sent += len(chunk)
            except (TimeoutError, aiohttp.ClientError) as e:
                # Headers are gone: the only honest signal left is a broken connection, so the
                # client cannot take a truncated body for a whole one.
                fields["error"] = "upstream_aborted"
                fields["bytes_out"] = sent
                log.warning("upstream.aborted", reason=type(e).__name__, bytes_out=sent)
                if request.transport is not None:
                    request.transport.abort()
                return response
        fields["bytes_out"] = sent
        await response.write_eof()
        return response
