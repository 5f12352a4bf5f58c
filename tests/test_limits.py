"""One client cannot lock a route (issue 13, item 4): a client's own max_concurrency, the pause
allowed between body chunks, and the route's slot taken only when the upstream request starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from proxy.config import ConfigError, from_dict
from proxy.testing import EchoUpstream

from .conftest import StartProxy

SLOW_KEY = "ppk_slow-client-key"
OTHER_KEY = "ppk_other-client-key"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CLIENTS = [
    {"name": "slow", "key_sha256": sha(SLOW_KEY), "max_concurrency": 2},
    {"name": "other", "key_sha256": sha(OTHER_KEY)},
]


@asynccontextmanager
async def trickling(
    url: str, path: str, *, key: str = SLOW_KEY, length: int = 10, sent: bytes = b"abc"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A request whose body stops after ``sent``, of a declared ``length``."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: {key}\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + sent
    )
    await writer.drain()
    try:
        yield reader, writer
    finally:
        writer.close()


async def answer(reader: asyncio.StreamReader, wait: float) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the proxy's answer (the proxy may keep reading, and
    discarding, the rest of the request for a while before it closes)."""
    async with asyncio.timeout(wait):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")[:-2]
        headers = dict(line.split(": ", 1) for line in lines[1:])
        body = await reader.readexactly(int(headers["Content-Length"]))
    return int(lines[0].split(" ")[1]), headers, body


def test_config_keys() -> None:
    raw = {
        "identities": {"a": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
        "routes": [{"name": "r", "upstream": "https://r.example"}],
        "server": {"body_timeout": 0},
        "access": {"clients": [{**CLIENTS[0], "max_concurrency": 0}]},
    }
    with pytest.raises(ConfigError) as e:
        from_dict(raw, {}, base_dir=Path())
    assert "server.body_timeout" in e.value.render()
    assert "access.clients[0].max_concurrency" in e.value.render()
    del raw["server"], raw["access"]
    assert from_dict(raw, {}, base_dir=Path()).server.body_timeout == 30


async def test_client_over_its_max_concurrency_gets_429_at_once(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(access={"clients": CLIENTS})
    slow = {"X-Api-Key": SLOW_KEY}
    url = f"{proxy.url}/echo/_echo/slow?seconds=2"
    holding = [asyncio.create_task(client.get(url, headers=slow)) for _ in range(2)]
    for _ in range(500):
        if echo.in_flight == 2:
            break
        await asyncio.sleep(0.01)
    assert echo.in_flight == 2
    started = time.monotonic()
    async with client.get(f"{proxy.url}/echo/x", headers=slow) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"] == "client_busy"
    assert time.monotonic() - started < 1  # not queued
    async with client.get(f"{proxy.url}/echo/x", headers={"X-Api-Key": OTHER_KEY}) as resp:
        assert resp.status == 200  # other clients are not held back
    for response in await asyncio.gather(*holding):
        assert response.status == 200
        response.release()
    async with client.get(f"{proxy.url}/echo/x", headers=slow) as resp:
        assert resp.status == 200  # its slots are back


async def test_trickling_body_holds_no_route_slot(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """The issue's attack: one client trickling bodies into every slot of a route. Its
    replayable bodies are read before the route's slot is taken, so others still get through;
    beyond its own max_concurrency it is refused."""
    routes = [
        {
            "name": "echo",
            "prefix": "/echo",
            "upstream": echo.url,
            "max_concurrency": 1,
            "max_queue": 0,
        }
    ]
    proxy = await start_proxy(routes, access={"clients": CLIENTS})
    async with (
        trickling(proxy.url, "/echo/a"),
        trickling(proxy.url, "/echo/b"),
        trickling(proxy.url, "/echo/c") as (third, _),
    ):
        status, _, body = await answer(third, 5)
        assert (status, json.loads(body)["error"]) == (429, "client_busy")
        async with client.get(f"{proxy.url}/echo/x", headers={"X-Api-Key": OTHER_KEY}) as resp:
            assert resp.status == 200
    assert [r.raw_path for r in echo.requests] == ["/x"]


async def test_paused_body_gets_408_and_is_never_sent(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    proxy = await start_proxy(server={"body_timeout": 0.5})
    started = time.monotonic()
    async with trickling(proxy.url, "/echo/x", key="") as (reader, _):
        status, headers, body = await answer(reader, 5)
    assert status == 408
    assert json.loads(body)["error"] == "body_timeout"
    assert headers.get("Connection") == "close"
    assert 0.4 < time.monotonic() - started < 3
    assert echo.requests == []


async def test_paused_streamed_body_cancels_the_upstream_request(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    """A body too large to keep is already streaming upstream when it stops: the upstream
    request is broken off and the client gets 408."""
    proxy = await start_proxy(server={"body_timeout": 0.5}, outbound={"replay_body_bytes": 16})
    async with trickling(proxy.url, "/echo/x", key="", length=100_000, sent=b"x" * 1000) as (
        reader,
        _,
    ):
        status, _, body = await answer(reader, 5)
    assert status == 408
    assert json.loads(body)["error"] == "body_timeout"
    for _ in range(100):
        if echo.cancelled:
            break
        await asyncio.sleep(0.02)
    assert echo.cancelled == 1
    assert echo.requests == []


async def test_slow_but_steady_body_passes(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """body_timeout is the pause between chunks, not a total: a slow upload that keeps going
    arrives whole."""
    proxy = await start_proxy(server={"body_timeout": 0.5}, outbound={"replay_body_bytes": 16})

    async def steady() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 100
            await asyncio.sleep(0.2)

    async with client.post(f"{proxy.url}/echo/x", data=steady()) as resp:
        assert resp.status == 200
        assert (await resp.json())["body_bytes"] == 800


async def test_paused_batch_body_gets_408_too(start_proxy: StartProxy, echo: EchoUpstream) -> None:
    """A $batch is read whole by the guard to be checked: the same pause limit holds there."""
    proxy = await start_proxy(server={"body_timeout": 0.5})
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /echo/api/data/v9.2/$batch HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n"
    )
    await writer.drain()
    started = time.monotonic()
    try:
        status, _, body = await answer(reader, 5)
    finally:
        writer.close()
    assert status == 408
    assert json.loads(body)["error"] == "body_timeout"
    assert 0.4 < time.monotonic() - started < 3
    assert echo.requests == []
