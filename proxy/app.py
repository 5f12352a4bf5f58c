"""Wiring only: ``create_app`` builds the aiohttp application from a configuration."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from .config import Config
from .errors import TokenUnavailable
from .forward import Forwarder
from .identity import MsalProvider
from .routing import RouteTable
from .tokens import CachingProvider, TokenProvider

SESSION = web.AppKey("session", aiohttp.ClientSession)
PROVIDERS = web.AppKey("providers", dict[str, TokenProvider])
CONFIG = web.AppKey("config", Config)

# Headers aiohttp's client would add on its own; the upstream sees only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def client_ssl_context(config: Config) -> ssl.SSLContext:
    """TLS for the upstreams: ``outbound.ca_file`` alone when set, else the system's trust."""
    ca_file = config.outbound.ca_file
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def build_session(config: Config) -> aiohttp.ClientSession:
    """The one upstream session: pooled, no cookies, no decompression, no extra headers."""
    out = config.outbound
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_ssl_context(config), limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        # sock_read is the time between bytes: long downloads are never cut by a total.
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=out.connect_timeout,
            sock_connect=out.connect_timeout,
            sock_read=out.read_timeout,
        ),
        # HTTPS_PROXY/NO_PROXY apply unless outbound.proxy names the proxy explicitly.
        trust_env=out.proxy is None,
    )


def create_app(
    config: Config, *, token_providers: Mapping[str, TokenProvider] | None = None
) -> web.Application:
    """The proxy application. ``token_providers`` (identity name -> provider) replaces MSAL."""
    app = web.Application(client_max_size=0)
    app[CONFIG] = config
    providers: dict[str, TokenProvider] = dict(token_providers or {})
    for name, identity in config.identities.items():
        if name not in providers:
            providers[name] = CachingProvider(
                MsalProvider(identity, config.outbound), wait_timeout=config.tokens.wait_timeout
            )
    app[PROVIDERS] = providers
    forwarder_box: list[Forwarder] = []

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = build_session(config)
        app[SESSION] = session
        forwarder_box.append(
            Forwarder(session, RouteTable(config.routes), providers, config.outbound)
        )
        if config.tokens.prefetch:
            for name, provider in providers.items():
                if isinstance(provider, CachingProvider):
                    scopes = {r.scope for r in config.routes if r.identity == name}
                    await provider.prefetch(sorted(scopes))
        yield
        await session.close()
        for provider in providers.values():
            if isinstance(provider, CachingProvider):
                await provider.close()

    async def forward(request: web.Request) -> web.StreamResponse:
        return await forwarder_box[0].handle(request)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/_proxy/livez", livez)
    app.router.add_get("/_proxy/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def livez(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """200 when every route has a usable token or can get one now, else 503 with the reasons."""
    config, providers = request.app[CONFIG], request.app[PROVIDERS]
    pairs = sorted({(r.identity, r.scope) for r in config.routes})
    results = await asyncio.gather(
        *(providers[identity].get(scope) for identity, scope in pairs), return_exceptions=True
    )
    checks: list[dict[str, Any]] = []
    for (identity, scope), result in zip(pairs, results, strict=True):
        check: dict[str, Any] = {
            "identity": identity,
            "scope": scope,
            "routes": [r.name for r in config.routes if (r.identity, r.scope) == (identity, scope)],
        }
        if isinstance(result, TokenUnavailable):
            check.update(ok=False, error=result.body())
        elif isinstance(result, BaseException):
            check.update(
                ok=False, error={"error": "internal_error", "message": type(result).__name__}
            )
        else:
            check.update(ok=True, expires_in=round(result.remaining()))
        checks.append(check)
    ready = all(c["ok"] for c in checks)
    return web.Response(
        status=200 if ready else 503,
        text=json.dumps({"status": "ready" if ready else "not_ready", "tokens": checks}),
        content_type="application/json",
    )
