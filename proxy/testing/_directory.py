"""The tenant's directory as the identity provider keeps it: app registrations, users and
signing keys, and the tokens signed with them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jwt

from proxy.testing._assertions import Federation
from proxy.testing._claims import (
    AZURE_CLI_CLIENT_ID,
    DEFAULT_USER,
    access_token,
    app_identity,
    object_id,
    user_claims,
    v1_issuer,
    v2_issuer,
)
from proxy.testing._entra import DEFAULT_SUFFIX
from proxy.testing._grant import resource_of
from proxy.testing._signing import KeyRing

DEFAULT_CLIENT_ID = "test-client"
DEFAULT_CLIENT_SECRET = "test-secret"  # noqa: S105 (a fixed fake secret for local tests)
# A made-up tenant id: Entra names tenants by GUID in tokens, whatever the authority says.
DEFAULT_TENANT = "69c6e46f-9c9f-4572-80fd-5051cce0e5ae"


class Directory:
    """Registrations and users the grants check, and the keys tokens are signed with.

    Attributes, all safe to change between requests:

    - ``tenant``: the tenant in ``authority``: a GUID (by default) or a domain name; its
      GUID, ``tenant_id``, goes in tokens' ``tid`` and ``iss``. The path may name any tenant.
    - ``clients``: client_id -> accepted secret.
    - ``certificates``: client_id -> PEM certificates whose keys may sign client assertions.
    - ``trusted_subjects``: client_id -> subject (RFC 4514) trusted with the ``x5c`` chain.
    - ``federations``: client_id -> federated credentials (workload identity federation).
    - ``public_clients``: client_ids allowed the password and device code grants.
    - ``users``: user name -> password, for the password grant.
    - ``device_sign_in``: the user who approves device codes, or None (pending).
    - ``app_id_uris``: client_id -> App ID URIs (such as ``api://ppproxy``) that name the
      app as a token's audience, besides its client id.
    - ``token_lifetime``: seconds (float allowed) for tokens issued from now on;
      ``expires_in`` is its ceiling.
    - ``obo_token_lifetime``: the same for on-behalf-of tokens; None means token_lifetime.
    """

    def __init__(
        self,
        *,
        tenant: str,
        clients: Mapping[str, str] | None,
        token_lifetime: float,
        app_id_uris: Mapping[str, Sequence[str]] | None = None,
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
        self.app_id_uris: dict[str, list[str]] = {
            client: list(uris) for client, uris in (app_id_uris or {}).items()
        }
        self.obo_token_lifetime: float | None = None
        self._no_consent: set[tuple[str, str]] = set()  # (client_id, resource)
        self._signing_keys = KeyRing()

    @property
    def authority_host(self) -> str:
        """The origin tokens' v2 issuer names; the server provides it."""
        raise NotImplementedError

    @property
    def tenant_id(self) -> str:
        """``tenant`` if it is a GUID, else a GUID derived from that name."""
        try:
            return str(uuid.UUID(self.tenant))
        except ValueError:
            return str(uuid.uuid5(uuid.NAMESPACE_DNS, self.tenant))

    @property
    def issuer(self) -> str:
        """The ``iss`` claim of issued tokens (Entra's v1 form)."""
        return v1_issuer(self.tenant_id)

    @property
    def issuer_v2(self) -> str:
        """The ``iss`` claim of v2 tokens, and the metadata's ``issuer`` for ``tenant_id``."""
        return v2_issuer(self.authority_host, self.tenant_id)

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The current signing key as served by the keys endpoint."""
        return self._signing_keys.current.jwk

    @property
    def jwks(self) -> dict[str, Any]:
        """The keys document: every published key, the current one first."""
        return {"keys": [k.jwk for k in self._signing_keys.published]}

    def rotate_signing_key(self, keep_old: bool = False) -> str:
        """Sign with a new key from now on and return its kid; the keys published so far
        stay in the JWKS only if keep_old (as while Entra rolls its keys over)."""
        return self._signing_keys.rotate(keep_old=keep_old).kid

    def retire_signing_key(self, kid: str) -> None:
        """Take a key kept by rotate_signing_key(keep_old=True) out of the JWKS: tokens it
        signed stop verifying. Raises KeyError for a kid not in the JWKS, ValueError for
        the current key."""
        self._signing_keys.retire(kid)

    def signing_key_for(self, kid: object) -> Any:
        """The public key of the published signing key with this kid, or None."""
        key = self._signing_keys.find(kid)
        return None if key is None else key.public

    def require_consent(self, client_id: str, scope: str) -> None:
        """Answer on-behalf-of requests by client_id for any scope of this scope's resource
        with AADSTS65001 (consent_required) until grant_consent()."""
        self._no_consent.add((client_id, resource_of(scope)[0]))

    def grant_consent(self, client_id: str, scope: str) -> None:
        """Undo require_consent(): the user or an administrator consented."""
        self._no_consent.discard((client_id, resource_of(scope)[0]))

    def has_consent(self, client_id: str, resource: str) -> bool:
        """Whether client_id may act for users at resource."""
        return (client_id, resource) not in self._no_consent

    def verify(self, token: str) -> dict[str, Any]:
        """Check signature (by a published key, found by ``kid``), issuer (v1 or v2 form),
        exp and nbf; return the claims or raise jwt.InvalidTokenError."""
        key = (
            self._signing_keys.find(jwt.get_unverified_header(token).get("kid"))
            or self._signing_keys.current
        )
        return jwt.decode(
            token,
            key.public,
            algorithms=["RS256"],
            issuer=[self.issuer, self.issuer_v2],
            options={"require": ["exp", "iat", "nbf"], "verify_aud": False},
        )

    def user_token(
        self,
        *,
        audience: str,
        oid: str | None = None,
        upn: str = DEFAULT_USER,
        version: Literal[1, 2] = 1,
        tenant: str | None = None,
        client_id: str = AZURE_CLI_CLIENT_ID,
        groups: Sequence[str] = (),
        roles: Sequence[str] = (),
        scp: str = "user_impersonation",
        lifetime: float = 3600.0,
        not_before: float | None = None,
        issued_at: float | None = None,
        kid: str | None = None,
        unknown_key: bool = False,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A member's access token for ``audience``, as Entra issues it to a user of
        ``client_id`` (by default the Azure CLI) calling an API such as a gateway app.

        ``version`` 1 (``accessTokenAcceptedVersion`` unset): ``aud`` is the App ID URI given,
        ``iss`` ``https://sts.windows.net/{tenant}/``; 2: ``aud`` is the app's client id,
        ``iss`` ``{authority_host}/{tenant}/v2.0``. ``tenant`` defaults to ``tenant_id``;
        ``oid`` to the one the password grant gives ``upn``. ``iat`` is issued_at (default
        now), ``nbf`` not_before (default iat), ``exp`` iat + lifetime. Signed by the current
        key, the published key ``kid``, or, with unknown_key, a key the JWKS never lists.
        ``extra_claims`` are set last; a None value removes that claim."""
        if unknown_key and kid is not None:
            raise ValueError("give kid or unknown_key, not both")
        keys = self._signing_keys
        key = keys.stranger if unknown_key else keys.current if kid is None else keys.find(kid)
        if key is None:
            raise KeyError(f"no published signing key has kid {kid!r}")
        tenant_id = self.tenant_id if tenant is None else tenant
        # Whole seconds, so that exp - iat is the lifetime, as in Entra's tokens.
        issued_at = int(time.time()) if issued_at is None else issued_at
        v1 = version == 1
        issuer = v1_issuer(tenant_id) if v1 else v2_issuer(self.authority_host, tenant_id)
        claims = user_claims(
            version=version,
            issuer=issuer,
            tenant=tenant_id,
            audience=audience,
            oid=object_id(tenant_id, upn) if oid is None else oid,
            upn=upn,
            client_id=client_id,
            scp=scp,
            groups=groups,
            roles=roles,
            issued_at=issued_at,
            not_before=issued_at if not_before is None else not_before,
            expires=issued_at + lifetime,
        )
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return key.sign(claims)

    def app_token(self, client_id: str, scope: str, lifetime: float | None = None) -> str:
        """A signed app token, as this provider issues them (for stand-ins such as the
        managed identity endpoint, whose tokens Entra issues too)."""
        return self._issue(
            client_id,
            # Exactly the suffix goes: ".../.default" keeps its own trailing slash.
            scope.removesuffix(DEFAULT_SUFFIX),
            app_identity(self.tenant_id, client_id),
            self.token_lifetime if lifetime is None else lifetime,
        )

    def _issue(
        self, client_id: str, audience: str, identity: Mapping[str, Any], lifetime: float
    ) -> str:
        """A signed v1 access token for ``client_id`` naming ``identity``."""
        return self._signing_keys.current.sign(
            access_token(
                issuer=self.issuer,
                tenant=self.tenant_id,
                client_id=client_id,
                audience=audience,
                identity=identity,
                now=time.time(),
                lifetime=lifetime,
            )
        )
