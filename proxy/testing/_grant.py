"""What the grant modules share: a token request as a grant sees it, and what a grant
that succeeds establishes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.testing._entra import EntraError, unsupported_grant

# OpenID scopes MSAL adds to user flows; the remaining scope names the resource.
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})


@dataclass(frozen=True, slots=True)
class Call:
    """One token request: its form, unredacted (never log it), the tenant named in the path,
    the client and secret (from the form or HTTP Basic), the scope as recorded, and the
    token endpoint it was sent to."""

    form: Mapping[str, str]
    tenant: str
    client_id: str
    secret: str | None
    scope: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class Granted:
    """A grant's success: the access token's audience and the claims naming its subject."""

    audience: str
    identity: Mapping[str, Any]
    scope: str | None = None  # echoed as the answer's "scope", as Entra does for user grants
    lifetime: float | None = None  # seconds; None means the provider's token_lifetime


Outcome = EntraError | Granted


def resource_scope(scope: str) -> str:
    """The resource's scope in a user flow's scope list (MSAL adds the OpenID scopes)."""
    rest = [s for s in scope.split() if s not in OIDC_SCOPES]
    return " ".join(rest)


def public_client_only(
    grant_type: str, client_id: str, public_clients: set[str]
) -> EntraError | None:
    """User grants are served to ``public_clients`` only; another client asking for one
    gets the unsupported-grant answer."""
    return None if client_id in public_clients else unsupported_grant(grant_type)
