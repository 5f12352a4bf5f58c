"""Service protection (issue 14): Power Platform's 429s handled for the client, a route paced,
a client limited. Real servers: the Dataverse stand-in throttles as Dataverse does (429,
Retry-After, its error body and code); arrival times are measured at the upstream, with
tolerances that hold on a loaded machine.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import RUNTIME
from proxy.config import ConfigError, from_dict
from proxy.config.access import AccessClient
from proxy.config.rates import Rate
from proxy.config.route_options import RouteLimits
from proxy.errors import RateLimited, UpstreamBusy
from proxy.jwt_unverified import decode
from proxy.limits import Limiter
from proxy.rate_limit import ClientRates
from proxy.testing import DataverseUpstream, EchoUpstream, IdentityProvider
from proxy.throttle import retry_after

from .conftest import StartProxy, events
from .test_metrics import samples
from .upstreams import upstream

ACCOUNTS = "/dv/api/data/v9.2/accounts"
WHOAMI = "/dv/api/data/v9.2/WhoAmI"


@pytest.fixture
async def dv() -> AsyncIterator[DataverseUpstream]:
    async with DataverseUpstream() as server:
        yield server


def dv_route(dv: DataverseUpstream, **keys: Any) -> dict[str, Any]:
    return {"name": "dv", "prefix": "/dv", "upstream": dv.url, **keys}


async def metrics(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> dict[Any, float]:
    async with client.get(f"{url}/_proxy/metrics", headers=headers) as resp:
        return samples(await resp.text())


async def until(check: Any, wait: float = 10) -> None:
    deadline = time.monotonic() + wait
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- configuration ------------------------------------------------------------------------


def test_config_keys_defaults_and_errors() -> None:
    raw: dict[str, Any] = {
        "identities": {"a": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
        "routes": [{"name": "r", "upstream": "https://r.example"}],
    }
    route = from_dict(raw, {}, base_dir=Path()).routes[0].throttling
    assert (route.retry_throttled, route.max_throttle_wait, route.throttle_retries) == (True, 30, 3)
    assert route.rate_limit is None
    raw["routes"][0].update(
        rate_limit="6000/5m", max_throttle_wait=5, throttle_retries=0, retry_throttled=False
    )
    route = from_dict(raw, {}, base_dir=Path()).routes[0].throttling
    assert route.rate_limit is not None
    assert (route.rate_limit.count, route.rate_limit.seconds) == (6000, 300)
    assert route.rate_limit.interval == pytest.approx(0.05)
    assert (route.retry_throttled, route.max_throttle_wait, route.throttle_retries) == (
        False,
        5,
        0,
    )
    raw["routes"][0].update(rate_limit="6000 per 5m", max_throttle_wait=-1, throttle_retries=-2)
    raw["access"] = {
        "clients": [{"name": "c", "key_sha256": "ab" * 32, "rate_limit": "0/1h"}],
    }
    with pytest.raises(ConfigError) as e:
        from_dict(raw, {}, base_dir=Path())
    text = e.value.render()
    for key in (
        "routes[0].rate_limit",
        "routes[0].max_throttle_wait",
        "routes[0].throttle_retries",
        "access.clients[0].rate_limit",
    ):
        assert key in text


@pytest.mark.parametrize(
    ("rate", "count", "seconds"),
    [("100/60s", 100, 60), ("1000/1h", 1000, 3600), ("5/500ms", 5, 0.5), ("3 / 1.5m", 3, 90)],
)
def test_rate_forms(rate: str, count: int, seconds: float) -> None:
    raw = {
        "identities": {"a": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
        "routes": [{"name": "r", "upstream": "https://r.example", "rate_limit": rate}],
    }
    parsed = from_dict(raw, {}, base_dir=Path()).routes[0].throttling.rate_limit
    assert parsed is not None
    assert (parsed.count, parsed.seconds) == (count, seconds)


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after("2") == 2
    assert retry_after(" 0 ") == 0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("-1") is None
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 < (retry_after(later) or 0) <= 10
    assert retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0  # in the past: go now


# --- wait and resend ----------------------------------------------------------------------


async def test_429_is_waited_out_and_resent_with_the_same_body_and_a_valid_token(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    captured: io.StringIO,
) -> None:
    proxy = await start_proxy([dv_route(dv)])
    rule = dv.throttle(1, retry_after=1, method="POST", path="accounts")
    body = json.dumps({"name": "Contoso"}).encode()
    headers = {"Content-Type": "application/json"}
    async with client.post(f"{proxy.url}{ACCOUNTS}", data=body, headers=headers) as resp:
        assert resp.status == 204  # the client sees only the final answer
        assert "OData-EntityId" in resp.headers
    assert rule.refused == 1
    first, second = dv.requests
    assert second.arrived - first.arrived >= 0.95
    assert first.body == second.body == body
    token = (second.header("Authorization") or "").removeprefix("Bearer ")
    assert decode(token)[1]["exp"] > time.time() + 60  # still valid when resent
    assert len(idp.token_requests()) == 1  # from the cache, not a new one per attempt
    assert len(dv.records("accounts")) == 1
    (logged,) = [e for e in events(captured) if e["event"] == "request"]
    (throttled,) = [e for e in events(captured) if e["event"] == "upstream.throttled"]
    assert (throttled["route"], throttled["status"], throttled["retry_after"]) == ("dv", 429, 1)
    assert throttled["identity"] == "default"
    assert logged["throttle_retries"] == 1
    assert logged["throttle_wait_ms"] >= 950
    assert logged["upstream_ms"] < 900  # the wait is not the upstream's time
    got = await metrics(client, proxy.url)
    assert got[("ppproxy_upstream_throttled_total", (("route", "dv"),))] == 1
    assert got[("ppproxy_throttle_wait_seconds_count", (("route", "dv"),))] == 1
    assert got[("ppproxy_throttle_wait_seconds_sum", (("route", "dv"),))] >= 0.95


async def test_resends_stop_after_throttle_retries(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """The last 429 goes to the client as the upstream sent it: Dataverse's body and code."""
    proxy = await start_proxy([dv_route(dv, throttle_retries=1)])
    dv.throttle(5, retry_after=1)
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "0x80072322"
    assert len(dv.requests) == 2


