"""The replay server: every request answered from the recordings, or ``404 not_recorded``.

A request's body is read whole (up to ``MAX_BODY``, then ``413``) because matching compares
it; the recorded answers are in memory already, as the HAR file was. Nothing is forwarded
anywhere.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from multidict import CIMultiDict

from ..errors import NotRecorded, PayloadTooLarge, to_response
from .recorded import Recordings

log = structlog.get_logger("proxy.replay")
MAX_BODY = 64 * 1024 * 1024
RECORDINGS = web.AppKey("recordings", Recordings)


def create_app(recordings: Recordings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[RECORDINGS] = recordings
    app.router.add_route("*", "/{tail:.*}", _answer)
    return app


async def _answer(request: web.Request) -> web.StreamResponse:
    recordings = request.app[RECORDINGS]
    target = request.raw_path
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return to_response(PayloadTooLarge(f"replay compares bodies of at most {MAX_BODY} bytes"))
    found = recordings.answer(request.method, target, body)
    if found is None:
        log.info("replay.not_recorded", method=request.method, path=request.path)
        return to_response(
            NotRecorded(
                f"no recorded response for {request.method} {request.path[:200]}",
                nearest=recordings.nearest(request.method, target),
            )
        )
    log.info("replay.answered", method=request.method, path=request.path, status=found.status)
    headers, content = found.answer(f"{request.scheme}://{request.host}")
    return web.Response(
        status=found.status,
        reason=found.reason or None,
        headers=CIMultiDict(headers),
        body=content,
    )


async def serve(
    recordings: Recordings,
    host: str,
    port: int,
    ready: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner = web.AppRunner(create_app(recordings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shown = f"[{host}]" if ":" in host else host
        bound = runner.addresses[0][1] if runner.addresses else port  # port 0: the one chosen
        if ready is not None:
            await ready(f"http://{shown}:{bound}")
        await stop.wait()
    finally:
        await runner.cleanup()
