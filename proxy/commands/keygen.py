"""``ppproxy keygen``: a new client key for ``[access]`` and the block to paste."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TextIO

from ..access import new_key
from ..config.parse import NAME
from .base import Command, CommandError


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", default="client", help="the client's name in the block (default: client)"
    )


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if not NAME.match(args.name):
        raise CommandError("--name must be letters, digits, '_', '.' or '-'")
    return keygen(sys.stdout, sys.stderr, name=args.name)


COMMAND = Command(
    name="keygen",
    summary="print a new client key and the [[access.clients]] block to paste",
    description="Make a new random client key for a team gateway ([access]): print the key, "
    "which goes to the client and is shown only now, and a paste-ready [[access.clients]] "
    "block with its key_sha256, which goes into the configuration (the key itself is never "
    "stored).",
    examples=("ppproxy keygen --name ci-pipeline",),
    arguments=_arguments,
    run=_run,
    logs=False,
)


def keygen(out: TextIO, err: TextIO, *, name: str = "client") -> int:
    """Print a new client key and its [[access.clients]] block; the key is kept nowhere."""
    key, digest = new_key()
    print(f"key: {key}", file=out)
    print(f"key_sha256: {digest}", file=out)
    print(
        f"""
[[access.clients]]
name = "{name}"                  # in every log event of its requests
key_sha256 = "{digest}"
# routes = ["bap"]                 # the routes it may use (default: all)
# methods = ["GET", "HEAD"]        # the methods it may send (default: all)
# admin = false                    # true: may open the debugging tap""",
        file=out,
    )
    print(
        "Give the key to the client (X-Api-Key, Authorization: Bearer, or the Basic password) "
        "and paste the [[access.clients]] block into the configuration. The key is not shown "
        "again.",
        file=err,
    )
    return 0
