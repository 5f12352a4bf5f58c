"""Surviving faults: identity-provider outages and errors, upstream 401/429, concurrency caps,
broken connections."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import time
from collections.abc import Mapping

import aiohttp
import pytest
from aiohttp import web

from proxy.caching_provider import CachingProvider
from proxy.errors import TokenUnavailable
from proxy.testing import EchoUpstream, IdentityProvider
from proxy.tokens import ScopeStatus, Token, TokenError

from .conftest import StartProxy
from .upstreams import upstream


def bearer_of(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


async def test_cached_token_used_through_outage(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    """While Entra is down, the valid token keeps being used; after it expires, 503 quickly."""
    idp.token_lifetime = 4
    proxy = await start_proxy(tokens={"wait_timeout": 1})
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 200
    await idp.go_down()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 200  # cached, although the refresh cannot reach Entra
    await asyncio.sleep(4)
    started = time.monotonic()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert time.monotonic() - started < 2
    assert body["error"] == "token_unavailable"
    assert body["entra_error"] == "authority_unreachable"
    assert "Retry-After" in resp.headers


async def test_recovery_after_outage_makes_ready_again(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    await idp.go_down()
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
        assert resp.status == 503
        check = (await resp.json())["tokens"][0]
    assert check["ok"] is False
    assert check["last_error"].startswith("authority_unreachable")
    await idp.come_up()
    for _ in range(60):  # the background retry finds Entra back within its backoff
        await asyncio.sleep(0.1)
        async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
            status, body = resp.status, await resp.json()
        if status == 200:
            break
    assert status == 200
    check = body["tokens"][0]
    assert check["ok"] is True
    assert check["last_refresh"]
    assert check["last_error"] is None
    assert check["expires_in"] > 3000


async def test_permanent_error_not_hammered(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    """invalid_client: many requests over 2.5 s cause at most one attempt per backoff step."""
    idp.fail_with("invalid_client")
    proxy = await start_proxy()
    deadline = time.monotonic() + 2.5
    statuses = set()
    while time.monotonic() < deadline:
        async with client.get(f"{proxy.url}/echo/x") as resp:
            statuses.add(resp.status)
        await asyncio.sleep(0.02)
    assert statuses == {503}
    # Backoff steps are 1, 2, 4 s with jitter of -50%: within 2.5 s, at most 3 attempts.
    assert 1 <= len(idp.requests) <= 3


async def test_one_request_in_flight_per_scope_while_entra_is_slow(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    idp.delay = 1.5
    proxy = await start_proxy(tokens={"wait_timeout": 0.2})

    async def one() -> int:
        async with client.get(f"{proxy.url}/echo/x") as resp:
            return resp.status

    assert await asyncio.gather(*(one() for _ in range(30))) == [503] * 30
    await asyncio.sleep(1.6)
    assert len(idp.requests) == 1


class Scripted:
    """A fake token source: fails as told, counts calls (a real object, not a mock)."""

    def __init__(self, errors: list[TokenError]) -> None:
        self.errors = errors
        self.calls: list[float] = []

    async def token(self, scope: str) -> Token:
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        now = time.monotonic()
        return Token(f"tok-{len(self.calls)}", scope, now + 3600, 3600, time.time() + 3600)

    def invalidate(self, token: Token) -> bool:
        return True

    def status(self) -> Mapping[str, ScopeStatus]:
        return {}

    async def close(self) -> None:
        return None


async def test_retry_after_from_identity_provider_is_honoured() -> None:
    source = Scripted([TokenError("temporarily_unavailable", "429", retry_after=1.5)])
    cache = CachingProvider(source, wait_timeout=1)
    with pytest.raises(TokenUnavailable, match="identity provider"):
        await cache.token("s/.default")
    await asyncio.sleep(1.0)
    assert len(source.calls) == 1  # jittered backoff alone would have retried by now
    await asyncio.sleep(0.8)
    assert len(source.calls) == 2
    assert (await cache.token("s/.default")).value == "tok-2"
    await cache.close()


async def test_invalidate_drops_only_the_current_token() -> None:
    source = Scripted([])
    cache = CachingProvider(source)
    first = await cache.token("s")
    cache.invalidate(first)
    second = await cache.token("s")
    assert second.value != first.value
    cache.invalidate(first)  # stale: someone else already replaced it
    assert (await cache.token("s")).value == second.value
    assert len(source.calls) == 2
    await cache.close()


async def test_upstream_401_retried_once_with_fresh_token(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    seen: list[tuple[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        token = bearer_of(request)
        seen.append((token, hashlib.sha256(body).hexdigest()))
        if len(seen) == 1:
            return web.Response(status=401, text="revoked")
        return web.Response(text="ok")

    async with upstream(handler) as url:
        proxy = await start_proxy([{"name": "u", "prefix": "/u", "upstream": url}])
        data = os.urandom(1000)
        async with client.post(f"{proxy.url}/u/x", data=data) as resp:
            assert resp.status == 200
    assert len(seen) == 2
    assert seen[0][0] != seen[1][0]
    assert seen[0][1] == seen[1][1] == hashlib.sha256(data).hexdigest()
    assert len(idp.requests) == 2


async def test_upstream_401_never_loops(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})

    async with upstream(handler) as url:
        proxy = await start_proxy([{"name": "u", "prefix": "/u", "upstream": url}])
        async with client.get(f"{proxy.url}/u/x") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert calls == 2


async def test_401_storm_forces_one_refresh_per_min_refresh_interval(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    """An API that never accepts the token: 30 requests make one forced refresh, not 30; the
    rest pass their 401 through untried; after tokens.min_refresh_interval, one more."""
    tokens_seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        tokens_seen.append(bearer_of(request))
        return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})

    async with upstream(handler) as url:
        proxy = await start_proxy(
            [{"name": "u", "prefix": "/u", "upstream": url}],
            tokens={"min_refresh_interval": 1.5},
        )
        for _ in range(30):
            async with client.get(f"{proxy.url}/u/x") as resp:
                assert resp.status == 401
        assert len(idp.requests) == 2  # the first token, and one forced refresh
        assert len(tokens_seen) == 31  # one retry, for the first 401 only
        await asyncio.sleep(1.6)
        async with client.get(f"{proxy.url}/u/x") as resp:
            assert resp.status == 401
        assert len(idp.requests) == 3
        assert len(tokens_seen) == 33


async def test_concurrent_401s_share_one_forced_refresh(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    """Requests refused with the same token at once retry with the one fresh token."""
    refused: set[str] = set()

    async def handler(request: web.Request) -> web.Response:
        token = bearer_of(request)
        if not refused:
            refused.add(token)
        if token in refused:
            await asyncio.sleep(0.2)  # all of them are in flight with the first token
            return web.Response(status=401)
        return web.Response(text="ok")

    async with upstream(handler) as url:
        proxy = await start_proxy([{"name": "u", "prefix": "/u", "upstream": url}])

        async def one() -> int:
            async with client.get(f"{proxy.url}/u/x") as resp:
                return resp.status

        assert await asyncio.gather(*(one() for _ in range(10))) == [200] * 10
    assert len(idp.requests) == 2


async def test_min_refresh_interval_zero_refreshes_for_every_401(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    """tokens.min_refresh_interval = 0 turns the limit off."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=401)

    async with upstream(handler) as url:
        proxy = await start_proxy(
            [{"name": "u", "prefix": "/u", "upstream": url}], tokens={"min_refresh_interval": 0}
        )
        for _ in range(3):
            async with client.get(f"{proxy.url}/u/x") as resp:
                assert resp.status == 401
    assert len(idp.requests) == 4


