"""Shared by the sign-in tests: a tenant whose gateway app is the proxy's identity, members,
grants, and a gateway that serves them."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt

from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import CLIENT

GATEWAY_URI = "api://ppproxy"
OBO_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
READERS = "0f3c2b1a-0000-4000-8000-00000000aaaa"  # a group's object id
ADMIN_ROLE = "Gateway.Admin"
ANN = "ann@contoso.test"
BOB = "bob@contoso.test"
CI_KEY = "ppk_ci-key-for-signin-tests-0123456789"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# First match wins: a reader who also holds the admin role is a reader.
CLIENTS: list[dict[str, Any]] = [
    {"name": "readers", "groups": [READERS.upper()], "routes": ["echo"], "methods": ["GET"]},
    {"name": "admins", "roles": [ADMIN_ROLE], "admin": True},
    {"name": "ann", "users": [ANN.upper()], "routes": ["other", "as-user", "dataverse"]},
    {"name": "ci", "key_sha256": sha(CI_KEY)},
]


def entra(idp: IdentityProvider, **overrides: Any) -> dict[str, Any]:
    """[access.entra] for the provider's tenant; the gateway app is the proxy's identity."""
    return {
        "tenant_id": idp.tenant_id,
        "audience": [GATEWAY_URI, CLIENT],
        "authority_host": idp.authority_host,
        **overrides,
    }


def routes(echo: EchoUpstream) -> list[dict[str, Any]]:
    return [
        {"name": "echo", "prefix": "/echo", "upstream": echo.url},
        {"name": "other", "prefix": "/other", "upstream": echo.url},
        {"name": "as-user", "prefix": "/user", "upstream": echo.url, "act_as": "user"},
        {"name": "dataverse", "prefix": "/dv", "upstream": echo.url, "impersonate": True},
    ]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signature(token: str) -> str:
    """The part of a token that makes it usable: it must never appear anywhere."""
    return token.rsplit(".", 1)[1]


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def reshaped(token: str, *, header: dict[str, Any] | None = None, **changes: Any) -> str:
    """``token`` with its header or claims changed and its signature kept (so no longer valid)."""
    head, body, sig = token.split(".")

    def encode(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    if header is not None:
        head = encode(header)
    if changes:
        body = encode(claims(token) | changes)
    return f"{head}.{body}.{sig}"
