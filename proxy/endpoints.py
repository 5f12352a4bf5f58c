"""The proxy's own endpoints under ``/_proxy``: liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

from aiohttp import web
from yarl import URL

from . import access, paths
from .errors import ProxyError, TokenUnavailable
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .runtime import Runtime
from .timefmt import iso


def install(app: web.Application, runtime: Runtime, metrics: Metrics) -> None:
    """Add ``/_proxy/livez``, ``/_proxy/readyz`` and ``/_proxy/metrics`` to ``app``."""

    async def livez(request: web.Request) -> web.Response:
        """200 while the process runs."""
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        return await _readyz(request, runtime)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        """Prometheus text format (one process; see docs/operations.md for several workers)."""
        return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    app.router.add_get(paths.LIVEZ, livez)
    app.router.add_get(paths.READYZ, readyz)
    app.router.add_get(paths.METRICS, metrics_endpoint)


async def _readyz(request: web.Request, runtime: Runtime) -> web.Response:
    """200 when every route has a usable token or can get one now, else 503 with the reasons.

    Per (identity, scope): whether a token is usable, seconds until it expires, the last
    refresh and the last error (routes that act as the member need a token per member: not
    checked here); the upstreams' cool-downs in force (they do not make the proxy unready: it
    still answers). With ``[access.entra]``, whether the tenant's signing keys are in hand. 503
    at once while the process drains for shutdown.
    """
    state = runtime.state
    config, providers = state.config, state.providers
    pairs = sorted({(r.identity, r.scope) for r in config.routes if r.act_as != "user"})
    results = await asyncio.gather(
        *(providers[identity].token(scope) for identity, scope in pairs), return_exceptions=True
    )
    checks: list[dict[str, Any]] = []
    for (identity, scope), result in zip(pairs, results, strict=True):
        check: dict[str, Any] = {
            "identity": identity,
            "scope": scope,
            "routes": [
                r.name
                for r in config.routes
                if (r.identity, r.scope) == (identity, scope) and r.act_as != "user"
            ],
        }
        if isinstance(result, TokenUnavailable):
            check.update(ok=False, error=result.body())
        elif isinstance(result, BaseException):
            error = {"error": "internal_error", "message": type(result).__name__}
            check.update(ok=False, error=error)
        else:
            check.update(ok=True, expires_in=round(result.remaining()))
        status = providers[identity].status().get(scope)
        if status is not None:
            check.update(
                last_refresh=None if status.last_refresh is None else iso(status.last_refresh),
                last_error=status.last_error,
                retry_in=None if status.retry_in is None else round(status.retry_in, 1),
            )
        checks.append(check)
    signin = await _signin_check(runtime)
    draining = runtime.draining
    ready = not draining and all(c["ok"] for c in checks) and (signin is None or signin["ok"])
    body: dict[str, Any] = {"status": "draining" if draining else "ready" if ready else "not_ready"}
    # On a gateway the details (identities, scopes, Entra errors) are for key holders only.
    if access.CLIENT in request or not config.access.enabled:
        body["tokens"] = checks
        if signin is not None:
            body["signin"] = signin
        body["cooldowns"] = _cooldowns(runtime)
    warning = access.anonymous_warning(config)
    if warning is not None:
        body["warnings"] = [warning]
    return web.Response(
        status=200 if ready else 503,
        text=json.dumps(body),
        content_type="application/json",
    )


async def _signin_check(runtime: Runtime) -> dict[str, Any] | None:
    """Whether members can sign in: the tenant's signing keys fetched (fetched now if never)."""
    signin = runtime.state.signin
    if signin is None or runtime.session is None:
        return None
    with contextlib.suppress(ProxyError):  # the reason is in the status
        await signin.keys.ready(runtime.session)
    status = signin.status()
    last = status["last_fetch"]
    return {
        "ok": signin.keys.loaded,
        "tenant_id": signin.entra.tenant_id,
        "keys": status["keys"],
        "last_fetch": None if last is None else iso(last),
        "last_error": status["last_error"],
    }


def _cooldowns(runtime: Runtime) -> list[dict[str, Any]]:
    """The cool-downs in force: upstream origin, identity (and the member, on routes that act as
    one), seconds left and the routes held."""
    routes = runtime.state.config.routes
    found = []
    for c in runtime.throttling.cooldowns():
        held = [
            r.name
            for r in routes
            if r.identity == c.identity
            and str(URL(r.upstream).origin()) == c.upstream
            and (r.act_as == "user") == bool(c.member)  # a member's budget, or the service's
        ]
        entry: dict[str, Any] = {
            "upstream": c.upstream,
            "identity": c.identity,
            "seconds_left": math.ceil(c.seconds_left),
            "routes": held,
        }
        if c.member:
            entry["member"] = c.member
        found.append(entry)
    return found
