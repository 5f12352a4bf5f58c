"""Wiring only: ``create_app`` builds the aiohttp application from a configuration."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from . import guard
from .config import Config
from .errors import TokenUnavailable
from .forward import Forwarder
from .identity import MsalProvider
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics, StateCollector
from .tap import Tap
from .tap import install as install_tap
from .tokens import CachingProvider, TokenProvider

SESSION = web.AppKey("session", aiohttp.ClientSession)
PROVIDERS = web.AppKey("providers", dict[str, TokenProvider])
CONFIG = web.AppKey("config", Config)


@dataclass(slots=True)
class ProxyState:
    """Process-wide state that the lifecycle (start, reload, stop) changes and handlers only
    read: a reload swaps these references at once; requests in flight keep the old ones."""

    config: Config
    providers: dict[str, TokenProvider]
    draining: bool = False
    forwarder: Forwarder | None = None
    retired: set[asyncio.Task[None]] = field(default_factory=set)


STATE = web.AppKey("state", ProxyState)
METRICS = web.AppKey("metrics", Metrics)
TAP = web.AppKey("tap", Tap)  # present only when [tap] is enabled

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
        # The environment was read once at load (outbound.proxy_for); trust_env would consult
        # it, and ~/.netrc, on every request, in worker threads.
        trust_env=False,
    )


def create_app(
    config: Config,
    *,
    token_providers: Mapping[str, TokenProvider] | None = None,
    metrics_dir: str | None = None,
) -> web.Application:
    """The proxy application. ``token_providers`` (identity name -> provider) replaces MSAL;
    ``metrics_dir`` switches metrics to multiprocess mode (several workers share it)."""
    app = web.Application(client_max_size=0)
    app[CONFIG] = config  # as started: listeners and the tap are fixed for the process
    providers = _providers(config, {}, token_providers or {})
    state = app[STATE] = ProxyState(config, providers)
    app[PROVIDERS] = providers
    metrics = app[METRICS] = Metrics(metrics_dir)
    tap = Tap(config.tap) if config.tap.enabled else None

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = app[SESSION] = build_session(config)
        _install_forwarder(app, config, providers, session, tap)
        await _prefetch(config, providers)
        sync = asyncio.create_task(_sync_metrics(metrics)) if metrics_dir else None
        yield
        if sync is not None:
            sync.cancel()
        await session.close()
        for task in list(state.retired):
            task.cancel()
        for provider in state.providers.values():
            if isinstance(provider, CachingProvider):
                await provider.close()

    async def forward(request: web.Request) -> web.StreamResponse:
        forwarder = state.forwarder
        assert forwarder is not None  # set before the first request is accepted
        return await forwarder.handle(request)

    expect = guard.install(app, config)
    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/_proxy/livez", livez)
    app.router.add_get("/_proxy/readyz", readyz)
    app.router.add_get("/_proxy/metrics", metrics_endpoint)
    if tap is not None:
        app[TAP] = tap
        install_tap(app, tap)
    app.router.add_route("*", "/{tail:.*}", forward, expect_handler=expect)
    return app


def _providers(
    config: Config, old: Mapping[str, TokenProvider], given: Mapping[str, TokenProvider]
) -> dict[str, TokenProvider]:
    """One cached provider per identity; an unchanged identity keeps its provider (and tokens)."""
    providers: dict[str, TokenProvider] = dict(given)
    for name, identity in config.identities.items():
        if name in providers:
            continue
        previous = old.get(name)
        if isinstance(previous, CachingProvider) and previous.built_from == (
            identity,
            config.outbound,
            config.tokens,
        ):
            providers[name] = previous
            continue
        cache = CachingProvider(
            MsalProvider(identity, config.outbound), wait_timeout=config.tokens.wait_timeout
        )
        cache.built_from = (identity, config.outbound, config.tokens)
        providers[name] = cache
    return providers


def _install_forwarder(
    app: web.Application,
    config: Config,
    providers: dict[str, TokenProvider],
    session: aiohttp.ClientSession,
    tap: Tap | None,
) -> None:
    state, metrics = app[STATE], app[METRICS]
    forwarder = Forwarder(
        session,
        providers,
        config.outbound,
        config.routes,
        main_port=config.server.port,
        metrics=metrics,
        tap=tap,
    )
    metrics.set_state(StateCollector(providers, forwarder.in_flight, forwarder.limiters))
    state.forwarder, state.providers, state.config = forwarder, providers, config


async def _prefetch(config: Config, providers: Mapping[str, TokenProvider]) -> None:
    if not config.tokens.prefetch:
        return
    for name, provider in providers.items():
        if isinstance(provider, CachingProvider):
            await provider.prefetch(sorted({r.scope for r in config.routes if r.identity == name}))


def fixed_settings_changed(old: Config, new: Config) -> list[str]:
    """What a reload cannot change in a running process (it needs a restart)."""
    changed = []
    if (old.server.host, old.server.port, old.server.workers) != (
        new.server.host,
        new.server.port,
        new.server.workers,
    ):
        changed.append("server.host, server.port or server.workers")
    if {r.name: r.port for r in old.routes if r.port} != {
        r.name: r.port for r in new.routes if r.port
    }:
        changed.append("routes[].port")
    if old.outbound != new.outbound:
        changed.append("[outbound]")
    if old.tap != new.tap:
        changed.append("[tap]")
    return changed


async def reload(app: web.Application, new: Config) -> list[str]:
    """Serve ``new`` from now on: routes, identities, tokens settings, access and policies.

    Requests in flight finish with what they started with. Identities that did not change
    keep their provider and tokens; the others are closed once in-flight requests had
    ``server.shutdown_timeout`` to finish. Returns why the reload was refused, if it was.
    """
    state = app[STATE]
    changed = fixed_settings_changed(state.config, new)
    if changed:
        return [f"{what} changed: restart the proxy for that" for what in changed]
    old_providers = state.providers
    providers = _providers(new, old_providers, {})
    _install_forwarder(app, new, providers, app[SESSION], app.get(TAP))
    guard.reconfigure(app, new)
    retired = [p for p in old_providers.values() if p not in providers.values()]
    if retired:
        task = asyncio.create_task(_close_later(retired, new.server.shutdown_timeout))
        state.retired.add(task)
        task.add_done_callback(state.retired.discard)
    await _prefetch(new, providers)
    return []


async def _close_later(providers: list[TokenProvider], delay: float) -> None:
    await asyncio.sleep(delay)
    for provider in providers:
        if isinstance(provider, CachingProvider):
            await provider.close()


async def _sync_metrics(metrics: Metrics) -> None:
    """Several workers: publish this worker's live state once a second."""
    while True:
        metrics.sync()
        await asyncio.sleep(1.0)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text format (one process; see docs/operations.md for several workers)."""
    return web.Response(
        body=request.app[METRICS].render(), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


async def livez(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """200 when every route has a usable token or can get one now, else 503 with the reasons.

    Per (identity, scope): whether a token is usable, seconds until it expires, the last
    refresh and the last error. 503 at once while the process drains for shutdown.
    """
    state = request.app[STATE]
    config, providers = state.config, state.providers
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
            error = {"error": "internal_error", "message": type(result).__name__}
            check.update(ok=False, error=error)
        else:
            check.update(ok=True, expires_in=round(result.remaining()))
        provider = providers[identity]
        if isinstance(provider, CachingProvider):
            status = provider.status().get(scope)
            if status is not None:
                check.update(
                    last_refresh=_iso(status.last_refresh),
                    last_error=status.last_error,
                    retry_in=None if status.retry_in is None else round(status.retry_in, 1),
                )
        checks.append(check)
    draining = state.draining
    ready = not draining and all(c["ok"] for c in checks)
    body: dict[str, Any] = {"status": "draining" if draining else "ready" if ready else "not_ready"}
    # On a gateway the details (identities, scopes, Entra errors) are for key holders only.
    if guard.is_trusted(request):
        body["tokens"] = checks
    warning = guard.anonymous_warning(config)
    if warning is not None:
        body["warnings"] = [warning]
    return web.Response(
        status=200 if ready else 503,
        text=json.dumps(body),
        content_type="application/json",
    )


def _iso(wall: float | None) -> str | None:
    return None if wall is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
