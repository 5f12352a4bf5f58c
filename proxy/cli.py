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
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import structlog
from aiohttp import web

from . import __version__, observe
from .app import create_app
from .config import Config, from_dict, load
from .errors import ConfigError
from .identity import MsalProvider
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
    check = sub.add_parser("check", parents=[common], help="get a token for every route")
    check.add_argument("--config", type=Path, help=config_help)
    demo = sub.add_parser(
        "demo", parents=[common], help="run a local identity provider, upstream and proxy"
    )
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default: 8080)")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    observe.configure(args.log_level)
    if args.command == "demo":
        return _demo(args.port)
    try:
        config = _load(args.config, env)
        if args.command == "serve":
            config = _override(config, host=args.host, port=args.port)
    except ConfigError as e:
        print(f"ppproxy: {e.render()}", file=sys.stderr)
        return 2
    if args.command == "check":
        return asyncio.run(check(config, sys.stdout))
    return serve(config)


def _load(path: Path | None, env: Mapping[str, str]) -> Config:
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = Path(DEFAULT_CONFIG)
    if path is None:
        return from_dict({}, env, base_dir=Path.cwd())
    return load(path, env)


def _override(config: Config, *, host: str | None, port: int | None) -> Config:
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError([f"--port: must be between 0 and 65535, got {port}"])
    server = replace(
        config.server,
        host=config.server.host if host is None else host,
        port=config.server.port if port is None else port,
    )
    return replace(config, server=server)


def serve(config: Config, *, on_ready: Callable[[str], Awaitable[None]] | None = None) -> int:
    """Run the proxy until SIGINT or SIGTERM; the exit code."""
    try:
        asyncio.run(run(create_app(config), config.server.host, config.server.port, on_ready))
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
    host: str,
    port: int,
    on_ready: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Serve ``app`` on host:port until a stop signal."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        address = _address(runner.addresses[0])
        log.info("server.listening", address=address)
        if on_ready is not None:
            await on_ready(address)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows: there Ctrl+C arrives as KeyboardInterrupt instead.
            with contextlib.suppress(NotImplementedError, AttributeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("server.stopping")
    finally:
        await runner.cleanup()


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


def _demo(port: int) -> int:
    try:
        from . import testing
    except ImportError:
        print(
            "ppproxy demo needs the testing extra: pip install 'ppproxy[testing]'", file=sys.stderr
        )
        return 2
    return asyncio.run(_run_demo(testing, port))


async def _run_demo(testing: Any, port: int) -> int:
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
                },
                {},
                base_dir=Path(tmp),
            )

            async def ready(address: str) -> None:
                print(
                    f"\nppproxy demo is running: identity provider {idp.authority_host}, "
                    f"echo upstream {echo.url}, proxy {address}.\n"
                    "In another terminal, ask the echo upstream what it received:\n\n"
                    f"    curl -s {address}/demo/hello?name=world\n\n"
                    "The answer shows the Authorization header the proxy added and the token's "
                    "claims. Press Ctrl+C to stop.\n",
                    flush=True,
                )

            try:
                await run(create_app(config), "127.0.0.1", port, ready)
            except OSError as e:
                print(f"ppproxy demo: cannot listen on port {port}: {e.strerror}", file=sys.stderr)
                return 1
    return 0
