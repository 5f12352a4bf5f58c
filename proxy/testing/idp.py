"""A local HTTPS identity provider speaking Microsoft Entra ID's v2 endpoints.

Endpoints, for any tenant value in the path (including domain names):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the OIDC metadata MSAL reads.
- ``POST /{tenant}/oauth2/v2.0/token``: the client credentials grant (RFC 6749 §4.4) with
  ``client_secret`` in the form or HTTP Basic client auth (RFC 6749 §2.3.1).
- ``GET /{tenant}/discovery/v2.0/keys``: the JWKS holding the signing key.

Errors carry Entra's JSON shape and AADSTS codes; issued tokens look like Entra's v1 app
tokens (``ver`` 1.0, ``idtyp`` app) and are signed with a key made at construction.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

import jwt
from aiohttp import web

from proxy.testing._entra import (
    DEFAULT_SUFFIX,
    DESCRIPTIONS,
    EntraError,
    basic_credentials,
    check_client_credentials,
    correlation_id,
    error_body,
)
from proxy.testing._server import LocalServer
from proxy.testing._signing import SigningKey
from proxy.testing.ca import LocalCA

DEFAULT_CLIENT_ID = "test-client"
DEFAULT_CLIENT_SECRET = "test-secret"  # noqa: S105 (a fixed fake secret for local tests)

_REDACTED = "<redacted>"
_SECRET_FIELDS = frozenset({"client_secret", "client_assertion", "password", "refresh_token"})
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


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
    refresh_token) are replaced by "<redacted>"."""


@dataclass(slots=True)
class _Failure:
    error: EntraError
    remaining: int | None


class IdentityProvider(LocalServer):
    """Entra-like token service on loopback HTTPS; use as ``async with``.

    Attributes, all safe to change between requests:

    - ``tenant``: put in tokens' ``tid`` and ``iss``; the path may name any tenant.
    - ``clients``: client_id -> accepted secret.
    - ``token_lifetime``: seconds (float allowed) for tokens issued from now on;
      ``expires_in`` is its ceiling.
    - ``delay``: seconds to wait before answering each token request.
    - ``requests``: every token request in arrival order, recorded before validation.
    """

    def __init__(
        self,
        ca: LocalCA,
        *,
        tenant: str = "test-tenant",
        clients: Mapping[str, str] | None = None,
        token_lifetime: float = 3600.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, ssl_context=ca.server_context())
        self.tenant = tenant
        self.clients: dict[str, str] = dict(
            clients if clients is not None else {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET}
        )
        self.token_lifetime = token_lifetime
        self.delay = 0.0
        self.requests: list[TokenRequest] = []
        self._failure: _Failure | None = None
        self._key = SigningKey()

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        return web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout
        )

    @property
    def authority_host(self) -> str:
        """e.g. ``https://127.0.0.1:43123``; valid after start()."""
        return self.base_url

    @property
    def authority(self) -> str:
        """``{authority_host}/{tenant}``, the value to give MSAL as authority."""
        return f"{self.authority_host}/{self.tenant}"

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The signing key as served by the keys endpoint."""
        return self._key.jwk

    @property
    def issuer(self) -> str:
        """The ``iss`` claim of issued tokens (Entra's v1 form)."""
        return f"https://sts.windows.net/{self.tenant}/"

    def token_requests(self, scope: str | None = None) -> list[TokenRequest]:
        """Recorded token requests, optionally only those for one scope."""
        return [r for r in self.requests if scope is None or r.scope == scope]

    def fail_with(
        self,
        error: str = "invalid_client",
        *,
        code: int = 7000215,
        status: int = 401,
        description: str | None = None,
        times: int | None = None,
    ) -> None:
        """Fail the next token requests with Entra's error JSON; times=None means until
        clear_failure(). A request takes its failure on arrival, before ``delay``."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None)")
        if description is None:
            description = DESCRIPTIONS.get(code, "Simulated failure.")
        self._failure = _Failure(EntraError(status, error, code, description), times)

    def clear_failure(self) -> None:
        """Answer token requests normally again."""
        self._failure = None

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

    async def _metadata(self, request: web.Request) -> web.Response:
        base = f"{self.authority_host}/{request.match_info['tenant']}"
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
                "tenant_region_scope": None,
                "cloud_instance_name": "microsoftonline.com",
            }
        )

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.public_jwk]})

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text(), keep_blank_values=True))
        basic = basic_credentials(request.headers.get("Authorization", ""))
        client_id = basic[0] if basic else form.get("client_id", "")
        secret = basic[1] if basic else form.get("client_secret")
        record = TokenRequest(
            tenant=request.match_info["tenant"],
            client_id=client_id,
            scope=form.get("scope", ""),
            grant_type=form.get("grant_type", ""),
            time=time.time(),
            form=MappingProxyType(
                {k: _REDACTED if k in _SECRET_FIELDS else v for k, v in form.items()}
            ),
        )
        self.requests.append(record)
        failure = self._take_failure()
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        problem = failure or check_client_credentials(
            tenant=record.tenant,
            grant_type=record.grant_type,
            client_id=client_id,
            secret=secret,
            expected_secret=self.clients.get(client_id),
            scope=record.scope,
        )
        if problem is not None:
            body = error_body(
                problem,
                client_id=client_id,
                correlation_id=correlation_id(request.headers.get("client-request-id")),
                error_uri=f"{self.authority_host}/error?code={problem.code}",
            )
            headers = {**_NO_STORE, "x-ms-request-id": body["trace_id"]}
            return web.json_response(body, status=problem.status, headers=headers)
        lifetime = self.token_lifetime
        expires_in = math.ceil(lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": self._issue(record, lifetime),
            },
            headers=_NO_STORE,
        )

    def _take_failure(self) -> EntraError | None:
        failure = self._failure
        if failure is None:
            return None
        if failure.remaining is not None:
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failure = None
        return failure.error

    def _issue(self, record: TokenRequest, lifetime: float) -> str:
        now = time.time()
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant}/{record.client_id}"))
        unique = secrets.token_urlsafe(16)
        return self._key.sign(
            {
                # Exactly the suffix goes: ".../.default" keeps its own trailing slash.
                "aud": record.scope.removesuffix(DEFAULT_SUFFIX),
                "iss": self.issuer,
                "iat": int(now),
                "nbf": int(now),
                "exp": math.ceil(now + lifetime),
                "appid": record.client_id,
                "appidacr": "1",
                "azp": record.client_id,
                "idp": self.issuer,
                "idtyp": "app",
                "oid": object_id,
                "sub": object_id,
                "roles": [],
                "tid": self.tenant,
                "uti": unique,
                "jti": unique,
                "ver": "1.0",
            }
        )
