"""One loopback predicate, used everywhere: an IPv4-mapped IPv6 loopback address is loopback for
the guard, the tap, the exposure check and the configuration alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.access import exposure_problem
from proxy.app import create_app
from proxy.config import from_dict
from proxy.peers import is_loopback
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import config_dict, from_peer, serve_app

MAPPED = "::ffff:127.0.0.1"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        (MAPPED, True),
        ("[::ffff:127.0.0.1]", True),
        ("::ffff:7f00:1", True),  # the same address written in hex
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:10.0.0.1", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),  # noqa: S104  # a value under test, not a bind
        ("::", False),
        ("fe80::1%eth0", False),
        ("localhost.evil.example", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


Start = Callable[[str], Awaitable[str]]


@pytest.fixture
async def start_from(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> AsyncIterator[Start]:
    """A proxy (tap on) whose requests come from ``remote``, as a dual-stack listener reports
    a local IPv4 client."""
    runners: list[web.AppRunner] = []

    async def start(remote: str) -> str:
        routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
        raw = config_dict(idp, ca_file, routes, tap={"enabled": True})
        app = from_peer(create_app(from_dict(raw, {}, base_dir=Path.cwd())), remote)
        runner, url = await serve_app(app)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(("remote", "local"), [(MAPPED, True), ("192.0.2.7", False)])
async def test_mapped_loopback_peer_is_local_to_guard_and_tap(
    start_from: Start, client: aiohttp.ClientSession, remote: str, local: bool
) -> None:
    """The guard checks Host on /_proxy/metrics only for local peers (a browser on this machine),
    and the tap opens only to local peers: both judge the mapped address as 127.0.0.1."""
    url = await start_from(remote)
    async with client.get(f"{url}/_proxy/metrics", headers={"Host": "rebound.example"}) as r:
        assert r.status == (403 if local else 200)
    async with client.get(f"{url}/_proxy/tap/exchanges") as r:
        assert r.status == (200 if local else 403)


def test_mapped_loopback_in_the_configuration(idp: IdentityProvider, ca_file: Path) -> None:
    """Listening on the mapped address needs no [access]; an http:// upstream there is local."""
    routes = [{"name": "local", "prefix": "/l", "upstream": "http://[::ffff:127.0.0.1]:8000"}]
    raw = config_dict(idp, ca_file, routes, server={"host": MAPPED})
    config = from_dict(raw, {}, base_dir=Path.cwd())
    assert exposure_problem(config) is None
    assert config.routes[0].upstream == "http://[::ffff:127.0.0.1]:8000"
