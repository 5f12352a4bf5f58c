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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(slots=True)
class _Failure:
    error: EntraError
    remaining: int | None


class IdentityProvider(LocalServer, Directory):
    """Entra-like token service on loopback HTTPS; use as ``async with``.

    The directory's attributes (``tenant``, ``clients``, ``users``...) are described on
    :class:`proxy.testing._directory.Directory`. Also safe to change between requests:

    - ``delay``: seconds to wait before answering each token request.
    - ``malformed``: answer token requests with 200 and a broken JSON body.

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
        self.requests: list[TokenRequest] = []
        self.realm_lookups: list[str] = []
        self.jwks_requests = 0
        self._device_codes = DeviceCodes()
        self._failure: _Failure | None = None

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
        self._failure = _Failure(EntraError(status, error, code, description, retry_after), times)

    def clear_failure(self) -> None:
        """Answer token requests normally again."""
        self._failure = None

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

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response(self.jwks)

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
        failure = self._take_failure()
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        endpoint = f"{self.authority_host}/{record.tenant}/oauth2/v2.0/token"
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
        token = self.issue(client_id, granted.audience, granted.identity, lifetime)
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

    def _take_failure(self) -> EntraError | None:
        failure = self._failure
        if failure is None:
            return None
        if failure.remaining is not None:
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failure = None
        return failure.error