async def test_retry_throttled_false_passes_the_429_and_still_cools_down(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv, retry_throttled=False)])
    dv.throttle(1, retry_after=1, reason="concurrency")
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "0x80072326"
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 200  # waited for the cool-down, then went
    first, second = dv.requests
    assert second.arrived - first.arrived >= 0.95


async def test_streamed_body_beyond_the_replay_buffer_is_not_resent(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv)], outbound={"replay_body_bytes": 16})
    dv.throttle(1, retry_after=1)
    body = json.dumps({"name": "x" * 1000}).encode()
    headers = {"Content-Type": "application/json"}
    async with client.post(f"{proxy.url}{ACCOUNTS}", data=body, headers=headers) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "0x80072322"
    assert len(dv.requests) == 1
    assert dv.requests[0].body_size == len(body)


async def test_503_with_an_http_date_is_waited_out_and_resent(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    arrived: list[float] = []

    async def busy_once(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        if len(arrived) == 1:
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            return web.Response(status=503, headers={"Retry-After": when})
        return web.Response(text="ok")

    async with upstream(busy_once) as url:
        proxy = await start_proxy([{"name": "up", "prefix": "/up", "upstream": url}])
        async with client.get(f"{proxy.url}/up/x") as resp:
            assert resp.status == 200
        assert 0.95 <= arrived[1] - arrived[0] < 4  # the date has whole seconds
        async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
            assert (await resp.json())["cooldowns"] == []  # a 503 holds only its own request


async def test_503_without_retry_after_is_passed_on(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    arrived: list[float] = []

    async def busy(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        return web.Response(status=503, text="down")

    async with upstream(busy) as url:
        proxy = await start_proxy([{"name": "up", "prefix": "/up", "upstream": url}])
        async with client.get(f"{proxy.url}/up/x") as resp:
            assert resp.status == 503
            assert await resp.text() == "down"
    assert len(arrived) == 1


async def test_client_going_away_during_the_wait_stops_the_resend(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv)])
    dv.throttle(1, retry_after=1)
    timeout = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(TimeoutError):
        await client.get(f"{proxy.url}{WHOAMI}", timeout=timeout)
    await asyncio.sleep(1.5)
    assert len(dv.requests) == 1


# --- cool-down ----------------------------------------------------------------------------


async def test_cooldown_holds_other_requests_to_that_upstream_and_identity(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
) -> None:
    """While one request waits out a 429, others to the same upstream with the same identity
    (another route too) are held until the cool-down ends; another upstream is not held."""
    routes = [
        dv_route(dv),
        {"name": "dv2", "prefix": "/dv2", "upstream": dv.url},
        {"name": "echo", "prefix": "/echo", "upstream": echo.url},
    ]
    proxy = await start_proxy(routes)
    dv.throttle(1, retry_after=2, path="WhoAmI")
    first = asyncio.create_task(client.get(f"{proxy.url}{WHOAMI}"))
    await until(lambda: len(dv.requests) == 1)
    throttled_at = dv.requests[0].arrived
    others = [
        asyncio.create_task(client.get(f"{proxy.url}/dv/api/data/v9.2/accounts")),
        asyncio.create_task(client.get(f"{proxy.url}/dv2/api/data/v9.2/contacts")),
    ]
    started = time.monotonic()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 200
    assert time.monotonic() - started < 1
    for response in await asyncio.gather(first, *others):
        assert response.status == 200
        response.release()
    assert len(dv.requests) == 4
    for later in dv.requests[1:]:
        assert later.arrived - throttled_at >= 1.95


async def test_long_retry_after_is_passed_on_and_later_requests_answered_locally(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv, max_throttle_wait=1)])
    dv.throttle(1, retry_after=5)
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 429  # longer than max_throttle_wait: as received
        assert resp.headers["Retry-After"] == "5"
        assert (await resp.json())["error"]["code"] == "0x80072322"
    started = time.monotonic()
    async with client.post(f"{proxy.url}{ACCOUNTS}", json={"name": "x"}) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] in {"4", "5"}
        assert (await resp.json())["error"] == "upstream_throttled"
    assert time.monotonic() - started < 1
    assert len(dv.requests) == 1  # never contacted
    async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
        assert resp.status == 200  # a cool-down does not make the proxy unready
        (cooldown,) = (await resp.json())["cooldowns"]
    assert cooldown["upstream"] == dv.url
    assert cooldown["identity"] == "default"
    assert cooldown["routes"] == ["dv"]
    assert 3 <= cooldown["seconds_left"] <= 5


