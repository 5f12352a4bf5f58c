"""Serving an application: listeners, signals (stop, drain, reload) and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from .app import RUNTIME
from .config import Config, ServerConfig
from .errors import ConfigError
from .listener import Gate, GatedSite, connection_factory

log = structlog.get_logger("proxy")


def run_until_stopped(main: Coroutine[Any, Any, None], event_loop: str = "auto") -> None:
    """Run ``main`` to the end on the event loop ``server.event_loop`` asks for: uvloop when
    it is installed (``ppproxy[speed]``) unless ``asyncio`` is asked for."""
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        runner.run(main)


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's own loop."""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":  # the configuration checked it; it vanished since
            raise
        return None
    return uvloop.new_event_loop


async def run(
    app: web.Application,
    server: ServerConfig,
    on_ready: Callable[[str], Awaitable[None]] | None = None,
    *,
    reuse_port: bool = False,
    reload: Callable[[], Config] | None = None,
) -> None:
    """Serve ``app`` until a stop signal, then shut down gracefully.

    On SIGTERM/SIGINT: readiness turns 503 at once, the listener stays open for
    ``drain_delay`` (load balancers notice), then closes; in-flight requests get
    ``shutdown_timeout`` to finish.
    """
    runner = runner_for(app)
    await runner.setup()
    try:
        address = await listen(runner, server.host, server.port, reuse_port=reuse_port)
        # Everything loaded so far (modules, configuration, MSAL, TLS contexts) lives as long as
        # the process: out of the collector's sight, a full collection under load scans only
        # what requests allocate (18 ms -> 6 ms a pass, measured; each pass stalls the loop).
        gc.collect()
        gc.freeze()
        if on_ready is not None:
            await on_ready(address)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()
        if reload is not None and hasattr(signal, "SIGHUP"):  # POSIX: SIGHUP reloads

            def on_hup() -> None:
                task = asyncio.ensure_future(_reload(app, reload))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, on_hup)
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows: there Ctrl+C arrives as KeyboardInterrupt instead.
            with contextlib.suppress(NotImplementedError, AttributeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        app[RUNTIME].draining = True
        log.info("server.draining", drain_delay=server.drain_delay)
        await asyncio.sleep(server.drain_delay)
        log.info("server.stopping", shutdown_timeout=server.shutdown_timeout)
    finally:
        await runner.cleanup()
        log.info("server.stopped")


def runner_for(app: web.Application) -> web.AppRunner:
    """The runner every listener of ``app`` shares: a client that goes away cancels its
    handler (and so its upstream request); the proxy writes its own access log."""
    return web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=app[RUNTIME].state.config.server.shutdown_timeout,
    )


async def listen(runner: web.AppRunner, host: str, port: int, *, reuse_port: bool = False) -> str:
    """Open the main listener on ``host:port`` and every route's own port (all of them HTTPS
    when [server] has TLS), sharing one ``server.max_connections``; the main address."""
    runtime = runner.app[RUNTIME]
    settings = runtime.state.config.server
    tls = runtime.tls
    scheme = "http" if tls is None else "https"
    gate = Gate(settings.max_connections)
    assert runner.server is not None  # set up by the caller
    factory = connection_factory(runner.server, settings)

    async def site(on: int) -> ssl.SSLContext | None:
        context = tls.listening() if tls is not None else None  # one per listener
        await GatedSite(
            runner,
            host,
            on,
            gate=gate,
            factory=factory,
            ssl_context=context,
            handshake_timeout=settings.header_timeout,
            reuse_port=reuse_port,
        ).start()
        return context

    context = await site(port)
    address = _address(scheme, runner.addresses[0])
    if tls is not None and context is not None:
        tls.bound(context, address)
    loop = type(asyncio.get_running_loop()).__module__.split(".", 1)[0]  # asyncio or uvloop
    log.info("server.listening", address=address, event_loop=loop)
    for route in runtime.state.config.routes:
        if route.port is not None:  # the route's own listener: no prefix needed there
            own_context = await site(route.port)
            own = _address(scheme, (host, route.port))
            if tls is not None and own_context is not None:
                tls.bound(own_context, own)
            log.info("server.listening", address=own, route=route.name)
    return address


async def _reload(app: web.Application, load_config: Callable[[], Config]) -> None:
    """SIGHUP: read the configuration again; a bad one is rejected and the old one serves on."""
    log.info("config.reloading")
    try:
        new = load_config()
    except ConfigError as e:
        log.error("config.reload_rejected", problems=list(e.problems))
        return
    refused = await app[RUNTIME].reload(new)
    if refused:
        log.error("config.reload_rejected", problems=refused)
    else:
        log.info("config.reloaded", routes=[r.name for r in new.routes])


def _address(scheme: str, sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
