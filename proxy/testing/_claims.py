"""The claims of the access tokens the provider issues and mints, shaped like Entra's."""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.testing.credentials import b64url

# The Azure CLI's public client id: what a member's token names as the app (appid or azp)
# after `az account get-access-token --resource <App ID URI>`.
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
DEFAULT_USER = "user@contoso.test"


def v1_issuer(tenant: str) -> str:
    """``iss`` of v1 tokens from a tenant (by GUID)."""
    return f"https://sts.windows.net/{tenant}/"


def v2_issuer(authority_host: str, tenant: str) -> str:
    """``iss`` of v2 tokens from a tenant (by GUID), and its metadata's ``issuer``."""
    return f"{authority_host}/{tenant}/v2.0"


def object_id(tenant: str, name: str) -> str:
    """A stable ``oid`` for an app or user name in a tenant."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{name}"))


def pairwise_subject(oid: str, audience: str) -> str:
    """``sub`` of a user's token: Entra makes it differ per user and per application."""
    return b64url(hashlib.sha256(f"{audience}/{oid}".encode()).digest())


def app_identity(tenant: str, client_id: str) -> dict[str, Any]:
    """The claims naming an application (``idtyp`` app), as in client credentials tokens."""
    oid = object_id(tenant, client_id)
    return {"oid": oid, "sub": oid, "idtyp": "app", "roles": []}


def signed_in_user(tenant: str, username: str) -> dict[str, Any]:
    """The claims naming a user who signed in with a password or a device code."""
    oid = object_id(tenant, username)
    return {
        "oid": oid, "sub": oid, "idtyp": "user", "scp": "user_impersonation",
        "upn": username, "unique_name": username, "amr": ["pwd"],
    }  # fmt: skip


def access_token(
    *,
    issuer: str,
    tenant: str,
    client_id: str,
    audience: str,
    identity: Mapping[str, Any],
    now: float,
    lifetime: float,
) -> dict[str, Any]:
    """A v1 access token's claims for ``client_id``, valid from now for ``lifetime``
    seconds (rounded up to the next whole second)."""
    unique = secrets.token_urlsafe(16)
    return {
        "aud": audience,
        "iss": issuer,
        "iat": int(now),
        "nbf": int(now),
        "exp": math.ceil(now + lifetime),
        "appid": client_id,
        "appidacr": "1",
        "azp": client_id,
        "idp": issuer,
        **identity,
        "tid": tenant,
        "uti": unique,
        "jti": unique,
        "ver": "1.0",
    }


def user_claims(
    *,
    version: int,
    issuer: str,
    tenant: str,
    audience: str,
    oid: str,
    upn: str,
    client_id: str,
    scp: str,
    groups: Sequence[str],
    roles: Sequence[str],
    issued_at: float,
    not_before: float,
    expires: float,
) -> dict[str, Any]:
    """An access token Entra issues to a member calling ``audience`` from the public client
    ``client_id``: v1 names the user by ``upn``/``unique_name`` and the client by ``appid``,
    v2 by ``preferred_username`` and ``azp``."""
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, not {version!r}")
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer,
        "iat": int(issued_at),
        "nbf": int(not_before),
        "exp": math.ceil(expires),
        "name": upn.partition("@")[0],
        "oid": oid,
        "scp": scp,
        "sub": pairwise_subject(oid, audience),
        "tid": tenant,
        "uti": secrets.token_urlsafe(16),
        "idtyp": "user",
    }
    if version == 1:
        claims |= {
            "acr": "1", "amr": ["pwd"], "appid": client_id, "appidacr": "0",
            "unique_name": upn, "upn": upn, "ver": "1.0",
        }  # fmt: skip
    else:
        claims |= {"azp": client_id, "azpacr": "0", "preferred_username": upn, "ver": "2.0"}
    if groups:
        claims["groups"] = list(groups)
    if roles:
        claims["roles"] = list(roles)
    return claims
