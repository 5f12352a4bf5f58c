"""``ppproxy token``: an access token as ``az account get-access-token`` prints it, the token
alone (``--output raw``, for ``$(...)``), or its header and claims (``--decode``, unverified):
the quickest answer to "why does the API say 401/403"."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from .. import jwt_unverified
from ..config import Config, IdentityConfig
from ..identity import msal_provider
from ..presets import resource_to_scope
from ..tokens import Token, TokenError
from .base import Command, CommandError, add_config, load_config, pick_identity

_SHOWN_CLAIMS = ("aud", "iss", "appid", "azp", "idtyp", "upn", "tid", "oid", "roles", "scp")


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--route", help="the token of this route (its identity and scope)")
    which.add_argument("--scope", help="a token for this scope, e.g. https://x.com/.default")
    which.add_argument(
        "--resource",
        help="a token for this resource, as az has it (the scope is RESOURCE/.default), "
        "e.g. https://service.powerapps.com/",
    )
    parser.add_argument("--identity", help="the identity to use (default: the route's or the only)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument(
        "--output",
        choices=("json", "raw"),
        default="json",
        help="json: as az account get-access-token (default); raw: the token alone",
    )
    shape.add_argument(
        "--decode", action="store_true", help="print header and claims instead (not verified)"
    )


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = load_config(args.config, env)
    scope = resource_to_scope(args.resource) if args.resource else args.scope
    return asyncio.run(
        token_command(
            config, sys.stdout, sys.stderr, route=args.route, scope=scope,
            identity=args.identity, decode=args.decode, output=args.output,
        )
    )  # fmt: skip


COMMAND = Command(
    name="token",
    summary="print an access token (as az account get-access-token), or decode it",
    description="Get an access token for a route, a scope or a resource with the configured "
    "identity and print it as az account get-access-token does (accessToken, expiresOn, "
    "expires_on, tenant, tokenType); --output raw prints the token alone, --decode its header "
    "and claims (aud, roles, scp, exp in local time; not verified). Exit status 1 when Entra "
    "ID refuses, with its error and the portal step that fixes it.",
    examples=(
        "ppproxy token --route bap --decode",
        'curl -H "Authorization: Bearer $(ppproxy token --route bap --output raw)" '
        "'https://api.bap.microsoft.com/...'",
        "ppproxy token --resource https://service.powerapps.com/",
    ),
    arguments=_arguments,
    run=_run,
)


def resolve_scope(
    config: Config, *, route: str | None, scope: str | None, identity: str | None
) -> tuple[IdentityConfig, str]:
    """The identity and scope for ``token``: a route's, or the given scope."""
    if route is not None:
        match = next((r for r in config.routes if r.name == route), None)
        if match is None:
            names = ", ".join(r.name for r in config.routes)
            raise CommandError(f"--route: no route named {route!r} (routes: {names})")
        return pick_identity(config, identity or match.identity), match.scope
    assert scope is not None
    return pick_identity(config, identity), scope


async def token_command(
    config: Config,
    out: TextIO,
    err: TextIO,
    *,
    route: str | None,
    scope: str | None,
    identity: str | None,
    decode: bool = False,
    output: str = "json",
) -> int:
    """Print a token (or its decoded header and claims); 0 on success, 1 when refused."""
    chosen, wanted = resolve_scope(config, route=route, scope=scope, identity=identity)
    provider = msal_provider(chosen, config.outbound)
    try:
        token = await provider.token(wanted)
    except TokenError as e:
        print_token_error("token", e, err)
        return 1
    finally:
        await provider.close()
    if decode:
        out.write(describe_token(token.value))
    elif output == "raw":
        out.write(token.value + "\n")
    else:
        json.dump(_az_shape(token, chosen), out, indent=2)
        out.write("\n")
    return 0


def print_token_error(command: str, error: TokenError, err: TextIO) -> None:
    """Entra's error on one line, and the portal step that fixes it when one is known."""
    print(f"ppproxy {command}: {error.error}: {error.summary}", file=err)
    if error.hint:
        print(f"  fix: {error.hint}", file=err)


def _az_shape(token: Token, identity: IdentityConfig) -> dict[str, Any]:
    expires = dt.datetime.fromtimestamp(token.expires_wall).astimezone()
    return {
        "accessToken": token.value,
        "expiresOn": expires.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "expires_on": int(token.expires_wall),
        "tenant": identity.tenant_id,
        "tokenType": "Bearer",
    }


def describe_token(token: str) -> str:
    """Header and the claims that explain a 401/403, one per line; times in local time."""
    try:
        header, claims = jwt_unverified.decode(token)
    except ValueError as e:  # Entra's tokens for some audiences are opaque: say so
        return f"(the token cannot be decoded: {e})\n"
    lines = ["header:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in header.items()]
    lines.append("claims (not verified):")
    lines += [f"  {k}: {json.dumps(claims[k])}" for k in _SHOWN_CLAIMS if k in claims]
    for key in ("nbf", "exp"):
        if isinstance(claims.get(key), int | float):
            local = dt.datetime.fromtimestamp(claims[key]).astimezone()
            lines.append(f"  {key}: {local.isoformat(timespec='seconds')}")
    return "\n".join(lines) + "\n"
