"""Command line: arguments -> configuration -> logging -> run. ``main`` returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import structlog

from . import __version__, ca_command, commands, demo, observe, workers
from .access import anonymous_warning, exposure_problem, new_key
from .app import create_app
from .config import Config, from_dict, load
from .errors import ConfigError
from .identity import msal_provider, warn_about_literal_secrets
from .server import run, run_until_stopped
from .tls import TlsError
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
    commands.add_commands(sub, common, config_help)
    ca_command.add_parser(sub, config_help)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    if args.command == "keygen":
        return keygen(sys.stdout, sys.stderr)
    if args.command == "ca":
        return ca_command.run(args, _config_path(args.config), env, sys.stdout, sys.stderr)
    observe.configure(args.log_level)
    if args.command == "demo":
        return demo.main(args.port, tap=args.tap)
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
        return commands.run(args, config, sys.stdout, sys.stderr)
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


def _config_path(path: Path | None) -> Path | None:
    """``--config``, else ./proxy.toml when it exists, else None (the environment)."""
    if path is None and Path(DEFAULT_CONFIG).is_file():
        return Path(DEFAULT_CONFIG)
    return path


def _load(path: Path | None, env: Mapping[str, str]) -> Config:
    path = _config_path(path)
    if path is None:
        return from_dict({}, env, base_dir=Path.cwd())
    config = load(path, env)
    tls = config.server.tls
    warn_about_literal_secrets(path, config.identities, tls.literal_secrets if tls else ())
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
    problem = exposure_problem(config)
    if problem is not None:
        print(f"ppproxy: {problem}", file=sys.stderr)
        return 2
    warning = anonymous_warning(config)
    if warning is not None:
        log.warning("server.anonymous_remote", warning=f"WARNING: {warning}")
    try:
        ca_command.prepare_serve(config, sys.stderr)
    except TlsError as e:
        print(f"ppproxy: server.tls: {e}", file=sys.stderr)
        return 2
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
            run(create_app(config), config.server, on_ready, reload=reloader),
            config.server.event_loop,
        )
    except KeyboardInterrupt:  # Windows delivers Ctrl+C this way
        pass
    except TlsError as e:  # the files changed since the configuration was checked
        print(f"ppproxy: server TLS: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        log.error(
            "server.bind_failed", host=config.server.host, port=config.server.port, error=e.strerror
        )
        return 1
    return 0


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


async def check(config: Config, out: TextIO) -> int:
    """Get a token for every route and print a table; 0 only when all succeed."""
    providers = {n: msal_provider(i, config.outbound) for n, i in config.identities.items()}
    pairs = sorted({(r.identity, r.scope) for r in config.routes})

    async def one(identity: str, scope: str) -> str:
        try:
            token = await asyncio.wait_for(
                providers[identity].token(scope), config.outbound.connect_timeout * 3
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
            await provider.close()
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
