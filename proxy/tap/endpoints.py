"""The tap's own endpoints under ``/_proxy/tap``: the page, the live stream, JSON and HAR.

Who may look: with ``[access]``, only clients with ``admin = true`` (the guard authenticated
them and attached them to the request), wherever they connect from: behind a local TLS
terminator every peer is loopback, so a loopback peer proves nothing there. Without
``[access]`` (no client on the request), loopback peers only. The rule reads the request, not
a flag taken at start, so it follows a reloaded ``[access]``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from .. import access, paths, request_id
from ..config.access import AccessClient
from ..errors import Forbidden, ProxyError, to_response
from ..peers import peer_is_loopback
from ..runtime import Runtime
from . import resend, snippets
from .har import har
from .store import REFUSED, Tap, exported_bodies

PAGE = paths.TAP
HAR = paths.TAP_HAR
EVENTS = paths.TAP_EVENTS
EXCHANGES = paths.TAP_EXCHANGES
_HEARTBEAT = 15.0  # seconds between SSE comments, so idle proxies in between keep the stream
_NO_STORE = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(app: web.Application, tap: Tap, runtime: Runtime) -> None:
    """Add the tap's routes (before the catch-all) and its lifecycle to ``app``."""
    page = _Page.load()
    endpoints = _Endpoints(tap, page, runtime)
    app.router.add_get(PAGE, endpoints.guarded(endpoints.page))
    app.router.add_get(HAR, endpoints.guarded(endpoints.har))
    app.router.add_get(EVENTS, endpoints.guarded(endpoints.events))
    app.router.add_get(EXCHANGES, endpoints.guarded(endpoints.exchanges))
    one = EXCHANGES + "/{id:[0-9]+}"
    app.router.add_get(one, endpoints.guarded(endpoints.exchange))
    app.router.add_get(one + "/curl", endpoints.guarded(endpoints.curl))
    app.router.add_get(one + "/powershell", endpoints.guarded(endpoints.powershell))
    app.router.add_post(one + "/resend", endpoints.guarded(endpoints.resend))
    app.on_shutdown.append(tap.close)
    if tap.recorder is not None:
        recorder = tap.recorder

        async def recording(_: web.Application) -> AsyncIterator[None]:
            await recorder.start()
            yield
            await recorder.close()

        app.cleanup_ctx.append(recording)


def may_look(request: web.Request) -> bool:
    """Whether ``request`` may see the tap (see the module docstring)."""
    client: AccessClient | None = request.get(access.CLIENT)
    if client is not None:
        return client.admin
    return peer_is_loopback(request)


