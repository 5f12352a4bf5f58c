"""``ppproxy serve``: load the configuration (with ``--host``/``--port``/``--tap`` on top),
check that its ports are free, and run the proxy until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from .. import banner, workers
from ..access import anonymous_warning, exposure_problem
from ..app import create_app
from ..config import Config
from ..config.tap import tap_file_problem
from ..errors import ConfigError
from ..server import run, run_until_stopped
from ..tap.recorder import TapFileError
from ..tls import TlsError
from .base import Command, add_config, load_config
from .ca import prepare_serve

log = structlog.get_logger("proxy")


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    parser.add_argument(
        "--tap", action="store_true", help="turn the debugging tap on (page at /_proxy/tap)"
    )
    parser.add_argument(
        "--tap-file",
        type=Path,
        metavar="PATH",
        help="record every exchange as JSON lines (implies --tap)",
    )


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    source = ConfigSource(args.config, args.host, args.port, args.tap, args.tap_file)
    return serve(source.load(env), log_level=args.log_level, source=source)


COMMAND = Command(
    name="serve",
    summary="run the proxy",
    description="Run the proxy: load and check the configuration (every problem is listed "
    "before a port is bound), get every route's token, listen, and print each route's local "
    "URL, upstream, scope and identity. SIGHUP reloads the configuration (POSIX); Ctrl+C or "
    "SIGTERM stops it gracefully.",
    examples=(
        "ppproxy serve",
        "ppproxy serve --config proxy.toml --port 8081 --tap",
    ),
    arguments=_arguments,
    run=_run,
)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where `serve`'s configuration comes from: read again on SIGHUP (also by workers)."""

    path: Path | None
    host: str | None = None
    port: int | None = None
    tap: bool = False
    tap_file: Path | None = None

    def load(self, env: Mapping[str, str]) -> Config:
        config = load_config(self.path, env)
        config = override(config, host=self.host, port=self.port)
        return with_tap(config, on=self.tap, file=self.tap_file)


def override(config: Config, *, host: str | None, port: int | None) -> Config:
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError([f"--port: must be between 0 and 65535, got {port}"])
    server = replace(
        config.server,
        host=config.server.host if host is None else host,
        port=config.server.port if port is None else port,
    )
    return replace(config, server=server)


def with_tap(config: Config, *, on: bool, file: Path | None) -> Config:
    """``--tap`` and ``--tap-file`` over ``[tap]``; a recording file needs the tap on."""
    if not on and file is None:
        return config
    if file is not None:
        # absolute(), not resolve(): a symbolic link planted at the path must be refused, not
        # followed to wherever it points.
        file = file.absolute()
        if not file.parent.is_dir():
            raise ConfigError([f"--tap-file: no such folder: {file.parent}"])
        problem = tap_file_problem(file)
        if problem:
            raise ConfigError([f"--tap-file: {problem}"])
    tap = replace(config.tap, enabled=True, file=config.tap.file if file is None else file)
    return replace(config, tap=tap)


def port_in_use(config: Config) -> str | None:
    """Why a port of ``config`` cannot be listened on, checked before anything starts (so the
    answer comes at once, not after token requests wind down); None when all are free."""
    host = config.server.host
    ports = [(config.server.port, "choose another with --port (or server.port)")]
    ports += [(r.port, f"change routes[{i}].port") for i, r in enumerate(config.routes) if r.port]
    for port, remedy in ports:
        if port != 0 and _taken(host, port):
            return (
                f"port {port} on {host} is already in use (another program, or another "
                f"ppproxy): {remedy}"
            )
    return None


def _taken(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because something listens there (every address
    the host name resolves to, with SO_REUSEADDR on POSIX as aiohttp binds). Any other
    problem is left to the real listener to report."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    in_use = (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1))
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno in in_use:
                    return True
    return False


def serve(
    config: Config,
    *,
    on_ready: Callable[[str], Awaitable[None]] | None = None,
    log_level: str = "info",
    source: ConfigSource | None = None,
) -> int:
    """Run the proxy until SIGINT or SIGTERM; the exit code."""
    problem = exposure_problem(config)
    if problem is not None:
        print(f"ppproxy: {problem}", file=sys.stderr)
        return 2
    busy = port_in_use(config)
    if busy is not None:
        print(f"ppproxy serve: {busy}", file=sys.stderr)
        return 1
    warning = anonymous_warning(config)
    if warning is not None:
        log.warning("server.anonymous_remote", warning=f"WARNING: {warning}")
    try:
        prepare_serve(config, sys.stderr)
    except TlsError as e:
        print(f"ppproxy: server.tls: {e}", file=sys.stderr)
        return 2

    async def ready(address: str) -> None:
        banner.ready(config, address)
        if on_ready is not None:
            await on_ready(address)

    try:
        if config.server.workers > 1:
            if config.server.port == 0 or any(r.port == 0 for r in config.routes):
                print("ppproxy: server.workers > 1 needs fixed ports, not 0", file=sys.stderr)
                return 2
            if workers.supported():
                return workers.serve(config, log_level, config.server.workers, source)
            log.warning(
                "server.workers_unsupported",
                message="this platform cannot share a port between processes; one process serves",
            )
        reloader = None if source is None else lambda: source.load(os.environ)
        run_until_stopped(
            run(create_app(config), config.server, ready, reload=reloader),
            config.server.event_loop,
        )
    except KeyboardInterrupt:  # Windows delivers Ctrl+C this way
        pass
    except TlsError as e:  # the files changed since the configuration was checked
        print(f"ppproxy: server TLS: {e}", file=sys.stderr)
        return 2
    except TapFileError as e:  # planted since the configuration was checked
        print(f"ppproxy: tap.file: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        log.error(
            "server.bind_failed", host=config.server.host, port=config.server.port, error=e.strerror
        )
        return 1
    return 0
