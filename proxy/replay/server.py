"""The replay server: every request answered from the recordings, or ``404 not_recorded``.

Web pages are kept out as the proxy keeps them out (:mod:`proxy.browsers`): the ``Host`` must
be a loopback name or one given with ``--allowed-host`` (DNS rebinding), and an ``Origin`` or
``Sec-Fetch-Site`` of another site is refused; the recorded ``Access-Control-*`` headers are
never replayed, so no page of another origin may read an answer.

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

from ..browsers import check_browser
from ..errors import HostNotAllowed, NotRecorded, PayloadTooLarge, ProxyError, to_response
from .recorded import Recordings

log = structlog.get_logger("proxy.replay")
MAX_BODY = 64 * 1024 * 1024
RECORDINGS = web.AppKey("recordings", Recordings)
BROWSERS = web.AppKey("browsers", tuple[frozenset[str], frozenset[str]])


def create_app(
    recordings: Recordings, hosts: frozenset[str], origins: frozenset[str]
) -> web.Application:
    """``hosts``: the names a ``Host`` may give; ``origins``: those an ``Origin`` may give
    (:func:`proxy.browsers.allowed_hosts` and :func:`~proxy.browsers.allowed_origins`)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[RECORDINGS] = recordings
    app[BROWSERS] = (hosts, origins)
    app.router.add_route("*", "/{tail:.*}", _answer)
    return app


async def _answer(request: web.Request) -> web.StreamResponse:
    hosts, origins = request.app[BROWSERS]
    try:
        check_browser(request.headers, hosts, origins=origins)
    except HostNotAllowed:
        error: ProxyError = HostNotAllowed(
            f"Host {request.headers.get('Host', '')[:100]!r} is not allowed; start the replay "
            "with --allowed-host NAME if it is meant to be reached by that name"
        )
        return to_response(error)
    except ProxyError as e:
        return to_response(e)
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
    hosts: frozenset[str],
    origins: frozenset[str],
    ready: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner = web.AppRunner(
        create_app(recordings, hosts, origins), access_log=None, handle_signals=False
    )
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
