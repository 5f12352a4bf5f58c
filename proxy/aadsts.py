"""Entra ID's AADSTS error codes that setting up an app registration runs into, each mapped to
the portal step that fixes it (README, "Setting up the service principal in Azure").

Used wherever a token error reaches a person: the ``503 token_unavailable`` body (``hint``),
``ppproxy check``, ``token`` and ``register-app``, and the start-up warning of ``serve``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_HINTS: dict[int, str] = {
    65001: (
        "consent missing: app registration -> API permissions -> Grant admin consent for the tenant"
    ),
    7000218: (
        "a public client needs public client flows: app registration -> Authentication -> "
        "Allow public client flows = Yes"
    ),
    700027: (
        "the certificate is not the one uploaded: app registration -> Certificates & secrets -> "
        "Certificates -> upload this certificate (ppproxy check shows its thumbprints)"
    ),
    700024: (
        "the federated token is not accepted: app registration -> Certificates & secrets -> "
        "Federated credentials: check issuer, subject and audience api://AzureADTokenExchange"
    ),
    7000215: (
        "wrong client secret: app registration -> Certificates & secrets -> Client secrets -> "
        "New client secret, and use its Value (not the Secret ID)"
    ),
    700016: (
        "no such application in this tenant: check client_id (Application (client) ID) and "
        "tenant_id (Directory (tenant) ID) on the app registration's Overview page"
    ),
    50126: "wrong username or password for the user (username, password or password_file)",
    50076: (
        "the user must pass multi-factor authentication, which the password flow cannot: use "
        "a certificate or a client secret (ppproxy init --flow certificate)"
    ),
}
_HINTS[50079] = _HINTS[50076]
_CODE = re.compile(r"\bAADSTS(\d+)")


def hint(codes: Iterable[int] = (), description: str = "") -> str | None:
    """The portal step for the first known code (from ``codes``, else the ``AADSTS...`` in
    ``description``), or None."""
    found = [*codes, *(int(c) for c in _CODE.findall(description))]
    return next((_HINTS[c] for c in found if c in _HINTS), None)


def known_codes() -> tuple[int, ...]:
    """The codes that have a hint (for documentation and tests)."""
    return tuple(_HINTS)