async def test_invalidate_is_limited_per_scope() -> None:
    """The limit is per (identity, scope): a refusal in one scope leaves another free, and a
    limited invalidate keeps the token in use."""
    source = Scripted([])
    cache = CachingProvider(source, min_refresh_interval=60)
    a1, b1 = await cache.token("a"), await cache.token("b")
    assert cache.invalidate(a1) is True
    a2 = await cache.token("a")
    assert cache.invalidate(a2) is False
    assert (await cache.token("a")).value == a2.value
    assert cache.invalidate(a1) is True  # stale: the current one differs, no refresh needed
    assert cache.invalidate(b1) is True
    assert (await cache.token("b")).value != b1.value
    assert len(source.calls) == 4
    await cache.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_upstream_401_with_large_body_passed_through(
    start_proxy: StartProxy, client: aiohttp.ClientSession, chunked: bool
) -> None:
    """A body over outbound.replay_body_bytes was streamed, so it cannot be sent again."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        return web.Response(status=401)

    data = os.urandom(5000)

    async def gen():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    async with upstream(handler) as url:
        proxy = await start_proxy(
            [{"name": "u", "prefix": "/u", "upstream": url}], outbound={"replay_body_bytes": 1024}
        )
        async with client.post(f"{proxy.url}/u/x", data=gen() if chunked else data) as resp:
            assert resp.status == 401
    assert calls == 1


async def test_429_passes_through_with_retry_after(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """A Retry-After longer than the route's max_throttle_wait is the client's to honour: the
    429 reaches it as the upstream sent it (shorter ones are waited out: tests/test_throttle.py)."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": "throttled"}, status=429, headers={"Retry-After": "7"})

    async with upstream(handler) as url:
        route = {"name": "u", "prefix": "/u", "upstream": url, "max_throttle_wait": 5}
        proxy = await start_proxy([route])
        async with client.get(f"{proxy.url}/u/x") as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "7"
            assert (await resp.json()) == {"error": "throttled"}


