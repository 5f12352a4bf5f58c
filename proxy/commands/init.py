"""``ppproxy init``: write a commented starter configuration for one sign-in flow, then say
what to do next: the portal steps of that flow and the two commands (``check``, ``serve``)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from .base import DEFAULT_CONFIG, GUID, Command, CommandError
from .flows import FLOWS, Flow

_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path", type=Path, default=Path(DEFAULT_CONFIG), help="where to write (./proxy.toml)"
    )
    parser.add_argument("--tenant-id", metavar="ID", help="Directory (tenant) ID or domain")
    parser.add_argument("--client-id", metavar="ID", help="Application (client) ID")
    parser.add_argument(
        "--flow", choices=list(FLOWS), default="secret", help="how to sign in (default: secret)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return init(
        args.path, sys.stdout, flow=args.flow, tenant_id=args.tenant_id,
        client_id=args.client_id, force=args.force,
    )  # fmt: skip


COMMAND = Command(
    name="init",
    summary="write a commented starter proxy.toml for a sign-in flow and say what comes next",
    description="Write a commented starter configuration for one sign-in flow (client secret, "
    "certificate, username and password, or managed identity), with secrets read from the "
    "environment, then print the portal steps of that flow and the next two commands. An "
    "existing file is kept unless --force is given.",
    examples=(
        "ppproxy init --tenant-id contoso.onmicrosoft.com "
        "--client-id 00000000-0000-0000-0000-000000000000",
        "ppproxy init --flow certificate --path /etc/ppproxy/proxy.toml",
    ),
    arguments=_arguments,
    run=_run,
    logs=False,
)


def init(
    path: Path,
    out: TextIO,
    *,
    flow: str = "secret",
    tenant_id: str | None = None,
    client_id: str | None = None,
    force: bool = False,
) -> int:
    """Write the starter file at ``path`` and print the next steps; the exit code."""
    if tenant_id is not None and not (GUID.match(tenant_id) or _DOMAIN.match(tenant_id)):
        raise CommandError(f"--tenant-id must be a GUID or a domain name, got {tenant_id[:60]!r}")
    if client_id is not None and not GUID.match(client_id):
        raise CommandError(f"--client-id must be a GUID, got {client_id[:60]!r}")
    chosen = FLOWS[flow]
    text = render(flow, tenant_id=tenant_id, client_id=client_id)
    try:
        # "x" creates the file or fails, in one step: a file that appears meanwhile is kept too.
        with path.open("w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise CommandError(f"{path} exists: not overwritten (give --force to replace it)") from None
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None
    print(f"wrote {path} ({chosen.title})\n", file=out)
    print("In the Azure portal:", file=out)
    for n, step in enumerate(chosen.steps, 1):
        print(f"  {n}. {step}", file=out)
    print("\nThen:", file=out)
    for line in next_commands(chosen, path, tenant_id=tenant_id, client_id=client_id):
        print(f"  {line}", file=out)
    return 0


def next_commands(
    flow: Flow, path: Path, *, tenant_id: str | None, client_id: str | None
) -> list[str]:
    """The variables to set (in this shell's spelling) and the two commands."""
    variables = list(flow.variables)
    if flow.needs_app:
        if tenant_id is None:
            variables.insert(0, ("PP_TENANT_ID", "<Directory (tenant) ID>"))
        if client_id is None:
            variables.insert(1 if tenant_id is None else 0, ("PP_CLIENT_ID", "<Application ID>"))
    windows = os.name == "nt"
    lines = [
        f"$env:{name} = '{value}'" if windows else f"export {name}='{value}'"
        for name, value in variables
    ]
    given = "" if path == Path(DEFAULT_CONFIG) else f" --config {_quoted(str(path), windows)}"
    lines += [f"ppproxy check{given}", f"ppproxy serve{given}"]
    return lines


def _quoted(text: str, windows: bool) -> str:
    """``text`` as one word on a command line (PowerShell and cmd take double quotes)."""
    if re.fullmatch(r"[\w./:\\-]+", text):
        return text
    return f'"{text}"' if windows else shlex.quote(text)


def render(flow: str, *, tenant_id: str | None = None, client_id: str | None = None) -> str:
    """The starter configuration's text for ``flow``."""
    chosen = FLOWS[flow]
    app = ""
    if chosen.needs_app:
        tenant = tenant_id or "${PP_TENANT_ID}"
        client = client_id or "${PP_CLIENT_ID}"
        app = (
            f'tenant_id = "{tenant}"'.ljust(45)
            + f'# Directory (tenant) ID: the app\'s Overview\nclient_id = "{client}"'.ljust(45)
            + "# Application (client) ID: the app's Overview\n"
        )
    return f"""\
# ppproxy configuration: {chosen.title}.
# Written by `ppproxy init --flow {flow}`. Every key is explained in proxy.example.toml and in
# README's Configuration table. ${{NAME}} is read from the environment; relative paths are
# relative to this file.

[server]
host = "127.0.0.1"                           # loopback only: whoever reaches the port acts as
port = 8080                                  # the identity below, so keep it private

[outbound]
# proxy = "http://proxy.example:3128"        # an outbound HTTP proxy (else HTTPS_PROXY applies)
# ca_file = "corp-ca.pem"                    # trust only this CA bundle (a TLS-inspecting proxy)

[identities.default]
{app}{chosen.keys}
# cloud = "public"                           # public, gcc, gcc-high, dod or china

# Without [[routes]] the powerapps, bap, flow and powerplatform APIs are served under
# http://127.0.0.1:8080/powerapps, /bap, /flow and /powerplatform. A Dataverse environment:
# [[routes]]
# name = "dataverse"
# preset = "dataverse"
# upstream = "https://contoso.crm.dynamics.com/api/data/v9.2"
"""
