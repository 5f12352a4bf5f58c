"""What the grant modules share: a token request as recorded and as a grant sees it, and
what a grant that succeeds establishes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.testing._entra import EntraError, unsupported_grant

# OpenID scopes MSAL adds to user flows; the remaining scope names the resource.
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_REDACTED = "<redacted>"
_SECRET_FIELDS = frozenset(
    {"client_secret", "client_assertion", "password", "refresh_token", "assertion"}
)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One recorded POST to the token endpoint; time is wall-clock (time.time())."""

    tenant: str
    client_id: str
    scope: str
    grant_type: str
    time: float
    form: Mapping[str, str]
    """All form fields; secret values (client_secret, client_assertion, password,
    refresh_token, assertion) are replaced by "<redacted>"."""
    user_oid: str | None = None
    """For on-behalf-of requests, the ``oid`` in the user's token as sent (unchecked)."""


def redacted(form: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy of a token request's form with the secret values replaced."""
    return MappingProxyType({k: _REDACTED if k in _SECRET_FIELDS else v for k, v in form.items()})


@dataclass(frozen=True, slots=True)
class Call:
    """One token request: its form, unredacted (never log it), the tenant named in the path,
    the client and secret (from the form or HTTP Basic), the scope as recorded, and the
    token endpoint it was sent to."""

    form: Mapping[str, str] = field(repr=False)
    tenant: str
    client_id: str
    secret: str | None = field(repr=False)
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


def resource_of(scope: str) -> tuple[str, str]:
    """A scope's resource and permission: Entra takes everything before the last ``/`` as
    the resource (so ``https://service.powerapps.com//.default`` names
    ``https://service.powerapps.com/``)."""
    resource, _, permission = scope.rpartition("/")
    return resource, permission


def public_client_only(
    grant_type: str, client_id: str, public_clients: set[str]
) -> EntraError | None:
    """User grants are served to ``public_clients`` only; another client asking for one
    gets the unsupported-grant answer."""
    return None if client_id in public_clients else unsupported_grant(grant_type)