async def test_max_concurrency_queue_and_busy(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    route = {
        "name": "c",
        "prefix": "/c",
        "upstream": echo.url,
        "max_concurrency": 2,
        "max_queue": 1,
        "queue_timeout": 0.5,
    }
    proxy = await start_proxy([route])
    peak = 0

    async def one() -> tuple[int, str | None]:
        async with client.get(f"{proxy.url}/c/_echo/slow?seconds=1.5") as resp:
            body = await resp.json()
            return resp.status, body.get("error") if resp.status != 200 else None

    async def watch() -> None:
        nonlocal peak
        for _ in range(40):
            peak = max(peak, echo.in_flight)
            await asyncio.sleep(0.05)

    results, _ = await asyncio.gather(asyncio.gather(*(one() for _ in range(5))), watch())
    assert sorted(results, key=str) == sorted(
        [(200, None)] * 2 + [(503, "upstream_busy")] * 3, key=str
    )
    assert peak == 2


async def test_busy_has_retry_after(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    route = {"name": "c", "prefix": "/c", "upstream": echo.url, "max_concurrency": 1}
    proxy = await start_proxy([{**route, "max_queue": 0}])
    slow = asyncio.ensure_future(client.get(f"{proxy.url}/c/_echo/slow?seconds=1"))
    await asyncio.sleep(0.3)
    async with client.get(f"{proxy.url}/c/x") as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
    (await slow).release()


async def test_connection_reset_mid_response_aborts_client(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1_000_000
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return response

    async with upstream(handler) as url:
        proxy = await start_proxy([{"name": "u", "prefix": "/u", "upstream": url}])
        async with client.get(f"{proxy.url}/u/x") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


async def test_client_gone_mid_transfer_leaks_nothing(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    """Clients that vanish mid-upload and mid-download cancel the upstream request; afterwards
    no task, upstream connection or file descriptor is left over."""
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as warm, warm.get(f"{proxy.url}/echo/warm") as resp:
        await resp.read()
    await asyncio.sleep(0.2)
    tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
    for _ in range(5):
        async with aiohttp.ClientSession() as session:

            async def slow_upload():  # type: ignore[no-untyped-def]
                yield b"a" * 100_000  # past the replay buffer: the upload is on its way upstream
                await asyncio.sleep(30)
                yield b"never"

            upload = asyncio.ensure_future(session.post(f"{proxy.url}/echo/up", data=slow_upload()))
            async with session.get(f"{proxy.url}/echo/_echo/bytes/{200 * 1024 * 1024}") as resp:
                await resp.content.read(65536)
            await asyncio.sleep(0.2)
            upload.cancel()
    for _ in range(50):
        if echo.in_flight == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert echo.in_flight == 0
    assert echo.cancelled >= 5
    assert len(asyncio.all_tasks()) <= tasks_before
    assert open_fds() <= fds_before + 2  # allow the identity provider's pooled connection


@pytest.mark.parametrize("header", ["2", "HTTP-DATE"])
async def test_entra_429_retry_after_honoured_end_to_end(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession, header: str
) -> None:
    """Entra's 429 with Retry-After (seconds or an HTTP date): no new token request before
    it has passed, then recovery."""
    if header == "HTTP-DATE":
        header = email.utils.formatdate(time.time() + 3, usegmt=True)
    idp.fail_with("temporarily_unavailable", code=50196, status=429, retry_after=header, times=1)
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert int(resp.headers["Retry-After"]) >= 1
    assert body["entra_error"] == "temporarily_unavailable"  # Entra's own error code
    await asyncio.sleep(1.0)  # the backoff alone (0.5-1 s) would have retried by now
    assert len(idp.requests) == 1
    for _ in range(40):
        await asyncio.sleep(0.1)
        if len(idp.requests) == 2:
            break
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 200
    assert len(idp.requests) == 2


@pytest.mark.parametrize(
    ("failure", "code"),
    [("500", "service_unavailable"), ("503", "service_unavailable"), ("malformed", None)],
)
async def test_entra_server_errors_give_clear_503(
    start_proxy: StartProxy,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    failure: str,
    code: str | None,
) -> None:
    if failure == "malformed":
        idp.malformed = True
    else:
        idp.fail_with("server_error", code=500, status=int(failure))
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["error"] == "token_unavailable"
    if code is not None:
        assert body["entra_error"] == code
    assert body["entra_error"]