# --- pacing and concurrency ---------------------------------------------------------------


async def test_route_pacing_spreads_requests_over_the_window(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """rate_limit = "4/2s": one request every 0.5 s, in order, whatever the clients send."""
    proxy = await start_proxy([dv_route(dv, rate_limit="4/2s")])
    sent = [asyncio.create_task(client.get(f"{proxy.url}{WHOAMI}")) for _ in range(5)]
    await until(lambda: len(dv.requests) == 1)
    got = await metrics(client, proxy.url)
    assert got[("ppproxy_requests_queued", (("route", "dv"),))] >= 2  # waiting their turn
    responses = await asyncio.gather(*sent)
    for response in responses:
        assert response.status == 200
        response.release()
    arrivals = [r.arrived for r in dv.requests]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(gaps) == 4
    assert all(gap >= 0.45 for gap in gaps), gaps
    assert arrivals[-1] - arrivals[0] < 4


async def test_pacing_beyond_queue_timeout_gets_503_at_once(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv, rate_limit="1/10s", queue_timeout=1)])
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 200
    started = time.monotonic()
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "upstream_busy"
        assert 9 <= int(resp.headers["Retry-After"]) <= 10
    assert time.monotonic() - started < 1
    assert len(dv.requests) == 1


@pytest.mark.parametrize(("max_concurrency", "hint", "expected"), [(None, 2, 2), (1, 3, 1)])
async def test_dop_hint_caps_a_routes_concurrency(
    start_proxy: StartProxy,
    client: aiohttp.ClientSession,
    max_concurrency: int | None,
    hint: int,
    expected: int,
) -> None:
    busy = {"now": 0, "most": 0}

    async def slow(request: web.Request) -> web.Response:
        busy["now"] += 1
        busy["most"] = max(busy["most"], busy["now"])
        await asyncio.sleep(0.2)
        busy["now"] -= 1
        return web.Response(text="ok", headers={"x-ms-dop-hint": str(hint)})

    async with upstream(slow) as url:
        route: dict[str, Any] = {"name": "up", "prefix": "/up", "upstream": url}
        if max_concurrency is not None:
            route["max_concurrency"] = max_concurrency
        proxy = await start_proxy([route])
        async with client.get(f"{proxy.url}/up/first") as resp:
            assert resp.status == 200
        responses = await asyncio.gather(*(client.get(f"{proxy.url}/up/x") for _ in range(6)))
        for response in responses:
            assert response.status == 200
            response.release()
    assert busy["most"] == expected


