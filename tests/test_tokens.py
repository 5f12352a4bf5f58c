"""Tokens end to end against the local identity provider: sharing, single flight, refresh
ahead, failures, and TLS trust for the identity provider."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.testing import EchoUpstream, IdentityProvider, LocalCA

from .conftest import CLIENT, SECRET, StartProxy

SCOPE_A = "https://a.example/.default"
SCOPE_B = "https://service.powerapps.com//.default"


def bearer(echo: EchoUpstream, index: int = -1) -> str:
    headers = {k.lower(): v for k, v in echo.requests[index].headers}
    return headers["authorization"].removeprefix("Bearer ")


async def test_same_scope_shares_one_token(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy(
        [
            {"name": "one", "prefix": "/one", "upstream": echo.url, "scope": SCOPE_A},
            {"name": "two", "prefix": "/two", "upstream": echo.url, "scope": SCOPE_A},
        ]
    )
    for path in ("/one/x", "/two/x", "/one/y"):
        async with client.get(proxy.url + path) as resp:
            assert resp.status == 200
    assert len(idp.requests) == 1
    assert len({bearer(echo, i) for i in range(3)}) == 1


async def test_different_scopes_never_share(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy(
        [
            {"name": "one", "prefix": "/one", "upstream": echo.url, "scope": SCOPE_A},
            {"name": "two", "prefix": "/two", "upstream": echo.url, "scope": SCOPE_B},
        ]
    )
    async with client.get(f"{proxy.url}/one/x") as resp:
        assert resp.status == 200
    async with client.get(f"{proxy.url}/two/x") as resp:
        assert resp.status == 200
    assert sorted(r.scope for r in idp.requests) == sorted([SCOPE_A, SCOPE_B])
    a, b = idp.verify(bearer(echo, 0)), idp.verify(bearer(echo, 1))
    assert (a["aud"], b["aud"]) == ("https://a.example", "https://service.powerapps.com/")


async def test_cold_start_single_flight(
    start_proxy: StartProxy, echo: EchoUpstream, idp: IdentityProvider
) -> None:
    """1000 concurrent requests over 2 scopes on a cold cache: one token request per scope."""
    idp.delay = 0.3  # keep the first fetch in flight while the rest arrive
    proxy = await start_proxy(
        [
            {"name": "one", "prefix": "/one", "upstream": echo.url, "scope": SCOPE_A},
            {"name": "two", "prefix": "/two", "upstream": echo.url, "scope": SCOPE_B},
        ],
        tokens={"wait_timeout": 30},
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> int:
            async with session.get(f"{proxy.url}/{('one', 'two')[i % 2]}/{i}") as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(i) for i in range(1000)))
    assert statuses == [200] * 1000
    assert sorted(r.scope for r in idp.requests) == sorted([SCOPE_A, SCOPE_B])


async def test_refresh_ahead_short_lived_tokens(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    """With 5-second tokens, requests over 8 s never wait for Entra and never carry an expired
    token; the refreshes happen in the background."""
    idp.token_lifetime = 5
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/first") as resp:
        assert resp.status == 200
    idp.delay = 0.5  # from now on, a request that waited for Entra would take >= 0.5 s
    slowest = 0.0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        started = time.monotonic()
        async with client.get(f"{proxy.url}/echo/again") as resp:
            assert resp.status == 200
        slowest = max(slowest, time.monotonic() - started)
        received_at = time.time()
        assert idp.verify(bearer(echo))["exp"] > received_at
        await asyncio.sleep(0.1)
    assert slowest < 0.4
    assert len(idp.requests) >= 3


async def test_token_unavailable_is_503_with_entra_error(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    idp.fail_with("invalid_client", code=7000215)
    proxy = await start_proxy()
    started = time.monotonic()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
        text = await resp.text()
    assert time.monotonic() - started < 5
    body = json.loads(text)
    assert body["error"] == "token_unavailable"
    assert body["entra_error"] == "invalid_client"
    assert "AADSTS7000215" in body["entra_error_description"]
    assert SECRET not in text
    assert echo.requests == []


async def test_repeated_failures_are_not_hammered(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    """After a failure, requests within the backoff get 503 at once without a new token request."""
    idp.fail_with("invalid_client")
    proxy = await start_proxy()
    for _ in range(20):
        async with client.get(f"{proxy.url}/echo/x") as resp:
            assert resp.status == 503
    assert len(idp.requests) == 1


async def test_slow_identity_provider_bounded_by_wait_timeout(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    idp.delay = 5
    proxy = await start_proxy(tokens={"wait_timeout": 0.5})
    started = time.monotonic()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "token_unavailable"
    assert time.monotonic() - started < 2


async def test_recovers_after_failure(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    idp.fail_with("temporarily_unavailable", status=503, times=1)
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 503
    for _ in range(40):
        await asyncio.sleep(0.1)
        async with client.get(f"{proxy.url}/echo/x") as resp:
            if resp.status == 200:
                break
    assert resp.status == 200


async def test_ca_file_beats_requests_ca_bundle(
    start_proxy: StartProxy,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REQUESTS_CA_BUNDLE and friends naming another CA cannot override outbound.ca_file."""
    other = LocalCA().write_ca_file(tmp_path / "other.pem")
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(var, str(other))
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 200


async def test_identity_provider_tls_is_verified(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With a ca_file that does not sign the identity provider's certificate, no token."""
    other = LocalCA().write_ca_file(tmp_path / "other.pem")
    proxy = await start_proxy(ca=other)
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 503
        assert (await resp.json())["entra_error"] == "authority_unreachable"
    assert echo.requests == []


async def test_environment_and_netrc_read_only_through_the_config(
    start_proxy: StartProxy,
    tls_echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A proxy variable in the process environment that the configuration did not get, and a
    ~/.netrc entry for the identity provider and upstream hosts, change nothing: no request goes
    to the dead proxy, no netrc credentials replace the client's or the route's token."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    proxy = await start_proxy([{"name": "t", "prefix": "/t", "upstream": tls_echo.url}], env={})
    async with client.get(f"{proxy.url}/t/x") as resp:
        assert resp.status == 200
    auth = dict((k.lower(), v) for k, v in tls_echo.requests[-1].headers)["authorization"]
    assert auth.startswith("Bearer ey")
    assert idp.requests[-1].client_id == CLIENT