class _Page:
    """The page, read once from package data, with a CSP that allows exactly its inline code."""

    def __init__(self, html: bytes, csp: str) -> None:
        self.html = html
        self.csp = csp

    @classmethod
    def load(cls) -> _Page:
        html = resources.files(__package__).joinpath("static/tap.html").read_bytes()
        text = html.decode()
        hashes = {
            kind: " ".join(
                "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
                for m in re.findall(rf"<{kind}>(.*?)</{kind}>", text, re.DOTALL)
            )
            for kind in ("script", "style")
        }
        csp = (
            f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return cls(html, csp)


class _Endpoints:
    def __init__(self, tap: Tap, page: _Page, runtime: Runtime) -> None:
        self._tap = tap
        self._page = page
        self._runtime = runtime

    def guarded(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if not may_look(request):
                why = (
                    "the tap is for access clients with admin = true"
                    if access.CLIENT in request
                    else "the tap answers only on loopback (127.0.0.1, ::1)"
                )
                return _error(Forbidden(why))
            return await handler(request)

        return checked

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self._page.html,
            content_type="text/html",
            charset="utf-8",
            headers={**_NO_STORE, "Content-Security-Policy": self._page.csp},
        )

    async def har(self, request: web.Request) -> web.StreamResponse:
        body = json.dumps(har(self._tap.entries(), _base(request)), ensure_ascii=False, indent=1)
        return web.Response(
            text=body,
            content_type="application/json",
            headers={
                **_NO_STORE,
                "Content-Disposition": 'attachment; filename="ppproxy-tap.har"',
            },
        )

    async def exchanges(self, request: web.Request) -> web.StreamResponse:
        """Summaries newer than ``?after=ID`` (polling, and the page's first load)."""
        after = request.query.get("after", "0")
        items = self._tap.summaries(int(after) if after.isdecimal() else 0)
        return _json({"exchanges": items, "keep": self._tap.config.keep})

    async def exchange(self, request: web.Request) -> web.StreamResponse:
        captured = self._tap.captured(int(request.match_info["id"]))
        if captured is None:
            return _json({"error": "not_found", "message": "no longer in the buffer"}, 404)
        found = self._tap.get(captured.id)
        assert found is not None
        # The client's credentials a resend leaves out, for the page to say so (names only).
        return _json({**found, "resend_leaves_out": resend.left_out(captured)})

    async def curl(self, request: web.Request) -> web.StreamResponse:
        """The request as a curl command that calls the proxy (text/plain)."""
        return self._command(request, snippets.curl)

    async def powershell(self, request: web.Request) -> web.StreamResponse:
        """The request as PowerShell's Invoke-RestMethod (text/plain)."""
        return self._command(request, snippets.powershell)

    def _command(self, request: web.Request, render: snippets.Render) -> web.StreamResponse:
        captured = self._tap.captured(int(request.match_info["id"]))
        if captured is None:
            return _json({"error": "not_found", "message": "no longer in the buffer"}, 404)
        found = self._tap.get(captured.id)
        assert found is not None
        text = exported_bodies(captured)[0]
        body = text.get("text") if "encoding" not in text else None
        command = render(
            found,
            _base(request),
            needs_key=self._runtime.state.config.access.enabled,
            text=body if isinstance(body, str) else None,
        )
        return web.Response(text=command, content_type="text/plain", headers=_NO_STORE)

    async def resend(self, request: web.Request) -> web.StreamResponse:
        """Send a captured request again (edited when the body says how): a new exchange."""
        try:
            resend.check_same_origin(request)
            captured = self._tap.captured(int(request.match_info["id"]))
            if captured is None:
                return _json({"error": "not_found", "message": "no longer in the buffer"}, 404)
            state = self._runtime.state
            edit = await resend.read_edit(request)
            method, target, headers, body = resend.outgoing(captured, edit)
            resend.check_inside_route(request, state, target)
            new_id = request_id.new()
            future = self._tap.expect_resend(new_id, captured.id)
            try:
                answer = await resend.send(
                    request,
                    method,
                    target,
                    headers,
                    body,
                    new_id=new_id,
                    read_timeout=state.config.outbound.read_timeout + 5,
                )
                created = await resend.wait_for(future)
            finally:
                self._tap.forget_resend(new_id)
        except ProxyError as e:
            return _error(e)
        if created == REFUSED:  # the guard refused it (policy, grants, a bad path): say why
            response = resend.refusal(answer)
            response.headers.update(_NO_STORE)
            return response
        leaves_out = resend.left_out(captured) if edit.get("headers") is None else []
        return _json(
            {
                "id": created,
                "resend_of": captured.id,
                "status": answer.status,
                "left_out": leaves_out,
            }
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events (HTML §9.2): the buffer after ``Last-Event-ID``, then live."""
        # EventSource sends Last-Event-ID when it reconnects; the page's first connection says
        # ?after= for what it already fetched.
        last = request.headers.get("Last-Event-ID") or request.query.get("after", "")
        queue = self._tap.subscribe()
        try:
            response = web.StreamResponse(
                headers={
                    **_NO_STORE,
                    "Content-Type": "text/event-stream",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            newest = int(last) if last.isdecimal() else 0
            for past in self._tap.summaries(newest):
                await response.write(_event(past))
                newest = past["id"]
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), _HEARTBEAT)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:  # shutting down, or this page fell too far behind
                    break
                if item["id"] > newest:  # not already sent from the buffer
                    await response.write(_event(item))
                    newest = item["id"]
            return response
        except (ConnectionResetError, ConnectionError):
            return response
        finally:
            self._tap.unsubscribe(queue)


def _base(request: web.Request) -> str:
    """The proxy's address as the person looking at the tap reached it."""
    return f"{request.scheme}://{request.host}"


def _event(item: dict[str, Any]) -> bytes:
    data = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return f"id: {item['id']}\nevent: exchange\ndata: {data}\n\n".encode()


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/json",
        headers=_NO_STORE,
    )


def _error(error: ProxyError) -> web.Response:
    response = to_response(error)
    response.headers.update(_NO_STORE)
    return response
