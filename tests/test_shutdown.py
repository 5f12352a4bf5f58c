"""Graceful shutdown of a real `ppproxy serve` process, and a bounded soak under token churn."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import StartProxy
from .processes import read_until, serve_echo

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX-only")


async def test_sigterm_drains_then_finishes_in_flight(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    served = await serve_echo(tmp_path, idp, echo, ca_file, drain_delay=1.0, shutdown_timeout=10)
    proc, base = served.proc, served.base
    assert proc.stderr is not None
    async with aiohttp.ClientSession() as session:
        slow = asyncio.ensure_future(session.get(f"{base}/echo/_echo/slow?seconds=2.5"))
        for _ in range(100):
            if echo.in_flight:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        await read_until(proc.stderr, "server.draining")
        async with session.get(f"{base}/_proxy/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
        await asyncio.sleep(1.3)  # past the drain delay: the listener is closed
        async with aiohttp.ClientSession() as fresh:
            with pytest.raises(aiohttp.ClientConnectorError):
                await fresh.get(f"{base}/_proxy/livez")
        resp = await slow
        assert resp.status == 200
        assert (await resp.json())["slept"] == 2.5
        resp.release()
    _, rest = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert "server.stopped" in rest.decode()


def resources() -> tuple[int, int]:
    """Open file descriptors and resident memory (KiB) of this process (Linux; zeros elsewhere)."""
    if not os.path.isdir("/proc/self/fd"):
        return 0, 0
    rss = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return len(os.listdir("/proc/self/fd")), rss


async def test_soak_with_flapping_identity_provider(
    start_proxy: StartProxy, idp: IdentityProvider, echo: EchoUpstream
) -> None:
    """~20 s of continuous requests over two scopes with 3-second tokens while the identity
    provider is down 2 s, up 2 s: never an expired token upstream, every failure a clear 503,
    token requests bounded, no growth in file descriptors."""
    idp.token_lifetime = 3
    proxy = await start_proxy(
        [
            {"name": "a", "prefix": "/a", "upstream": echo.url, "scope": "https://a/.default"},
            {"name": "b", "prefix": "/b", "upstream": echo.url, "scope": "https://b/.default"},
        ],
        tokens={"wait_timeout": 0.5},
    )
    duration = float(os.environ.get("PPPROXY_SOAK_SECONDS", "20"))
    stop = time.monotonic() + duration
    outcomes: dict[str, int] = {"ok": 0, "token_unavailable": 0}
    expired: list[float] = []
    samples: list[tuple[int, int]] = []

    async def sample() -> None:
        while time.monotonic() < stop:
            samples.append(resources())
            await asyncio.sleep(0.5)

    async def flap() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(2)
            await idp.go_down()
            await asyncio.sleep(2)
            await idp.come_up()

    async def worker(route: str) -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < stop:
                async with session.get(f"{proxy.url}/{route}/x") as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        outcomes["ok"] += 1
                        if body["token_claims"]["exp"] <= time.time():
                            expired.append(body["token_claims"]["exp"])
                    else:
                        assert resp.status == 503, body
                        assert body["error"] == "token_unavailable"
                        assert "Retry-After" in resp.headers
                        outcomes["token_unavailable"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(flap(), sample(), *(worker(r) for r in ("a", "a", "b", "b")))
    assert expired == []
    assert outcomes["ok"] > 100
    # 2 scopes, a refresh every ~1.5 s each plus backoff retries while down: well under 6/s.
    assert len(idp.requests) < 6 * duration
    # Steady state: the last third of the run holds no more descriptors or memory than the
    # first third did (plus slack for connection churn and allocator noise).
    third = max(1, len(samples) // 3)
    early, late = samples[:third], samples[-third:]
    assert max(f for f, _ in late) <= max(f for f, _ in early) + 4
    assert max(r for _, r in late) <= max(r for _, r in early) + 16 * 1024