async def test_limiter_follows_a_hint_down_and_up() -> None:
    """A lower hint holds new requests back without interrupting any; a higher one lets the
    waiting ones go, in order."""
    limiter = Limiter("r", RouteLimits(max_concurrency=4, max_queue=10, queue_timeout=5))
    for _ in range(2):
        await limiter.acquire()
    limiter.set_hint(1)
    order: list[int] = []

    async def wait(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    waiting = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0.05)
    assert limiter.waiting == 3
    assert order == []
    limiter.release()
    await asyncio.sleep(0)
    assert order == []  # one still in flight: at the hint
    limiter.release()
    await asyncio.sleep(0)
    assert order == [0]
    limiter.set_hint(10)  # back up to max_concurrency
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]
    assert limiter.in_flight == 3


async def test_limiter_queue_timeout_gives_the_slot_back() -> None:
    limiter = Limiter("r", RouteLimits(max_concurrency=1, max_queue=1, queue_timeout=0.1))
    await limiter.acquire()
    with pytest.raises(UpstreamBusy):
        await limiter.acquire()
    assert limiter.waiting == 0
    limiter.release()
    assert await limiter.acquire() == 0.0


# --- a client's rate_limit ----------------------------------------------------------------

KEY_A, KEY_B = "ppk_client-a", "ppk_client-b"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_client_over_its_rate_limit_gets_429_with_ratelimit_headers(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    captured: io.StringIO,
) -> None:
    clients = [
        {"name": "script", "key_sha256": sha(KEY_A), "rate_limit": "2/10s"},
        {"name": "person", "key_sha256": sha(KEY_B)},
    ]
    proxy = await start_proxy(access={"clients": clients})
    a, b = {"X-Api-Key": KEY_A}, {"X-Api-Key": KEY_B}
    for _ in range(2):
        async with client.get(f"{proxy.url}/echo/x", headers=a) as resp:
            assert resp.status == 200
    async with client.get(f"{proxy.url}/echo/x", headers=a) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"] == "rate_limited"
        assert resp.headers["Retry-After"] == "10"  # when the first of the two leaves the window
        assert resp.headers["RateLimit-Policy"] == '"client";q=2;w=10'
        assert resp.headers["RateLimit"] == '"client";r=0;t=10'
    async with client.get(f"{proxy.url}/echo/x", headers=b) as resp:
        assert resp.status == 200  # another client is not held back
    assert len(echo.requests) == 3  # never forwarded
    got = await metrics(client, proxy.url, b)
    key = (("client", "script"), ("route", "echo"))
    assert got[("ppproxy_rate_limited_total", key)] == 1
    (rejected,) = [e for e in events(captured) if e["event"] == "request.rejected"]
    assert (rejected["status"], rejected["error"]) == (429, "rate_limited")


