"""``ppproxy register-app``: register a service principal with Power Platform (BAP's
``adminApplications``), which the admin center cannot do and which needs an admin *user*
token: the identity's username and password, or else the device code flow.

Every call (the device code, the token, the user-realm lookup, BAP) goes through the
configuration's outbound settings: its proxy and its TLS trust, like the proxy's own calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import msal  # type: ignore[import-untyped]  # msal ships no type information
import requests

from .. import presets, reach
from ..config import Config, IdentityConfig
from ..identity import NoHttpCache, NoStoreCache, PinnedSession, msal_provider
from ..peers import is_loopback
from ..tokens import TokenError
from .base import GUID, Command, CommandError, add_config, load_config, pick_identity
from .token import print_token_error

ADMIN_APPLICATIONS = "/providers/Microsoft.BusinessAppPlatform/adminApplications"
API_VERSION = "2020-10-01"
# Microsoft's first-party public client "Microsoft Azure PowerShell", which the Power Apps
# administration module signs admins in with: it needs no app registration of your own.
DEVICE_CODE_CLIENT_ID = "1950a258-227b-4e31-a9cf-717495945fc2"


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument(
        "--client-id",
        metavar="GUID",
        help="the application (client) ID to register (default: the identity's client_id)",
    )
    parser.add_argument("--identity", help="the identity whose app is registered and who signs in")
    parser.add_argument("--list", action="store_true", help="list the registered applications")
    parser.add_argument(
        "--bap-url",
        help="BAP API base URL (default: the identity's cloud, e.g. https://api.bap.microsoft.com)",
    )


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = load_config(args.config, env)
    return asyncio.run(
        register_app(
            config, sys.stdout, sys.stderr, client_id=args.client_id, identity=args.identity,
            list_only=args.list, bap_url=args.bap_url,
        )
    )  # fmt: skip


COMMAND = Command(
    name="register-app",
    summary="register the service principal with Power Platform (an admin signs in)",
    description="Register an app registration's service principal with Power Platform "
    "(BAP adminApplications, as New-PowerAppManagementApp does): the step that gives it its "
    "Power Platform rights. An admin user signs in: the identity's username and password, or "
    "else a device code printed here (Microsoft's public Azure PowerShell client, so no app of "
    "your own is needed). --list shows what is registered.",
    examples=(
        "ppproxy register-app",
        "ppproxy register-app --client-id 00000000-0000-0000-0000-000000000000",
        "ppproxy register-app --list",
    ),
    arguments=_arguments,
    run=_run,
)


def application_id(given: str | None, identity: IdentityConfig) -> str:
    """The GUID to register: ``--client-id``, else the identity's own client id."""
    if given is None:
        managed = identity.managed_identity
        given = identity.client_id or (managed[1] if managed and managed[0] == "client_id" else "")
        if not given:
            raise CommandError(f"--client-id is required: identity {identity.name!r} has none")
    if not GUID.match(given):
        raise CommandError(
            f"--client-id must be an application (client) ID, a GUID such as "
            f"00000000-0000-0000-0000-000000000000; got {given[:60]!r}"
        )
    return given.lower()


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
    app_id = None if list_only else application_id(client_id, chosen)
    cloud = presets.CLOUDS[chosen.cloud]
    base = (bap_url or cloud.bap_url).rstrip("/")
    _check_bap_url(base)
    try:
        token = await _admin_token(chosen, config, cloud.bap_scope, err)
    except TokenError as e:
        print_token_error("register-app", e, err)
        return 1
    if app_id is None:
        url, method = f"{base}{ADMIN_APPLICATIONS}?api-version={API_VERSION}", "GET"
    else:
        url = f"{base}{ADMIN_APPLICATIONS}/{app_id}?api-version={API_VERSION}"
        method = "PUT"
    status, body = await asyncio.to_thread(_call, config, method, url, token)
    if not 200 <= status < 300:
        error = body.get("error") if isinstance(body, dict) else None
        detail = json.dumps(error) if error else f"HTTP {status}"
        print(f"ppproxy register-app: BAP answered {status}: {detail}", file=err)
        return 1
    if app_id is None:
        apps = body.get("value", []) if isinstance(body, dict) else []
        print("APPLICATION ID                        TENANT", file=out)
        for app in apps:
            print(f"{app.get('applicationId', ''):<38}{app.get('tenantId', '')}", file=out)
    else:
        print(f"registered {app_id} with Power Platform ({base})", file=out)
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
                [int(c) for c in flow.get("error_codes") or () if isinstance(c, int)],
            )
        print(flow["message"], file=out, flush=True)
        result = app.acquire_token_by_device_flow(flow)
    except requests.RequestException as e:
        raise TokenError("authority_unreachable", reach.describe(e)) from None
    finally:
        session.close()
    if "access_token" not in result:
        raise TokenError(
            str(result.get("error") or "unknown_error"),
            str(result.get("error_description") or ""),
            [int(c) for c in result.get("error_codes") or () if isinstance(c, int)],
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
            return 0, {"error": reach.describe(e, url)}
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None
