"""Shared fixtures: a local HTTPS identity provider, echo upstreams and a running proxy.

Everything is a real server on 127.0.0.1; nothing in MSAL or aiohttp is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from proxy import observe
from proxy.app import create_app
from proxy.config import Config, from_dict
from proxy.server import listen, runner_for
from proxy.testing import EchoUpstream, IdentityProvider, LocalCA

SECRET = "test-secret-Zq8~xK2"
CLIENT = "test-client"


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="session")
def ca_file(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ca.write_ca_file(tmp_path_factory.mktemp("ca") / "ca.pem")


@pytest.fixture
async def idp(ca: LocalCA) -> AsyncIterator[IdentityProvider]:
    async with IdentityProvider(ca, clients={CLIENT: SECRET}) as server:
        yield server


@contextlib.asynccontextmanager
async def idp_on_443(
    ca: LocalCA, *, public_client: str, users: Mapping[str, str]
) -> AsyncIterator[IdentityProvider]:
    """The provider on port 443, for the password grant: MSAL's user-realm lookup ignores the
    authority's port. Skips the test when the port cannot be bound."""
    server = IdentityProvider(ca, port=443)
    server.public_clients.add(public_client)
    server.users.update(users)
    try:
        await server.start()
    except OSError as e:
        pytest.skip(f"the password grant needs 127.0.0.1:443 for MSAL's user-realm lookup: {e}")
    try:
        yield server
    finally:
        await server.close()


def from_peer(app: web.Application, remote: str) -> web.Application:
    """``app`` seeing every request as coming from ``remote``, as a listener on another address
    (or a dual-stack one) would report it; the middleware runs before the guard."""

    @web.middleware
    async def remote_is(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request.clone(remote=remote))  # type: ignore[no-any-return]

    app.middlewares.insert(0, remote_is)
    return app


@pytest.fixture
async def echo() -> AsyncIterator[EchoUpstream]:
    async with EchoUpstream() as server:
        yield server


@pytest.fixture
async def tls_echo(ca: LocalCA) -> AsyncIterator[EchoUpstream]:
    async with EchoUpstream(ssl_context=ca.server_context()) as server:
        yield server


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged during the test, at debug level, as JSON lines."""
    stream = io.StringIO()
    observe.configure("debug", stream=stream, json=True, cache=False)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@dataclass
class Proxy:
    url: str
    config: Config
    app: web.Application


StartProxy = Callable[..., Awaitable[Proxy]]


def config_dict(
    idp: IdentityProvider, ca_file: Path | None, routes: list[dict[str, Any]], **tables: Any
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "identities": {
            "default": {
                "tenant_id": idp.tenant,
                "client_id": CLIENT,
                "client_secret": SECRET,
                "authority_host": idp.authority_host,
            }
        },
        "routes": routes,
        "outbound": {"ca_file": str(ca_file)} if ca_file else {},
        "tokens": {"prefetch": False},
    }
    for key, value in tables.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` as `ppproxy serve` does (its listeners too), on a free port of 127.0.0.1."""
    runner = runner_for(app)
    await runner.setup()
    return runner, await listen(runner, "127.0.0.1", 0)


@pytest.fixture
async def start_proxy(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> AsyncIterator[StartProxy]:
    """Start a proxy; by default one route /echo -> the echo upstream, identity -> ``idp``."""
    runners: list[web.AppRunner] = []

    async def start(
        routes: list[dict[str, Any]] | None = None,
        *,
        ca: Path | bool | None = True,
        env: Mapping[str, str] | None = None,
        raw: dict[str, Any] | None = None,
        **tables: Any,
    ) -> Proxy:
        if routes is None:
            routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
        ca_path = ca_file if ca is True else (ca or None)
        data = raw if raw is not None else config_dict(idp, ca_path, routes, **tables)
        config = from_dict(data, env or {}, base_dir=Path.cwd())
        app = create_app(config)
        runner, url = await serve_app(app)
        runners.append(runner)
        return Proxy(url, config, app)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def raw_exchange(url: str, request: bytes, *, wait: float = 10) -> bytes:
    """Send ``request`` bytes as they are and read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), wait)
    finally:
        writer.close()
