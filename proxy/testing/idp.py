"""A local HTTPS identity provider speaking Microsoft Entra ID's v2 endpoints.

Endpoints, for any tenant value in the path (including domain names):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the OIDC metadata MSAL reads.
- ``POST /{tenant}/oauth2/v2.0/token``: the client credentials grant (RFC 6749 §4.4) with
  ``client_secret`` in the form or HTTP Basic client auth (RFC 6749 §2.3.1), or a client
  assertion (RFC 7523 §2.2) signed with a registered certificate (``certificates``, or
  Subject Name/Issuer trust with ``x5c``: ``trusted_subjects``) or a federated token
  (``federations``); the password grant (RFC 6749 §4.3) for ``public_clients`` and ``users``;
  the device code grant (RFC 8628 §3.4), approved as ``device_sign_in``.
- ``POST /{tenant}/oauth2/v2.0/devicecode``: the device authorization request (RFC 8628 §3.1).
- ``GET /common/userrealm/{username}``: the user-realm lookup MSAL makes before the password
  grant. MSAL sends it to port 443 of the authority's host whatever port the authority names,
  so a password-grant test runs this provider with ``port=443``.
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
from cryptography import x509

from proxy.testing._assertions import (
    DEVICE_CODE,
    JWT_BEARER,
    PASSWORD_GRANT,
    Federation,
    check_certificate_assertion,
    check_federated_assertion,
    check_user,
    resource_scope,
)
from proxy.testing._entra import (
    DEFAULT_SUFFIX,
    DESCRIPTIONS,
    EntraError,
    basic_credentials,
    check_client_credentials,
    check_scope,
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
    - ``certificates``: client_id -> PEM certificates whose keys may sign client assertions.
    - ``trusted_subjects``: client_id -> subject (RFC 4514) trusted with the ``x5c`` chain.
    - ``federations``: client_id -> federated credentials (workload identity federation).
    - ``public_clients``: client_ids allowed the password and device code grants.
    - ``users``: user name -> password, for the password grant.
    - ``device_sign_in``: the user who approves device codes, or None (pending).
    - ``realm_lookups``: user names looked up at ``/common/userrealm``.
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
        self.malformed = False  # answer token requests with 200 and a broken JSON body
        self.requests: list[TokenRequest] = []
        self.certificates: dict[str, list[bytes]] = {}
        self.trusted_subjects: dict[str, str] = {}
        self.federations: dict[str, list[Federation]] = {}
        self.public_clients: set[str] = set()
        self.users: dict[str, str] = {}
        self.device_sign_in: str | None = None
        self.realm_lookups: list[str] = []
        self._device_codes: dict[str, tuple[str, str]] = {}  # code -> (client_id, scope)
        self._failure: _Failure | None = None
        self._key = SigningKey()

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", self._device_code)
        app.router.add_get("/common/userrealm/{username}", self._user_realm)
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
        retry_after: str | None = None,
    ) -> None:
        """Fail the next token requests with Entra's error JSON (and ``Retry-After`` when
        given: seconds or an HTTP date); times=None means until clear_failure(). A request
        takes its failure on arrival, before ``delay``."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None)")
        if description is None:
            description = DESCRIPTIONS.get(code, "Simulated failure.")
        self._failure = _Failure(EntraError(status, error, code, description, retry_after), times)

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

    async def _user_realm(self, request: web.Request) -> web.Response:
        username = request.match_info["username"]
        self.realm_lookups.append(username)
        domain = username.rpartition("@")[2]
        known = any(u.lower().endswith("@" + domain.lower()) for u in self.users)
        return web.json_response(
            {
                "ver": "1.0",
                "account_type": "Managed" if known else "Unknown",
                "domain_name": domain,
                "cloud_instance_name": "microsoftonline.com",
                "cloud_audience_urn": "urn:federation:MicrosoftOnline",
            }
        )

    async def _device_code(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text(), keep_blank_values=True))
        code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        self._device_codes[code] = (
            form.get("client_id", ""),
            resource_scope(form.get("scope", "")),
        )
        uri = f"{self.authority_host}/devicelogin"
        return web.json_response(
            {
                "device_code": code,
                "user_code": user_code,
                "verification_uri": uri,
                "expires_in": 900,
                "interval": 1,
                "message": f"To sign in, use a web browser to open the page {uri} and enter "
                f"the code {user_code} to authenticate.",
            }
        )

    def _check(
        self, form: Mapping[str, str], record: TokenRequest, secret: str | None, endpoint: str
    ) -> tuple[EntraError | None, str | None]:
        """The error for a token request, or None and the signed-in user (None for apps)."""
        grant, client_id = record.grant_type, record.client_id
        if grant in (PASSWORD_GRANT, DEVICE_CODE) and client_id not in self.public_clients:
            # Only public clients (``public_clients``) may use the user grants here.
            return check_client_credentials(
                tenant=record.tenant,
                grant_type=grant,
                client_id=client_id,
                secret=secret,
                expected_secret=self.clients.get(client_id),
                scope=record.scope,
            ), None
        if grant == PASSWORD_GRANT:
            username = form.get("username", "")
            return check_user(
                tenant=record.tenant,
                username=username,
                password=form.get("password", ""),
                users=self.users,
            ), username
        if grant == DEVICE_CODE:
            if form.get("device_code") not in self._device_codes:
                return EntraError(
                    400,
                    "expired_token",
                    70020,
                    "The provided value for the input parameter 'device_code' is not valid.",
                ), None
            if self.device_sign_in is None:
                return EntraError(
                    400,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                ), None
            return None, self.device_sign_in
        if form.get("client_assertion_type") == JWT_BEARER and grant == "client_credentials":
            assertion = form.get("client_assertion", "")
            if client_id in self.federations:
                problem = check_federated_assertion(
                    assertion, federations=self.federations[client_id]
                )
            elif client_id in self.certificates or client_id in self.trusted_subjects:
                problem = check_certificate_assertion(
                    assertion,
                    client_id=client_id,
                    token_endpoints=(endpoint, endpoint.replace("/oauth2/v2.0/", "/oauth2/")),
                    certificates=[
                        x509.load_pem_x509_certificate(c)
                        for c in self.certificates.get(client_id, ())
                    ],
                    trusted_subject=self.trusted_subjects.get(client_id),
                )
            else:
                problem = check_client_credentials(
                    tenant=record.tenant,
                    grant_type=grant,
                    client_id=client_id,
                    secret=None,
                    expected_secret=None,
                    scope=record.scope,
                )
            return problem or check_scope(record.scope), None
        return check_client_credentials(
            tenant=record.tenant,
            grant_type=record.grant_type,
            client_id=client_id,
            secret=secret,
            expected_secret=self.clients.get(client_id),
            scope=record.scope,
        ), None

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text(), keep_blank_values=True))
        basic = basic_credentials(request.headers.get("Authorization", ""))
        client_id = basic[0] if basic else form.get("client_id", "")
        secret = basic[1] if basic else form.get("client_secret")
        grant = form.get("grant_type", "")
        scope = form.get("scope", "")
        if grant == DEVICE_CODE:
            scope = self._device_codes.get(form.get("device_code", ""), ("", ""))[1]
        elif grant == PASSWORD_GRANT:
            scope = resource_scope(scope)
        record = TokenRequest(
            tenant=request.match_info["tenant"],
            client_id=client_id,
            scope=scope,
            grant_type=grant,
            time=time.time(),
            form=MappingProxyType(
                {k: _REDACTED if k in _SECRET_FIELDS else v for k, v in form.items()}
            ),
        )
        self.requests.append(record)
        failure = self._take_failure()
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        endpoint = f"{self.authority_host}/{record.tenant}/oauth2/v2.0/token"
        problem, user = self._check(form, record, secret, endpoint)
        problem = failure or problem
        if problem is not None:
            body = error_body(
                problem,
                client_id=client_id,
                correlation_id=correlation_id(request.headers.get("client-request-id")),
                error_uri=f"{self.authority_host}/error?code={problem.code}",
            )
            headers = {**_NO_STORE, "x-ms-request-id": body["trace_id"]}
            if problem.retry_after is not None:
                headers["Retry-After"] = problem.retry_after
            return web.json_response(body, status=problem.status, headers=headers)
        if self.malformed:
            return web.Response(
                text='{"token_type": "Bearer", "acc', content_type="application/json"
            )
        lifetime = self.token_lifetime
        expires_in = math.ceil(lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": self._issue(record, lifetime, user),
                **({"scope": record.scope} if user else {}),
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

    def app_token(self, client_id: str, scope: str, lifetime: float | None = None) -> str:
        """A signed app token, as this provider issues them (for stand-ins such as the
        managed identity endpoint, whose tokens Entra issues too)."""
        record = TokenRequest(self.tenant, client_id, scope, "client_credentials", 0.0, {})
        return self._issue(record, self.token_lifetime if lifetime is None else lifetime)

    def _issue(self, record: TokenRequest, lifetime: float, user: str | None = None) -> str:
        now = time.time()
        subject = user or record.client_id
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant}/{subject}"))
        unique = secrets.token_urlsafe(16)
        if user is not None:
            extra: dict[str, Any] = {
                "idtyp": "user", "scp": "user_impersonation", "upn": user,
                "unique_name": user, "amr": ["pwd"],
            }  # fmt: skip
        else:
            extra = {"idtyp": "app", "roles": []}
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
                "oid": object_id,
                "sub": object_id,
                **extra,
                "tid": self.tenant,
                "uti": unique,
                "jti": unique,
                "ver": "1.0",
            }
        )
