"""Command line: arguments -> configuration -> logging -> run. ``main`` returns an exit code.

Every subcommand is a :class:`~proxy.commands.base.Command` in its own module under
``proxy/commands``; ``COMMANDS`` lists them in the order ``ppproxy`` shows them. A new command
is one module and one entry here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from . import __version__, observe
from .commands import ca, check, demo, init, keygen, register_app, replay, serve, token
from .commands.base import Command, CommandError
from .errors import ConfigError

COMMANDS: tuple[Command, ...] = (
    init.COMMAND,
    serve.COMMAND,
    check.COMMAND,
    token.COMMAND,
    register_app.COMMAND,
    keygen.COMMAND,
    demo.COMMAND,
    replay.COMMAND,
    ca.COMMAND,
)
_DESCRIPTION = "Authenticating reverse proxy for the Microsoft Power Platform APIs."


def _parser() -> argparse.ArgumentParser:
    logging = argparse.ArgumentParser(add_help=False)
    logging.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    parser = argparse.ArgumentParser(
        prog="ppproxy",
        description=_DESCRIPTION,
        epilog="Run `ppproxy COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"ppproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        examples = "\n".join(f"  {line}" for line in command.examples)
        one = sub.add_parser(
            command.name,
            parents=[logging] if command.logs else [],
            help=command.summary,
            description=command.description,
            epilog=f"examples:\n{examples}",
            formatter_class=_Formatter,
        )
        command.arguments(one)
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The description wrapped to the terminal, the examples kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def command_list() -> str:
    """What bare ``ppproxy`` prints: every command with its one line."""
    width = max(len(c.name) for c in COMMANDS)
    lines = [f"ppproxy {__version__}: {_DESCRIPTION}", "", "Commands:"]
    lines += [f"  {c.name.ljust(width)}  {c.summary}" for c in COMMANDS]
    lines += [
        "",
        "Start with `ppproxy init` (or `ppproxy demo` to try it without a tenant).",
        "Run `ppproxy COMMAND --help` for a command's options and examples.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.stdout.write(command_list())
        return 0
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    command = next(c for c in COMMANDS if c.name == args.command)
    if command.logs:
        observe.configure(args.log_level)
    try:
        return command.run(args, env)
    except ConfigError as e:
        print(f"ppproxy: {e.render()}", file=sys.stderr)
        return 2
    except CommandError as e:
        print(f"ppproxy {command.name}: {e}", file=sys.stderr)
        return 2