async def test_an_ended_cooldown_is_dropped_for_every_route(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
) -> None:
    """Once a cool-down is over, requests to any route are back on the path without waits,
    and readyz no longer lists it."""
    routes = [dv_route(dv, retry_throttled=False), {"name": "echo", "upstream": echo.url}]
    proxy = await start_proxy(routes)
    dv.throttle(1, retry_after=1)
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 429
    throttling = proxy.app[RUNTIME].throttling
    assert throttling.any_cooling
    await asyncio.sleep(1.1)
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 200
    assert not throttling.any_cooling
    async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
        assert (await resp.json())["cooldowns"] == []


async def test_client_over_its_rate_limit_is_refused_before_its_body_is_asked_for(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """With Expect: 100-continue the answer is 429 instead of 100 Continue: the body never
    leaves the client (and the check itself uses up none of the client's allowance)."""
    clients = [{"name": "script", "key_sha256": sha(KEY_A), "rate_limit": "1/10s"}]
    proxy = await start_proxy(access={"clients": clients})
    host, port = proxy.url.removeprefix("http://").split(":")

    async def expect_continue() -> tuple[bool, bytes]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"PUT /echo/x HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: {KEY_A}\r\n"
            "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                continued = head.startswith(b"HTTP/1.1 100")
                if continued:
                    writer.write(b"hello")
                    head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
        return continued, head.split(b"\r\n", 1)[0]

    assert await expect_continue() == (True, b"HTTP/1.1 200 OK")  # checked, then counted once
    assert await expect_continue() == (False, b"HTTP/1.1 429 Too Many Requests")
    assert len(echo.requests) == 1


async def test_paced_requests_do_not_go_out_into_a_cooldown(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """Requests already waiting for their pace when a 429 arrives look at the cool-down again
    once their turn comes: none reaches the upstream before it ends."""
    proxy = await start_proxy([dv_route(dv, rate_limit="10/1s", retry_throttled=False)])
    dv.throttle(1, retry_after=2, path="WhoAmI")
    accounts = f"{proxy.url}/dv/api/data/v9.2/accounts"
    sent = []
    for url in (accounts, f"{proxy.url}{WHOAMI}", accounts, accounts, accounts):
        sent.append(asyncio.create_task(client.get(url)))  # turns every 0.1 s, in this order
        await asyncio.sleep(0.015)
    for response in await asyncio.gather(*sent):
        response.release()
    assert len(dv.requests) == 5
    throttled = next(r for r in dv.requests if "WhoAmI" in r.raw_path)
    waited = [r for r in dv.requests if r.arrived > throttled.arrived]
    assert len(waited) == 3
    for later in waited:
        assert later.arrived - throttled.arrived >= 1.95


def test_a_client_rate_limit_is_a_sliding_window() -> None:
    """No span of DURATION holds more than COUNT of a client's requests: a burst uses the
    window up, and the next request fits only once the oldest has left it."""
    rates = ClientRates()
    limited = AccessClient("script", None, rate_limit=Rate(3, 1.0, "3/1s"))
    for _ in range(3):
        rates.take(limited, "r")
    with pytest.raises(RateLimited) as refused:
        rates.take(limited, "r")
    assert 0.9 < refused.value.retry_after <= 1.0
    time.sleep(0.6)
    with pytest.raises(RateLimited):  # a token bucket would have refilled one by now
        rates.take(limited, "r")
    time.sleep(0.45)
    rates.take(limited, "r")  # the first has left the window


async def test_a_resend_takes_the_token_the_cache_holds_then(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    """Tokens that live 4 s are refreshed 2 s in: a request throttled for 3 s is resent with
    the newer token, not the one it was first sent with."""
    idp.token_lifetime = 4
    proxy = await start_proxy([dv_route(dv)])
    dv.throttle(1, retry_after=3, path="WhoAmI")
    async with client.get(f"{proxy.url}{WHOAMI}") as resp:
        assert resp.status == 200
    first, second = dv.requests
    tokens = [(r.header("Authorization") or "").removeprefix("Bearer ") for r in (first, second)]
    assert tokens[0] != tokens[1]
    assert decode(tokens[1])[1]["exp"] > decode(tokens[0])[1]["exp"]
