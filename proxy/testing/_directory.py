"""The tenant's directory as the identity provider keeps it: app registrations, users and
the signing key, and the tokens signed with it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

from proxy.testing._assertions import Federation
from proxy.testing._claims import access_token, app_identity
from proxy.testing._entra import DEFAULT_SUFFIX
from proxy.testing._signing import SigningKey

DEFAULT_CLIENT_ID = "test-client"
DEFAULT_CLIENT_SECRET = "test-secret"  # noqa: S105 (a fixed fake secret for local tests)


class Directory:
    """Registrations and users the grants check, and the key tokens are signed with.

    Attributes, all safe to change between requests:

    - ``tenant``: put in tokens' ``tid`` and ``iss``; the path may name any tenant.
    - ``clients``: client_id -> accepted secret.
    - ``certificates``: client_id -> PEM certificates whose keys may sign client assertions.
    - ``trusted_subjects``: client_id -> subject (RFC 4514) trusted with the ``x5c`` chain.
    - ``federations``: client_id -> federated credentials (workload identity federation).
    - ``public_clients``: client_ids allowed the password and device code grants.
    - ``users``: user name -> password, for the password grant.
    - ``device_sign_in``: the user who approves device codes, or None (pending).
    - ``token_lifetime``: seconds (float allowed) for tokens issued from now on;
      ``expires_in`` is its ceiling.
    """

    def __init__(
        self, *, tenant: str, clients: Mapping[str, str] | None, token_lifetime: float
    ) -> None:
        self.tenant = tenant
        self.clients: dict[str, str] = dict(
            clients if clients is not None else {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET}
        )
        self.token_lifetime = token_lifetime
        self.certificates: dict[str, list[bytes]] = {}
        self.trusted_subjects: dict[str, str] = {}
        self.federations: dict[str, list[Federation]] = {}
        self.public_clients: set[str] = set()
        self.users: dict[str, str] = {}
        self.device_sign_in: str | None = None
        self._key = SigningKey()

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The signing key as served by the keys endpoint."""
        return self._key.jwk

    @property
    def issuer(self) -> str:
        """The ``iss`` claim of issued tokens (Entra's v1 form)."""
        return f"https://sts.windows.net/{self.tenant}/"

    def verify(self, token: str) -> dict[str, Any]:
        """Check signature, issuer, exp and nbf; return the claims or raise
        jwt.InvalidTokenError."""
        return jwt.decode(
            token,
            self._key.public,
            algorithms=["RS256"],
            issuer=self.issuer,
            options={"require": ["exp", "iat", "nbf"], "verify_aud": False},
        )

    def app_token(self, client_id: str, scope: str, lifetime: float | None = None) -> str:
        """A signed app token, as this provider issues them (for stand-ins such as the
        managed identity endpoint, whose tokens Entra issues too)."""
        return self.issue(
            client_id,
            # Exactly the suffix goes: ".../.default" keeps its own trailing slash.
            scope.removesuffix(DEFAULT_SUFFIX),
            app_identity(self.tenant, client_id),
            self.token_lifetime if lifetime is None else lifetime,
        )

    def issue(
        self, client_id: str, audience: str, identity: Mapping[str, Any], lifetime: float
    ) -> str:
        """A signed v1 access token for ``client_id`` naming ``identity``."""
        return self._key.sign(
            access_token(
                issuer=self.issuer,
                tenant=self.tenant,
                client_id=client_id,
                audience=audience,
                identity=identity,
                now=time.time(),
                lifetime=lifetime,
            )
        )
