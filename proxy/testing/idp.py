"""A local HTTPS identity provider speaking Microsoft Entra ID's v2 endpoints.

Endpoints, for any tenant value in the path (including domain names):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the OIDC metadata MSAL reads;
  ``issuer`` is ``{authority_host}/{tenant}/v2.0``, ``jwks_uri`` the keys endpoint.
- ``GET /{tenant}/discovery/v2.0/keys``: the JWKS: every published key with ``kid`` (= ``x5t``),
  ``kty``, ``n``, ``e``, ``use`` sig, ``alg`` RS256 and ``x5c``; fetches are counted.
- ``POST /{tenant}/oauth2/v2.0/token``, by ``grant_type`` (one module each):
  ``client_credentials`` (RFC 6749 §4.4) with a secret in the form or HTTP Basic (§2.3.1), or
  a client assertion (RFC 7523 §2.2) signed with a registered certificate (``certificates``,
  or Subject Name/Issuer trust with ``x5c``: ``trusted_subjects``) or a federated token
  (``federations``); ``password`` (RFC 6749 §4.3) for ``public_clients`` and ``users``; the
  device code (RFC 8628 §3.4), approved as ``device_sign_in``; and on-behalf-of
  (``urn:ietf:params:oauth:grant-type:jwt-bearer`` with ``requested_token_use=on_behalf_of``):
  a confidential client, authenticated as for client credentials, trades a user's token
  whose ``aud`` is its client id or one of its ``app_id_uris`` for a token to the scope's
  resource carrying the same user (``oid``, ``upn``, ``tid``, ``idtyp`` user, ``scp``).
- ``POST /{tenant}/oauth2/v2.0/devicecode``: the device authorization request (RFC 8628 §3.1).
- ``GET /common/userrealm/{username}``: the user-realm lookup MSAL makes before the password
  grant. MSAL sends it to port 443 of the authority's host whatever port the authority names,
  so a password-grant test runs this provider with ``port=443``.

Errors carry Entra's JSON shape and AADSTS codes. On-behalf-of refuses, with invalid_grant,
an expired or not yet valid user token (AADSTS500133), one signed by a key not in the JWKS
or not matching its signature (50013), one for another audience (500131) or another tenant
(7000012), and, after ``require_consent()``, any (65001 with ``suberror`` consent_required).

Issued tokens look like Entra's v1 tokens (``ver`` 1.0; ``idtyp`` app, or user for the user
grants and on-behalf-of) with ``tid`` the tenant's GUID (``tenant_id``), signed by the current
key. Methods for tests of a proxy that validates users' tokens:

- ``user_token(audience=..., version=1 or 2, ...)``: a member's access token as Entra issues
  it for a gateway app (v1: ``aud`` the App ID URI, ``iss`` ``https://sts.windows.net/{tid}/``;
  v2: ``aud`` the client id, ``iss`` ``{authority_host}/{tid}/v2.0``), optionally with groups,
  roles, chosen times, another tenant, an older published key or an unknown one.
- ``rotate_signing_key(keep_old=False)`` and ``retire_signing_key(kid)``; ``jwks_requests``.
- ``require_consent(client_id, scope)`` / ``grant_consent(...)``; ``obo_token_lifetime``.
- ``token_requests(scope, grant_type=..., client_id=..., user_oid=...)``: the recorded
  requests; on-behalf-of ones carry the user's ``oid`` as ``user_oid``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from aiohttp import web

from proxy.testing import _client_credentials, _on_behalf_of, _password
from proxy.testing._device_code import GRANT as DEVICE_CODE
from proxy.testing._device_code import DeviceCodes
from proxy.testing._directory import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT,
    Directory,
)
from proxy.testing._entra import (
    DESCRIPTIONS,
    EntraError,
    ScriptedFailures,
    basic_credentials,
    correlation_id,
    error_body,
    unsupported_grant,
)
from proxy.testing._grant import Call, Granted, Outcome, TokenRequest, redacted, resource_scope
from proxy.testing._server import LocalServer
from proxy.testing.ca import LocalCA

__all__ = ["DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "IdentityProvider", "TokenRequest"]

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class IdentityProvider(LocalServer, Directory):
    """Entra-like token service on loopback HTTPS; use as ``async with``.

    The directory's attributes (``tenant``, ``clients``, ``users``...) are described on
    :class:`proxy.testing._directory.Directory`. Also safe to change between requests:

    - ``delay``: seconds to wait before answering each token request.
    - ``malformed``: answer token requests with 200 and a broken JSON body.
    - ``keys_unavailable``: answer the keys document with 503 (an outage of that endpoint).

    Read by tests:

    - ``requests``: every token request in arrival order, recorded before validation.
    - ``realm_lookups``: user names looked up at ``/common/userrealm``.
    - ``jwks_requests``: how many times the keys document was fetched.
    """

    def __init__(
        self,
        ca: LocalCA,
        *,
        tenant: str = DEFAULT_TENANT,
        clients: Mapping[str, str] | None = None,
        token_lifetime: float = 3600.0,
        app_id_uris: Mapping[str, Sequence[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        LocalServer.__init__(self, host=host, port=port, ssl_context=ca.server_context())
        Directory.__init__(
            self,
            tenant=tenant,
            clients=clients,
            token_lifetime=token_lifetime,
            app_id_uris=app_id_uris,
        )
        self.delay = 0.0
        self.malformed = False
        self.keys_unavailable = False
        self.requests: list[TokenRequest] = []
        self.realm_lookups: list[str] = []
        self.jwks_requests = 0
        self._device_codes = DeviceCodes()
        self._failures = ScriptedFailures()

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._jwks)
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

    def token_requests(
        self,
        scope: str | None = None,
        *,
        grant_type: str | None = None,
        client_id: str | None = None,
        user_oid: str | None = None,
    ) -> list[TokenRequest]:
        """Recorded token requests, optionally only those with the given scope, grant type,
        client or (on-behalf-of) user."""
        wanted = {"scope": scope, "grant_type": grant_type, "client_id": client_id,
                  "user_oid": user_oid}  # fmt: skip
        return [
            r
            for r in self.requests
            if all(v is None or getattr(r, k) == v for k, v in wanted.items())
        ]

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
        self._failures.script(EntraError(status, error, code, description, retry_after), times)

    def clear_failure(self) -> None:
        """Answer token requests normally again."""
        self._failures.script(None, None)

    async def _metadata(self, request: web.Request) -> web.Response:
        # Endpoints on the host the client asked (as Entra's name its own host), so a client
        # that reached it under another name (through a proxy) keeps using that name; the
        # issuer is the authority's, whatever the name.
        tenant = request.match_info["tenant"]
        base = f"{self._origin(request)}/{tenant}"
        issuer = f"{self.authority_host}/{tenant}/v2.0"
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
                "issuer": issuer,
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

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        if self.keys_unavailable:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        return web.json_response(self.jwks)

    def _origin(self, request: web.Request) -> str:
        """``https://`` and the host (and port) the request was sent to."""
        return f"https://{request.host}" if request.host else self.authority_host

    async def _user_realm(self, request: web.Request) -> web.Response:
        username = request.match_info["username"]
        self.realm_lookups.append(username)
        return web.json_response(_password.user_realm(username, self.users))

    async def _device_code(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text(), keep_blank_values=True))
        return web.json_response(self._device_codes.authorize(form, self.authority_host))

    def _grant(self, grant: str, call: Call) -> Outcome:
        if grant == _client_credentials.GRANT:
            return _client_credentials.check(call, self)
        if grant == _password.GRANT:
            return _password.check(call, self)
        if grant == DEVICE_CODE:
            return self._device_codes.check(call, self)
        if grant == _on_behalf_of.GRANT:
            return _on_behalf_of.check(call, self)
        return unsupported_grant(grant)

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text(), keep_blank_values=True))
        basic = basic_credentials(request.headers.get("Authorization", ""))
        client_id = basic[0] if basic else form.get("client_id", "")
        secret = basic[1] if basic else form.get("client_secret")
        grant = form.get("grant_type", "")
        scope = form.get("scope", "")
        if grant == DEVICE_CODE:
            scope = self._device_codes.scope(form.get("device_code", ""))
        elif grant in (_password.GRANT, _on_behalf_of.GRANT):
            scope = resource_scope(scope)
        record = TokenRequest(
            tenant=request.match_info["tenant"],
            client_id=client_id,
            scope=scope,
            grant_type=grant,
            time=time.time(),
            form=redacted(form),
            user_oid=_on_behalf_of.assertion_oid(form) if grant == _on_behalf_of.GRANT else None,
        )
        self.requests.append(record)
        failure = self._failures.take()
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        endpoint = f"{self._origin(request)}/{record.tenant}/oauth2/v2.0/token"
        call = Call(form, record.tenant, client_id, secret, scope, endpoint)
        outcome = failure or self._grant(grant, call)
        if isinstance(outcome, EntraError):
            return self._error(request, outcome, client_id)
        if self.malformed:
            return web.Response(
                text='{"token_type": "Bearer", "acc', content_type="application/json"
            )
        return self._answer(outcome, client_id)

    def _error(self, request: web.Request, problem: EntraError, client_id: str) -> web.Response:
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

    def _answer(self, granted: Granted, client_id: str) -> web.Response:
        lifetime = self.token_lifetime if granted.lifetime is None else granted.lifetime
        expires_in = math.ceil(lifetime)
        token = self._issue(client_id, granted.audience, granted.identity, lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": token,
                **({"scope": granted.scope} if granted.scope is not None else {}),
            },
            headers=_NO_STORE,
        )
