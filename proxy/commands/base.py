"""What every command shares: its description (:class:`Command`), the usage error, and finding
and loading the configuration."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, IdentityConfig, from_dict, load
from ..identity import warn_about_literal_secrets

DEFAULT_CONFIG = "proxy.toml"
# A tenant or client id as the portal shows it (the ids a command takes, checked before use).
GUID = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
CONFIG_HELP = f"TOML configuration (default: ./{DEFAULT_CONFIG} if present, else AZURE_* variables)"
# azure-identity's variables that select an identity without a configuration file.
_AZURE_VARS = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_FEDERATED_TOKEN_FILE",
)


class CommandError(Exception):
    """A usage or configuration problem: the message is for the user, exit status 2."""


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: what ``ppproxy`` lists, what ``--help`` says, and how it runs."""

    name: str
    summary: str  # one line in the command list
    description: str  # the paragraph of its --help
    examples: tuple[str, ...]  # command lines shown under "examples" in --help
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Mapping[str, str]], int]
    logs: bool = True  # takes --log-level and configures logging before running


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)


def load_config(path: Path | None, env: Mapping[str, str]) -> Config:
    """The configuration from ``path``, else ``./proxy.toml``, else azure-identity's variables;
    CommandError saying how to get one when there is none of these."""
    path = config_path(path)
    if path is None:
        if not any(env.get(name) for name in _AZURE_VARS):
            raise CommandError(
                f"no configuration: no --config, no ./{DEFAULT_CONFIG} and no AZURE_* "
                "variables.\n  Write a starter one with `ppproxy init` (then `ppproxy check`), "
                "give --config PATH, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                "AZURE_CLIENT_SECRET."
            )
        return from_dict({}, env, base_dir=Path.cwd())
    config = load(path, env)
    tls = config.server.tls
    warn_about_literal_secrets(path, config.identities, tls.literal_secrets if tls else ())
    return config


def config_path(path: Path | None) -> Path | None:
    """``--config``, else ./proxy.toml when it exists, else None (no file)."""
    if path is None and Path(DEFAULT_CONFIG).is_file():
        return Path(DEFAULT_CONFIG)
    return path


def pick_identity(config: Config, name: str | None) -> IdentityConfig:
    """The identity called ``name``, or the only one."""
    if name is not None:
        if name not in config.identities:
            known = ", ".join(config.identities)
            raise CommandError(f"--identity: no identity named {name!r} (identities: {known})")
        return config.identities[name]
    if len(config.identities) != 1:
        raise CommandError(f"--identity is required: there are {len(config.identities)} identities")
    return next(iter(config.identities.values()))
