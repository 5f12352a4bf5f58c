"""``ppproxy replay``: serve the answers recorded in a HAR file (:mod:`proxy.replay`)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from pathlib import Path

from .. import replay
from ..browsers import allowed_hosts, allowed_origins
from ..config import ServerConfig
from ..replay.recorded import HarError
from .base import Command, CommandError


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--har",
        type=Path,
        required=True,
        metavar="FILE",
        help="the HAR file: the tap's export (/_proxy/tap.har) or one from a browser",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name to answer besides the loopback ones (repeatable), as "
        "server.allowed_hosts does for the proxy; other names get 403 host_not_allowed",
    )


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        entries = replay.load(args.har)
    except HarError as e:
        raise CommandError(str(e)) from None
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be 0 to 65535, got {args.port}")
    recordings = replay.Recordings(entries)
    names = tuple(n.strip() for n in args.allowed_host if n.strip())
    server = ServerConfig(host=args.host, allowed_hosts=names)

    async def ready(address: str) -> None:
        print(
            f"Replaying {len(entries)} recorded exchange(s) from {args.har} on {address}\n"
            "Unmatched requests get 404 not_recorded. Press Ctrl+C to stop.",
            flush=True,
        )

    try:
        asyncio.run(
            replay.serve(
                recordings,
                args.host,
                args.port,
                allowed_hosts(server),
                allowed_origins(server),
                ready,
            )
        )
    except OSError as e:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    return 0


COMMAND = Command(
    name="replay",
    summary="answer requests with the responses recorded in a HAR file (no tenant needed)",
    description="Serve the responses recorded in a HAR file (the tap's export, or one saved "
    "by a browser) for matching requests: same method, path and query, and for requests with "
    "a body the same body. Requests match at the address the client used through the proxy "
    "(the route's prefix included); repeated matches answer in turn, in the recorded order. "
    "An unmatched request gets 404 with the error not_recorded and the nearest recorded "
    "requests. Like the proxy, it answers only requests whose Host is a loopback name or one "
    "given with --allowed-host, and refuses requests from web pages of other sites; recorded "
    "Access-Control-* headers are not replayed. Needs no identity provider and no "
    "configuration: run legacy tools and tests without a tenant.",
    examples=(
        "curl -o session.har http://localhost:8080/_proxy/tap.har",
        "ppproxy replay --har session.har --port 8080",
    ),
    arguments=_arguments,
    run=_run,
)
