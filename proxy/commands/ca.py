"""``ppproxy ca``: the local CA behind ``tls = "local"`` — where it is, how to trust it on Linux,
macOS and Windows, and how to remove it again (the way mkcert does it).

The proxy never changes a system trust store itself: that needs an administrator, and the
commands differ by system. It prints them instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import structlog

from .. import localca
from ..config import Config, ConfigError, load_state_dir
from ..config.server import LOCAL_TLS_FOLDER
from ..peers import is_loopback
from ..tls import prepare_local
from .base import CONFIG_HELP, Command, config_path

log = structlog.get_logger("proxy")

# What the CA is called in the Linux stores and in NSS (Firefox, Chrome on Linux).
FILE_NAME = "ppproxy-local-ca"
NICKNAME = "ppproxy local CA"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help=CONFIG_HELP + "; only server.state_dir is read"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--path", action="store_true", help="print only the CA certificate's path (for --cacert)"
    )
    what.add_argument(
        "--uninstall",
        action="store_true",
        help="print how to remove the CA from the trust stores, then delete its files",
    )


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return run(args, config_path(args.config), env, sys.stdout, sys.stderr)


def run(
    args: argparse.Namespace, config: Path | None, env: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    """Run ``ppproxy ca`` with the configuration file ``config`` (None: the default folder)."""
    try:
        state_dir = load_state_dir(config, env)
    except ConfigError as e:
        print(f"ppproxy: {e.render()}", file=err)
        return 2
    if state_dir is None:
        print("ppproxy: no home folder is known: set server.state_dir", file=err)
        return 2
    folder = state_dir / LOCAL_TLS_FOLDER
    if args.uninstall:
        return uninstall(folder, out)
    try:
        outcome = localca.ensure(folder)
    except localca.LocalCAError as e:
        print(f"ppproxy: {e}", file=err)
        return 1
    if outcome.ca_expiring() and outcome.ca_not_after is not None:
        when = outcome.ca_not_after.date().isoformat()
        print(f"ppproxy: the local CA expires on {when}: {localca.RENEW_CA}", file=err)
    if args.path:
        print(outcome.ca_cert, file=out)
        return 0
    print(trust_instructions(outcome.ca_cert), file=out)
    return 0


COMMAND = Command(
    name="ca",
    summary='the local CA of tls = "local": where it is and how to trust it',
    description='Make the local CA (once) that tls = "local" uses, and print how to trust it on '
    "Linux, macOS and Windows, or how to remove it again.",
    examples=(
        "ppproxy ca",
        'curl --cacert "$(ppproxy ca --path)" https://localhost:8443/_proxy/livez',
        "ppproxy ca --uninstall",
    ),
    arguments=_arguments,
    run=_run,
    logs=False,
)


def prepare_serve(config: Config, err: TextIO) -> None:
    """Before `serve` binds (and before any worker starts): for ``tls = "local"`` make the CA
    and the certificate, and say how to trust a new CA. Raises TlsError."""
    tls = config.server.tls
    if tls is None or tls.local_dir is None:
        return
    outcome = prepare_local(tls)
    if outcome is not None and outcome.created_ca:
        print(trust_instructions(outcome.ca_cert), file=err)
    if not is_loopback(config.server.host):
        log.warning(
            "tls.local_not_for_remote",
            message='tls = "local" certifies localhost, 127.0.0.1 and ::1 only: clients on '
            "other machines will not accept it; give tls_cert and tls_key instead",
        )


def uninstall(folder: Path, out: TextIO) -> int:
    """Print the commands that remove the CA from the trust stores, then delete its files."""
    ca_cert = folder / localca.CA_CERT
    if not ca_cert.exists():
        print(f"No local CA in {folder}: nothing to remove.", file=out)
        return 0
    print(removal_instructions(ca_cert), file=out)
    for path in localca.remove(folder):
        print(f"removed {path}", file=out)
    return 0


def trust_instructions(ca_cert: Path) -> str:
    """How to trust the CA whose certificate is ``ca_cert``: system stores, browsers, tools."""
    p, w = _quoted(ca_cert), _cmd_quoted(ca_cert)
    return f"""\
ppproxy's local CA: {ca_cert}
SHA-1 {localca.thumbprint(ca_cert)}. It can vouch only for localhost, 127.0.0.1 and ::1.

Trust it once, on the machine where your tools run (sudo: the system-wide stores):

  Debian, Ubuntu: sudo cp {p} /usr/local/share/ca-certificates/{FILE_NAME}.crt \\
                    && sudo update-ca-certificates
  Fedora, RHEL:   sudo cp {p} /etc/pki/ca-trust/source/anchors/{FILE_NAME}.pem \\
                    && sudo update-ca-trust
  macOS:          sudo security add-trusted-cert -d -r trustRoot \\
                    -k /Library/Keychains/System.keychain {p}
  Windows:        certutil -user -addstore Root {w}
                  (your user's store; Windows asks you to confirm)
  Firefox, and Chrome on Linux (their own NSS store):
                  certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n '{NICKNAME}' -i {p}

Or give it to one tool, leaving the system alone:

  curl:           curl --cacert {p} https://localhost:8443/...
  Python requests (and Microsoft's Dataverse SDK for Python):
                  export REQUESTS_CA_BUNDLE={p}
  Node.js:        export NODE_EXTRA_CA_CERTS={p}

To remove it again: ppproxy ca --uninstall"""


def removal_instructions(ca_cert: Path) -> str:
    """How to take the CA out of every store :func:`trust_instructions` names."""
    thumbprint = localca.thumbprint(ca_cert)
    return f"""\
Remove ppproxy's local CA (SHA-1 {thumbprint}) from the stores you added it to:

  Debian, Ubuntu: sudo rm /usr/local/share/ca-certificates/{FILE_NAME}.crt \\
                    && sudo update-ca-certificates --fresh
  Fedora, RHEL:   sudo rm /etc/pki/ca-trust/source/anchors/{FILE_NAME}.pem \\
                    && sudo update-ca-trust
  macOS:          sudo security delete-certificate -Z {thumbprint} \\
                    /Library/Keychains/System.keychain
  Windows:        certutil -user -delstore Root {thumbprint}
  Firefox, Chrome on Linux:
                  certutil -d sql:$HOME/.pki/nssdb -D -n '{NICKNAME}'
"""


def _plain(text: str) -> bool:
    return all(c.isalnum() or c in "/._-:\\" for c in text)


def _quoted(path: Path) -> str:
    """``path`` for a POSIX shell command line: single-quoted when it needs quoting."""
    text = str(path)
    if _plain(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _cmd_quoted(path: Path) -> str:
    """``path`` for cmd.exe and PowerShell, which take double quotes, not single ones (a
    Windows path cannot hold a double quote itself)."""
    text = str(path)
    return text if _plain(text) else f'"{text}"'
