"""Command line: arguments -> configuration -> logging -> run. ``main`` returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import structlog
from aiohttp import web

from . import __version__, admin, guard, observe, workers
from .access import new_key
from .app import CONFIG, STATE, create_app
from .app import reload as reload_app
from .config import Config, ServerConfig, from_dict, load
from .errors import ConfigError
from .identity import MsalProvider, warn_about_literal_secrets
from .tokens import TokenError

log = structlog.get_logger("proxy")
DEFAULT_CONFIG = "proxy.toml"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    parser = argparse.ArgumentParser(
        prog="ppproxy",
        description="Authenticating reverse proxy for the Microsoft Power Platform APIs.",
    )
    parser.add_argument("--version", action="version", version=f"ppproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = f"TOML configuration (default: ./{DEFAULT_CONFIG} if present, else environment)"
    serve = sub.add_parser("serve", parents=[common], help="run the proxy")
    serve.add_argument("--config", type=Path, help=config_help)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--tap", action="store_true", help="turn the debugging tap on (page at /_proxy/tap)"
    )
    serve.add_argument(
        "--tap-file",
        type=Path,
        metavar="PATH",
        help="record every exchange as JSON lines (implies --tap)",
    )
    check = sub.add_parser("check", parents=[common], help="get a token for every route")
    check.add_argument("--config", type=Path, help=config_help)
    demo = sub.add_parser(
        "demo", parents=[common], help="run a local identity provider, upstream and proxy"
    )
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default: 8080)")
    demo.add_argument("--tap", action="store_true", help="turn the debugging tap on")
    sub.add_parser("keygen", help="print a new client key and its key_sha256 for [access]")
    admin.add_commands(sub, common, config_help)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    if args.command == "keygen":
        return keygen(sys.stdout, sys.stderr)
    observe.configure(args.log_level)
    if args.command == "demo":
        return _demo(args.port, tap=args.tap)
    source = ConfigSource(
        args.config,
        getattr(args, "host", None),
        getattr(args, "port", None),
        getattr(args, "tap", False),
        getattr(args, "tap_file", None),
    )
    try:
        config = source.load(env) if args.command == "serve" else _load(args.config, env)
    except ConfigError as e:
        print(f"ppproxy: {e.render()}", file=sys.stderr)
        return 2
    if args.command == "check":
        return asyncio.run(check(config, sys.stdout))
    if args.command in ("token", "register-app"):
        return admin.run(args, config, sys.stdout, sys.stderr)
    return serve(config, log_level=args.log_level, source=source)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where `serve`'s configuration comes from: read again on SIGHUP (also by workers)."""

    path: Path | None
    host: str | None = None
    port: int | None = None
    tap: bool = False
    tap_file: Path | None = None

    def load(self, env: Mapping[str, str]) -> Config:
        config = _load(self.path, env)
        config = _override(config, host=self.host, port=self.port)
        return _with_tap(config, on=self.tap, file=self.tap_file)


def _load(path: Path | None, env: Mapping[str, str]) -> Config:
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = Path(DEFAULT_CONFIG)
    if path is None:
        return from_dict({}, env, base_dir=Path.cwd())
    config = load(path, env)
    warn_about_literal_secrets(path, config.identities)
    return config


def _override(config: Config, *, host: str | None, port: int | None) -> Config:
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError([f"--port: must be between 0 and 65535, got {port}"])
    server = replace(
        config.server,
        host=config.server.host if host is None else host,
        port=config.server.port if port is None else port,
    )
    return replace(config, server=server)


def _with_tap(config: Config, *, on: bool, file: Path | None) -> Config:
    """``--tap`` and ``--tap-file`` over ``[tap]``; a recording file needs the tap on."""
    if not on and file is None:
        return config
    if file is not None and not file.resolve().parent.is_dir():
        raise ConfigError([f"--tap-file: no such folder: {file.resolve().parent}"])
    tap = replace(
        config.tap, enabled=True, file=config.tap.file if file is None else file.resolve()
    )
    return replace(config, tap=tap)


def serve(
    config: Config,
    *,
    on_ready: Callable[[str], Awaitable[None]] | None = None,
    log_level: str = "info",
    source: ConfigSource | None = None,
) -> int:
    """Run the proxy until SIGINT or SIGTERM; the exit code."""
    problem = guard.exposure_problem(config)
    if problem is not None:
        print(f"ppproxy: {problem}", file=sys.stderr)
        return 2
    warning = guard.anonymous_warning(config)
    if warning is not None:
        log.warning("server.anonymous_remote", warning=f"WARNING: {warning}")
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
        asyncio.run(run(create_app(config), config.server, on_ready, reload=reloader))
    except KeyboardInterrupt:  # Windows delivers Ctrl+C this way
        pass
    except OSError as e:
        log.error(
            "server.bind_failed", host=config.server.host, port=config.server.port, error=e.strerror
        )
        return 1
    return 0


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
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=server.shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port or None)
        await site.start()
        address = _address(runner.addresses[0])
        log.info("server.listening", address=address)
        for route in app[CONFIG].routes:
            if route.port is not None:  # the route's own listener: no prefix needed there
                await web.TCPSite(
                    runner, server.host, route.port, reuse_port=reuse_port or None
                ).start()
                log.info(
                    "server.listening",
                    address=_address((server.host, route.port)),
                    route=route.name,
                )
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
        app[STATE].draining = True
        log.info("server.draining", drain_delay=server.drain_delay)
        await asyncio.sleep(server.drain_delay)
        log.info("server.stopping", shutdown_timeout=server.shutdown_timeout)
    finally:
        await runner.cleanup()
        log.info("server.stopped")


