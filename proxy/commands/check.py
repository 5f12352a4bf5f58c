"""``ppproxy check``: a token for every route, printed as a table; each certificate's
thumbprints (what the portal shows); and, for every refusal, the portal step that fixes it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import TextIO

from ..columns import columns
from ..config import Config, IdentityConfig
from ..credential_files import CredentialError, load_certificate
from ..identity import msal_provider
from ..tokens import TokenError
from .base import Command, add_config, load_config


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return asyncio.run(check(load_config(args.config, env), sys.stdout))


COMMAND = Command(
    name="check",
    summary="get a token for every route and print a table; exit status 0 when all succeed",
    description="Get a token for every route with its identity and print a table (route, "
    "upstream, scope, identity, token expiry or Entra's error), then the portal step that "
    "fixes each error and the SHA-1 and SHA-256 thumbprints of every certificate, as the app "
    "registration's Certificates & secrets page shows them. Exit status 0 only when every "
    "token was issued.",
    examples=("ppproxy check", "ppproxy check --config /etc/ppproxy/proxy.toml"),
    arguments=_arguments,
    run=_run,
)


_ON_BEHALF_OF = "ok, per member (act_as = user): obtained when a member calls"


async def check(config: Config, out: TextIO) -> int:
    """Get a token for every route and print a table; 0 only when all succeed."""
    providers = {n: msal_provider(i, config.outbound) for n, i in config.identities.items()}
    # Routes that act as the member get a token per member, by on-behalf-of: nothing to get here.
    pairs = sorted({(r.identity, r.scope) for r in config.routes if r.act_as != "user"})
    hints: dict[str, str] = {}
    # MSAL's own timeouts (a connect and a read, for the metadata and for the token) come
    # first and say which one; this only bounds what they do not cover.
    outbound = config.outbound
    deadline = 2 * (outbound.connect_timeout + outbound.read_timeout)

    async def one(identity: str, scope: str) -> str:
        try:
            token = await asyncio.wait_for(providers[identity].token(scope), deadline)
        except TokenError as e:
            if e.hint:
                hints.setdefault(e.hint, identity)
            return f"ERROR {e.error}: {e.summary}"
        except TimeoutError:
            host = config.identities[identity].authority_host
            return (
                f"ERROR timeout: no token from {host} within {deadline:g} s "
                "(outbound.connect_timeout, outbound.read_timeout)"
            )
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
        if r.act_as != "user"
        else (r.name, r.upstream, r.scope, r.identity, _ON_BEHALF_OF)
        for r in config.routes
    ]
    print(*columns(rows), sep="\n", file=out)
    for hint, identity in hints.items():
        print(f"\nfix ({identity}): {hint}", file=out)
    certificates = [_certificate_row(i) for i in config.identities.values() if i.certificate_path]
    if certificates:
        print(
            "\nCertificates (the app registration's Certificates & secrets shows these):", file=out
        )
        heading = ("IDENTITY", "SHA-1 THUMBPRINT", "SHA-256", "EXPIRES")
        print(*columns([heading, *certificates]), sep="\n", file=out)
    return 0 if all(v.startswith("ok") for v in results.values()) else 1


def _certificate_row(identity: IdentityConfig) -> tuple[str, str, str, str]:
    assert identity.certificate_path is not None
    try:
        cert = load_certificate(identity.certificate_path, identity.read_certificate_password())
    except CredentialError as e:
        return (identity.name, "-", "-", f"cannot read: {e}")
    expires = cert.not_after.date().isoformat() if cert.not_after else "?"
    return (identity.name, cert.sha1_thumbprint, cert.sha256_thumbprint, expires)
