"""A local stand-in for App Service's managed identity endpoint (``IDENTITY_ENDPOINT`` with
the ``X-IDENTITY-HEADER`` secret, api-version 2019-08-01), issuing the identity provider's
tokens.

Set ``IDENTITY_ENDPOINT`` to ``endpoint.url`` and ``IDENTITY_HEADER`` to ``endpoint.header``
in the process environment: MSAL's ManagedIdentityClient reads them from there.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from proxy.testing._server import LocalServer
from proxy.testing.idp import IdentityProvider

SYSTEM_ASSIGNED_CLIENT_ID = "system-assigned-mi"


@dataclass(frozen=True, slots=True)
class IdentityRequest:
    """One request seen by the endpoint (the header's value is not kept)."""

    resource: str
    api_version: str
    selector: tuple[str, str] | None  # ("client_id" | "mi_res_id" | "object_id", value)
    header_ok: bool


class ManagedIdentityEndpoint(LocalServer):
    """``GET /msi/token?api-version=2019-08-01&resource=...[&client_id=|mi_res_id=|object_id=]``.

    ``user_assigned`` maps each selector (``("client_id", id)``, ``("mi_res_id", id)``,
    ``("object_id", id)``) to the identity's client ID; without a selector the system-assigned
    identity answers. Tokens come from ``idp`` (so ``idp.verify`` checks them) with ``aud`` the
    resource, as Entra issues them.
    """

    def __init__(
        self,
        idp: IdentityProvider,
        *,
        user_assigned: dict[tuple[str, str], str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, ssl_context=None)
        self.idp = idp
        self.header = secrets.token_hex(16)
        self.user_assigned = dict(user_assigned or {})
        self.requests: list[IdentityRequest] = []

    @property
    def url(self) -> str:
        """The value for ``IDENTITY_ENDPOINT``."""
        return f"{self.base_url}/msi/token"

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        app = web.Application()
        app.router.add_get("/msi/token", self._token)
        return web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)

    async def _token(self, request: web.Request) -> web.Response:
        query = request.query
        selectors = [(k, query[k]) for k in ("client_id", "mi_res_id", "object_id") if k in query]
        header_ok = secrets.compare_digest(
            request.headers.get("X-IDENTITY-HEADER", ""), self.header
        )
        resource = query.get("resource", "")
        self.requests.append(
            IdentityRequest(
                resource, query.get("api-version", ""), selectors[0] if selectors else None,
                header_ok,
            )
        )  # fmt: skip
        if not header_ok:
            return _error(401, "Unauthorized: the X-IDENTITY-HEADER is missing or wrong.")
        if query.get("api-version") != "2019-08-01":
            return _error(400, "Unsupported api-version.")
        if not resource:
            return _error(400, "The resource parameter is required.")
        if len(selectors) > 1:
            return _error(400, "Only one of client_id, mi_res_id or object_id may be given.")
        client_id = self.user_assigned.get(selectors[0]) if selectors else SYSTEM_ASSIGNED_CLIENT_ID
        if client_id is None:
            return _error(
                400,
                "No User Assigned or Delegated Managed Identity found for specified "
                "ClientId/ResourceId/PrincipalId.",
            )
        lifetime = self.idp.token_lifetime
        # The token's audience is the resource exactly: the idp strips "/.default" from a scope.
        token = self.idp.app_token(client_id, resource + "/.default", lifetime)
        return web.json_response(
            {
                "access_token": token,
                "expires_on": str(math.ceil(time.time() + lifetime)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"statusCode": status, "message": message}, status=status)
