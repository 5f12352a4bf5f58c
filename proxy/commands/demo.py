"""``ppproxy demo``: the self-contained demo (:mod:`proxy.demo`), which needs the testing
extra."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from .. import demo
from .base import Command


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="proxy port (default: 8080)")
    parser.add_argument("--tap", action="store_true", help="turn the debugging tap on")
    parser.add_argument(
        "--flow",
        choices=demo.FLOWS,
        default="secret",
        help="how the proxy signs in to the local identity provider (default: secret)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="PATH",
        help="write the CA, credential files and configuration here and keep them "
        "(default: a temporary folder, removed at the end)",
    )


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return demo.main(args.port, tap=args.tap, flow=args.flow, folder=args.dir)


COMMAND = Command(
    name="demo",
    summary="run a local identity provider, an echo upstream and the proxy (no tenant needed)",
    description="Start a local HTTPS identity provider with the credentials of one sign-in "
    "flow, an echo upstream and the proxy in front of them; write the CA, the credential files "
    "and a ready configuration, and print a curl command whose answer shows the token the "
    "proxy added. Needs the testing extra: pip install 'ppproxy[testing]'.",
    examples=("ppproxy demo", "ppproxy demo --flow certificate --dir demo --tap"),
    arguments=_arguments,
    run=_run,
)
