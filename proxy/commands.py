"""The commands that talk to Entra ID and Power Platform: ``ppproxy token`` and
``ppproxy register-app``.

``token`` prints an access token as ``az account get-access-token`` does, or with ``--decode``
its header and claims (unverified): the quickest answer to "why does the API say 401/403".
``register-app`` registers a service principal with Power Platform (BAP's adminApplications),
which needs an admin *user* token: the identity's username and password, or else the device
code flow.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any, TextIO

import msal  # type: ignore[import-untyped]  # msal ships no type information
import requests

from . import jwt_unverified, presets
from .config import Config, IdentityConfig
from .identity import NoHttpCache, NoStoreCache, PinnedSession, msal_provider
from .peers import is_loopback
from .tokens import Token, TokenError

ADMIN_APPLICATIONS = "/providers/Microsoft.BusinessAppPlatform/adminApplications"
API_VERSION = "2020-10-01"
# Microsoft's first-party public client "Microsoft Azure PowerShell", which the Power Apps
# administration module signs admins in with: it needs no app registration of your own.
DEVICE_CODE_CLIENT_ID = "1950a258-227b-4e31-a9cf-717495945fc2"
_SHOWN_CLAIMS = ("aud", "iss", "appid", "azp", "idtyp", "upn", "tid", "oid", "roles", "scp")


class CommandError(Exception):
    """A usage or configuration problem: the message is for the user, exit status 2."""


def pick_identity(config: Config, name: str | None) -> IdentityConfig:
    if name is not None:
        if name not in config.identities:
            raise CommandError(f"--identity: no identity named {name!r}")
        return config.identities[name]
    if len(config.identities) != 1:
        raise CommandError(f"--identity is required: there are {len(config.identities)} identities")
    return next(iter(config.identities.values()))


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


def run(args: argparse.Namespace, config: Config, out: TextIO, err: TextIO) -> int:
    """Run ``token`` or ``register-app`` from parsed arguments (see :func:`add_commands`)."""
    try:
        if args.command == "token":
            return asyncio.run(
                token_command(
                    config, out, err, route=args.route, scope=args.scope,
                    identity=args.identity, decode=args.decode,
                )
            )  # fmt: skip
        if not args.list and not args.client_id:
            raise CommandError("--client-id is required (or give --list)")
        return asyncio.run(
            register_app(
                config, out, err, client_id=args.client_id, identity=args.identity,
                list_only=args.list, bap_url=args.bap_url,
            )
        )  # fmt: skip
    except CommandError as e:
        print(f"ppproxy {args.command}: {e}", file=err)
        return 2


def add_commands(sub: Any, common: argparse.ArgumentParser, config_help: str) -> None:
    """Add the ``token`` and ``register-app`` subcommands to ``sub``."""
    token = sub.add_parser(
        "token", parents=[common], help="print an access token (as az account get-access-token)"
    )
    token.add_argument("--config", type=Path, help=config_help)
    which = token.add_mutually_exclusive_group(required=True)
    which.add_argument("--route", help="the token of this route (its identity and scope)")
    which.add_argument("--scope", help="a token for this scope, e.g. https://x.com/.default")
    token.add_argument("--identity", help="the identity to use (default: the route's or the only)")
    token.add_argument(
        "--decode", action="store_true", help="print header and claims instead (not verified)"
    )
    register = sub.add_parser(
        "register-app",
        parents=[common],
        help="register a service principal with Power Platform (needs an admin user)",
    )
    register.add_argument("--config", type=Path, help=config_help)
    register.add_argument("--client-id", help="the application (client) ID to register")
    register.add_argument("--identity", help="the identity to sign in with (default: the only)")
    register.add_argument("--list", action="store_true", help="list the registered applications")
    register.add_argument(
        "--bap-url",
        help="BAP API base URL (default: the identity's cloud, e.g. https://api.bap.microsoft.com)",
    )


async def token_command(
    config: Config,
    out: TextIO,
    err: TextIO,
    *,
    route: str | None,
    scope: str | None,
    identity: str | None,
    decode: bool,
) -> int:
    """Print a token (or its decoded header and claims); 0 on success, 1 when refused."""
    chosen, wanted = resolve_scope(config, route=route, scope=scope, identity=identity)
    provider = msal_provider(chosen, config.outbound)
    try:
        token = await provider.token(wanted)
    except TokenError as e:
        print(f"ppproxy token: {e.error}: {_first_line(e.description)}", file=err)
        return 1
    finally:
        await provider.close()
    if decode:
        out.write(describe_token(token.value))
    else:
        json.dump(_az_shape(token, chosen), out, indent=2)
        out.write("\n")
    return 0


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


# -- register-app --


async def register_app(
    config: Config,
    out: TextIO,
    err: TextIO,
    *,
    client_id: str | None,
    identity: str | None,
    list_only: bool,
    bap_url: str | None = None,
) -> int:
    """Register ``client_id`` with Power Platform (or list the registrations)."""
    chosen = pick_identity(config, identity)
    cloud = presets.CLOUDS[chosen.cloud]
    base = (bap_url or cloud.bap_url).rstrip("/")
    _check_bap_url(base)
    try:
        token = await _admin_token(chosen, config, cloud.bap_scope, err)
    except TokenError as e:
        print(f"ppproxy register-app: {e.error}: {_first_line(e.description)}", file=err)
        return 1
    if list_only:
        url, method = f"{base}{ADMIN_APPLICATIONS}?api-version={API_VERSION}", "GET"
    else:
        assert client_id is not None
        url = f"{base}{ADMIN_APPLICATIONS}/{client_id}?api-version={API_VERSION}"
        method = "PUT"
    status, body = await asyncio.to_thread(_call, config, method, url, token)
    if not 200 <= status < 300:
        error = body.get("error") if isinstance(body, dict) else None
        detail = json.dumps(error) if error else f"HTTP {status}"
        print(f"ppproxy register-app: BAP answered {status}: {detail}", file=err)
        return 1
    if list_only:
        apps = body.get("value", []) if isinstance(body, dict) else []
        print("APPLICATION ID                        TENANT", file=out)
        for app in apps:
            print(f"{app.get('applicationId', ''):<38}{app.get('tenantId', '')}", file=out)
    else:
        print(f"registered {client_id} with Power Platform ({base})", file=out)
    return 0


def _check_bap_url(base: str) -> None:
    scheme, _, rest = base.partition("://")
    host = rest.split("/", 1)[0].rsplit(":", 1)[0] if rest else ""
    if scheme == "https" and host:
        return
    if scheme == "http" and is_loopback(host.strip("[]")):
        return
    raise CommandError(f"--bap-url must be an https:// URL (http:// only for loopback): {base}")


async def _admin_token(identity: IdentityConfig, config: Config, scope: str, out: TextIO) -> str:
    if identity.username is not None:
        provider = msal_provider(identity, config.outbound)
        try:
            return (await provider.token(scope)).value
        finally:
            await provider.close()
    return await asyncio.to_thread(_device_code_token, identity, config, scope, out)


def _device_code_token(identity: IdentityConfig, config: Config, scope: str, out: TextIO) -> str:
    """The device code flow (RFC 8628): print the code and URL, wait for the admin."""
    session = PinnedSession(config.outbound)
    try:
        app = msal.PublicClientApplication(
            DEVICE_CODE_CLIENT_ID,
            authority=identity.authority,
            instance_discovery=identity.instance_discovery,
            http_client=session,
            token_cache=NoStoreCache(),
            http_cache=NoHttpCache(),
        )
        flow = app.initiate_device_flow(scopes=[scope])
        if "user_code" not in flow:
            raise TokenError(
                str(flow.get("error") or "device_flow_failed"),
                str(flow.get("error_description") or ""),
            )
        print(flow["message"], file=out, flush=True)
        result = app.acquire_token_by_device_flow(flow)
    except requests.RequestException as e:
        raise TokenError("authority_unreachable", type(e).__name__) from None
    finally:
        session.close()
    if "access_token" not in result:
        raise TokenError(
            str(result.get("error") or "unknown_error"),
            str(result.get("error_description") or ""),
        )
    return str(result["access_token"])


def _call(config: Config, method: str, url: str, token: str) -> tuple[int, Any]:
    with PinnedSession(config.outbound) as session:
        try:
            response = session.request(
                method,
                url,
                headers={"Authorization": f"Bearer {token}"},
                json={} if method == "PUT" else None,
            )
        except requests.RequestException as e:
            # Never the exception's repr: it holds the request, and so the token.
            return 0, {"error": f"{type(e).__name__} for {url}"}
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
