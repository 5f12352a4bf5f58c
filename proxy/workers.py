"""Several worker processes on the same ports (SO_REUSEPORT, so the kernel spreads the
connections), supervised by the parent. POSIX only; elsewhere one process serves.

Each worker is a whole proxy with its own token cache: N workers make N times the token
requests (see docs/operations.md). Metrics add up across workers through prometheus-client's
multiprocess mode in a folder the parent creates and removes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import structlog

from . import banner
from .config import Config

log = structlog.get_logger("proxy.workers")

_RESTART_WINDOW = 10.0  # a worker that dies this soon after start counts as crashing
_MAX_QUICK_DEATHS = 5


def supported() -> bool:
    """Whether this platform can share a port between processes (SO_REUSEPORT)."""
    return sys.platform != "win32" and hasattr(socket, "SO_REUSEPORT")


def serve(config: Config, log_level: str, count: int, source: Any = None) -> int:
    """Run ``count`` workers until SIGINT/SIGTERM; restart any that dies; SIGHUP is passed on
    so each worker reloads its configuration from ``source``; the exit code."""
    context = multiprocessing.get_context("spawn")  # no inherited event loop or threads
    metrics_dir = tempfile.mkdtemp(prefix="ppproxy-metrics-")
    # Inherited by the workers: prometheus-client picks its storage when it is first imported
    # there, which may happen while the worker's arguments are unpickled, before _worker runs.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    workers: dict[int, tuple[BaseProcess, float]] = {}

    def hup(signum: int, frame: FrameType | None) -> None:
        for process, _ in workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGHUP)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hup)
    quick_deaths = 0

    def start(index: int) -> None:
        process = context.Process(
            target=_worker,
            args=(config, log_level, index, metrics_dir, source),
            name=f"ppproxy-worker-{index}",
            daemon=False,
        )
        process.start()
        workers[index] = (process, time.monotonic())

    try:
        for index in range(count):
            start(index)
        log.info("workers.started", count=count, pids=[p.pid for p, _ in workers.values()])
        host = config.server.host
        banner.ready(config, f"http://{f'[{host}]' if ':' in host else host}:{config.server.port}")
        while not stopping:
            time.sleep(0.2)
            for index, (process, started) in list(workers.items()):
                if process.is_alive() or stopping:
                    continue
                _mark_dead(process.pid, metrics_dir)
                quick = time.monotonic() - started < _RESTART_WINDOW
                quick_deaths = quick_deaths + 1 if quick else 0
                log.error("workers.died", worker=index, exitcode=process.exitcode)
                if quick_deaths >= _MAX_QUICK_DEATHS:
                    log.error("workers.crashing", message="workers keep dying at start; stopping")
                    stopping = True
                    break
                start(index)
        return _stop_all(workers, config, metrics_dir, failed=quick_deaths >= _MAX_QUICK_DEATHS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop_all(
    workers: dict[int, tuple[BaseProcess, float]], config: Config, metrics_dir: str, failed: bool
) -> int:
    log.info("workers.stopping", count=len(workers))
    for process, _ in workers.values():
        if process.is_alive():
            process.terminate()  # SIGTERM: each worker drains and finishes in-flight requests
    deadline = time.monotonic() + config.server.drain_delay + config.server.shutdown_timeout + 5
    for process, _ in workers.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("workers.killed", pid=process.pid)
            process.kill()
            process.join()
        _mark_dead(process.pid, metrics_dir)
    log.info("workers.stopped")
    return 1 if failed else 0


def _mark_dead(pid: int | None, metrics_dir: str) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]  # untyped


def _worker(config: Config, log_level: str, index: int, metrics_dir: str, source: Any) -> None:
    """One worker process: a whole proxy bound with SO_REUSEPORT."""
    from . import observe
    from .app import create_app
    from .server import run, run_until_stopped

    observe.configure(log_level)
    structlog.contextvars.bind_contextvars(worker=index)
    with contextlib.suppress(KeyboardInterrupt):
        run_until_stopped(
            run(
                create_app(config, metrics_dir=metrics_dir),
                config.server,
                reuse_port=True,
                reload=None if source is None else lambda: source.load(os.environ),
            ),
            config.server.event_loop,
        )
