"""Wiring only: ``create_app`` builds the aiohttp application from a configuration."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from . import endpoints, tap, trust
from .accesslog import AccessLog
from .config import Config
from .exchange import Observer, Observers
from .forward import Forwarder
from .guard import Guard
from .metrics import Metrics
from .runtime import Runtime
from .throttle import Throttling
from .tokens import TokenProvider

if TYPE_CHECKING:  # the type get_info must return, named only in aiohttp's annotations
    from aiohttp.web_urldispatcher import _InfoDict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
RUNTIME = web.AppKey("runtime", Runtime)
TAP = web.AppKey("tap", tap.Tap)  # present only when [tap] is enabled

# Headers aiohttp's client would add on its own; the upstream sees only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def client_ssl_context(config: Config) -> ssl.SSLContext:
    """TLS for the upstreams: the same trust as for the identity provider (proxy/trust.py)."""
    return trust.client_context(config.outbound.ca_file)


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
    observers: Sequence[Observer] = (),
) -> web.Application:
    """The proxy application. ``token_providers`` (identity name -> provider) replaces MSAL;
    ``metrics_dir`` switches metrics to multiprocess mode (several workers share it);
    ``observers`` are called for every exchange after the access log, metrics and tap."""
    app = web.Application(client_max_size=0)
    metrics = Metrics(metrics_dir)
    throttling = Throttling()  # records each request's throttle wait as it finishes
    for metric in throttling.metrics():
        metrics.add(metric)
    watching: list[Observer] = [AccessLog(), metrics, throttling]
    the_tap = tap.Tap(config.tap) if config.tap.enabled else None
    if the_tap is not None:
        watching.append(the_tap)
    watching.extend(observers)
    runtime = app[RUNTIME] = Runtime(
        config, Observers(watching), given=token_providers, throttling=throttling
    )
    metrics.watch(runtime.snapshot)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        runtime.session = build_session(config)
        runtime.prefetch()
        sync = runtime.spawn(_sync_metrics(metrics)) if metrics_dir else None
        yield
        if sync is not None:
            sync.cancel()
            metrics.sync()  # the last second's numbers, before this worker stops
        await runtime.session.close()
        await runtime.close()

    guard = Guard(runtime)
    app.middlewares.append(guard.middleware)
    app.cleanup_ctx.append(lifecycle)
    endpoints.install(app, runtime, metrics)
    if the_tap is not None:
        app[TAP] = the_tap
        tap.install(app, the_tap, runtime)
    forwarder = Forwarder(runtime)
    app.router.register_resource(_EveryPath(forwarder.handle, guard.expect))
    return app


class _EveryPath(web.AbstractResource):
    """Every path and method not taken by a more specific route, to one handler: the
    forwarder. aiohttp's ``/{tail:.*}`` would match a pattern and unquote the tail of every
    request only for nobody to read it."""

    def __init__(self, handler: Handler, expect: ExpectHandler) -> None:
        super().__init__()
        self._route = web.ResourceRoute(hdrs.METH_ANY, handler, self, expect_handler=expect)

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        return URL.build(path="/")

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo, set[str]]:
        return web.UrlMappingMatchInfo({}, self._route), set()

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the proxy's application is never mounted under a prefix")

    def get_info(self) -> _InfoDict:
        return {"path": "/"}

    def raw_match(self, path: str) -> bool:
        return True

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter([self._route])


async def _sync_metrics(metrics: Metrics) -> None:
    """Several workers: publish this worker's live state once a second."""
    while True:
        metrics.sync()
        await asyncio.sleep(1.0)