def keygen(out: TextIO, err: TextIO) -> int:
    """Print a new client key and its key_sha256; the key is not kept anywhere."""
    key, digest = new_key()
    print(f"key: {key}", file=out)
    print(f"key_sha256: {digest}", file=out)
    print(
        "Give the key to the client (X-Api-Key, Authorization: Bearer, or the Basic password) "
        "and put key_sha256 into its [[access.clients]] table. The key is not shown again.",
        file=err,
    )
    return 0


async def _reload(app: web.Application, load_config: Callable[[], Config]) -> None:
    """SIGHUP: read the configuration again; a bad one is rejected and the old one serves on."""
    log.info("config.reloading")
    try:
        new = load_config()
    except ConfigError as e:
        log.error("config.reload_rejected", problems=list(e.problems))
        return
    refused = await reload_app(app, new)
    if refused:
        log.error("config.reload_rejected", problems=refused)
    else:
        log.info("config.reloaded", routes=[r.name for r in new.routes])


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def check(config: Config, out: TextIO) -> int:
    """Get a token for every route and print a table; 0 only when all succeed."""
    providers = {n: MsalProvider(i, config.outbound) for n, i in config.identities.items()}
    pairs = sorted({(r.identity, r.scope) for r in config.routes})

    async def one(identity: str, scope: str) -> str:
        try:
            token = await asyncio.wait_for(
                providers[identity].get(scope), config.outbound.connect_timeout * 3
            )
        except TokenError as e:
            return f"ERROR {e.error}: {e.description.splitlines()[0] if e.description else ''}"
        except TimeoutError:
            return "ERROR timeout: no answer from the identity provider"
        return f"ok, expires in {round(token.lifetime)} s"

    try:
        results = dict(
            zip(pairs, await asyncio.gather(*(one(i, s) for i, s in pairs)), strict=True)
        )
    finally:
        for provider in providers.values():
            provider.close()
    rows = [("ROUTE", "UPSTREAM", "SCOPE", "IDENTITY", "TOKEN")]
    rows += [
        (r.name, r.upstream, r.scope, r.identity, results[(r.identity, r.scope)])
        for r in config.routes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4],
            file=out,
        )
    return 0 if all(v.startswith("ok") for v in results.values()) else 1


def _demo(port: int, *, tap: bool = False) -> int:
    try:
        from . import testing
    except ImportError:
        print(
            "ppproxy demo needs the testing extra: pip install 'ppproxy[testing]'", file=sys.stderr
        )
        return 2
    return asyncio.run(_run_demo(testing, port, tap))


async def _run_demo(testing: Any, port: int, tap: bool = False) -> int:
    ca = testing.LocalCA()
    with tempfile.TemporaryDirectory(prefix="ppproxy-demo-") as tmp:
        ca_file = ca.write_ca_file(Path(tmp) / "demo-ca.pem")
        idp = testing.IdentityProvider(ca, clients={"demo-client": "demo-secret"})
        echo = testing.EchoUpstream(ssl_context=ca.server_context())
        async with idp, echo:
            config = from_dict(
                {
                    "server": {"port": port},
                    "outbound": {"ca_file": str(ca_file)},
                    "identities": {
                        "demo": {
                            "tenant_id": idp.tenant,
                            "client_id": "demo-client",
                            "client_secret": "demo-secret",
                            "authority_host": idp.authority_host,
                        }
                    },
                    "routes": [{"name": "demo", "prefix": "/demo", "upstream": echo.url}],
                    "tap": {"enabled": tap},
                },
                {},
                base_dir=Path(tmp),
            )

            async def ready(address: str) -> None:
                watch = (
                    f"Watch the exchange in the debugging tap: open {address}/_proxy/tap "
                    "in a browser.\n"
                    if tap
                    else ""
                )
                print(
                    f"\nppproxy demo is running: identity provider {idp.authority_host}, "
                    f"echo upstream {echo.url}, proxy {address}.\n"
                    "In another terminal, ask the echo upstream what it received:\n\n"
                    f"    curl -s {address}/demo/hello?name=world\n\n"
                    "The answer shows the Authorization header the proxy added and the token's "
                    f"claims.\n{watch}Press Ctrl+C to stop.\n",
                    flush=True,
                )

            try:
                await run(create_app(config), config.server, ready)
            except OSError as e:
                print(f"ppproxy demo: cannot listen on port {port}: {e.strerror}", file=sys.stderr)
                return 1
    return 0
