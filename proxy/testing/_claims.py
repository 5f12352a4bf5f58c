"""The claims of the access tokens the provider issues, shaped like Entra's v1 tokens."""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Mapping
from typing import Any


def object_id(tenant: str, name: str) -> str:
    """A stable ``oid`` for an app or user name in a tenant."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{name}"))


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
