"""A local stand-in for BAP's admin applications API, recording every call.

``PUT /providers/Microsoft.BusinessAppPlatform/adminApplications/{id}?api-version=2020-10-01``
registers an application, ``GET .../adminApplications?api-version=2020-10-01`` lists them.
Requests need a bearer token; its claims are recorded unverified (check them with
``IdentityProvider.verify``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from aiohttp import web

from proxy.testing._server import LocalServer

PREFIX = "/providers/Microsoft.BusinessAppPlatform/adminApplications"
API_VERSION = "2020-10-01"


@dataclass(frozen=True, slots=True)
class AdminCall:
    method: str
    path_qs: str
    token: str


class AdminApplications(LocalServer):
    """Plain HTTP on loopback (HTTPS with ``ssl_context``); ``calls`` records every request,
    ``applications`` the registered application IDs."""

    def __init__(
        self,
        *,
        tenant: str = "test-tenant",
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        super().__init__(host=host, port=port, ssl_context=ssl_context)
        self.tenant = tenant
        self.calls: list[AdminCall] = []
        self.applications: list[str] = []

    @property
    def url(self) -> str:
        return self.base_url

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        app = web.Application()
        app.router.add_put(PREFIX + "/{app_id}", self._register)
        app.router.add_get(PREFIX, self._list)
        return web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)

    def _record(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        self.calls.append(AdminCall(request.method, request.path_qs, token))
        if scheme.lower() != "bearer" or not token:
            return web.json_response(
                {"error": {"code": "MissingAuthenticationToken", "message": "No token."}},
                status=401,
            )
        if request.query.get("api-version") != API_VERSION:
            return web.json_response(
                {"error": {"code": "InvalidApiVersion", "message": "Bad api-version."}},
                status=400,
            )
        return None

    async def _register(self, request: web.Request) -> web.Response:
        refused = self._record(request)
        if refused is not None:
            return refused
        app_id = request.match_info["app_id"]
        if app_id not in self.applications:
            self.applications.append(app_id)
        return web.json_response({"applicationId": app_id, "tenantId": self.tenant})

    async def _list(self, request: web.Request) -> web.Response:
        refused = self._record(request)
        if refused is not None:
            return refused
        return web.json_response(
            {"value": [{"applicationId": a, "tenantId": self.tenant} for a in self.applications]}
        )
