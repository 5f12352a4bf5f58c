"""Slow heads, idle connections, a ceiling on connections and quiet accept errors (issue 13,
item 5), and aiohttp's own 400 answers without the request in them (item 7)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import sys
import time
from pathlib import Path

import pytest

from proxy.testing import EchoUpstream, IdentityProvider, LocalCA

from .conftest import StartProxy, config_dict
from .processes import ROOT, free_port, read_until, write_config

REQUEST = b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def connect(
    url: str, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").removeprefix("https://").split(":")
    return await asyncio.open_connection(host, int(port), ssl=tls)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the proxy closed the connection (reading and dropping what it sent);
    fails if it is still open after ``seconds``."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


async def response(reader: asyncio.StreamReader, wait: float = 5) -> bytes:
    async with asyncio.timeout(wait):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return head + await reader.readexactly(length)


@pytest.mark.parametrize("sent", [b"", b"GET /echo/x HTT", b"GET /echo/x HTTP/1.1\r\nHost: l"])
async def test_incomplete_head_closed_after_header_timeout(
    start_proxy: StartProxy, sent: bytes
) -> None:
    """A connection that sends nothing, half a request line, or half its headers is closed
    once server.header_timeout has passed since it was accepted."""
    proxy = await start_proxy(server={"header_timeout": 0.5})
    reader, writer = await connect(proxy.url)
    writer.write(sent)
    try:
        assert 0.3 < await closed_within(reader, 3) < 2.5
    finally:
        writer.close()


async def test_tls_handshake_that_never_starts_is_closed_after_header_timeout(
    start_proxy: StartProxy, ca: LocalCA, tmp_path: Path
) -> None:
    """On an HTTPS listener, a connection that never sends its ClientHello is closed once
    server.header_timeout has passed."""
    cert, key = ca.write_server_files(tmp_path)
    proxy = await start_proxy(
        server={"tls_cert": str(cert), "tls_key": str(key), "header_timeout": 0.5}
    )
    reader, writer = await connect(proxy.url)  # TCP only: no handshake
    try:
        assert 0.3 < await closed_within(reader, 3) < 2.5
    finally:
        writer.close()


async def test_tls_head_deadline_counts_from_accept_and_requests_are_served(
    start_proxy: StartProxy, ca: LocalCA, tmp_path: Path
) -> None:
    """On an HTTPS listener, a whole request is answered, and a connection that completes the
    handshake but sends half a head is closed header_timeout after it was accepted."""
    cert, key = ca.write_server_files(tmp_path)
    proxy = await start_proxy(
        server={"tls_cert": str(cert), "tls_key": str(key), "header_timeout": 0.6}
    )
    reader, writer = await connect(proxy.url, ca.client_context())
    writer.write(REQUEST)
    assert b" 200 " in (await response(reader)).split(b"\r\n", 1)[0]
    writer.close()
    started = time.monotonic()
    reader, writer = await connect(proxy.url, ca.client_context())
    writer.write(b"GET /echo/x HT")
    try:
        await closed_within(reader, 3)
        assert 0.4 < time.monotonic() - started < 2.0
    finally:
        writer.close()


async def test_trickled_head_is_not_extended(start_proxy: StartProxy) -> None:
    """The deadline is for the whole head: a byte now and then does not move it."""
    proxy = await start_proxy(server={"header_timeout": 0.6})
    reader, writer = await connect(proxy.url)
    started = time.monotonic()
    try:
        for byte in REQUEST[:20]:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            if reader.at_eof():
                break
            await asyncio.sleep(0.1)
        await closed_within(reader, 3)
        assert time.monotonic() - started < 1.8
    finally:
        writer.close()


async def test_kept_alive_connection_waits_idle_timeout_not_header_timeout(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    proxy = await start_proxy(server={"header_timeout": 0.4, "idle_timeout": 1.5})
    reader, writer = await connect(proxy.url)
    try:
        writer.write(REQUEST)
        assert b" 200 " in (await response(reader)).split(b"\r\n", 1)[0]
        await asyncio.sleep(0.8)  # idle for longer than header_timeout: still open
        writer.write(REQUEST)
        assert b" 200 " in (await response(reader)).split(b"\r\n", 1)[0]
        assert 1.0 < await closed_within(reader, 4) < 3  # then idle_timeout closes it
    finally:
        writer.close()
    assert len(echo.requests) == 2


async def test_next_head_on_a_kept_alive_connection_has_a_deadline(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(server={"header_timeout": 0.4, "idle_timeout": 30})
    reader, writer = await connect(proxy.url)
    try:
        writer.write(REQUEST)
        await response(reader)
        writer.write(b"GET /echo/y HT")  # the next head starts, and stops
        assert await closed_within(reader, 3) < 1.5
    finally:
        writer.close()


async def test_connections_over_max_wait_in_the_backlog(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    """With max_connections held, a new connection is not accepted (nor dropped): it is
    answered as soon as one of the others closes."""
    proxy = await start_proxy(server={"max_connections": 2, "header_timeout": 30})
    held = [await connect(proxy.url) for _ in range(2)]
    await asyncio.sleep(0.2)  # both accepted
    reader, writer = await connect(proxy.url)  # the kernel completes the handshake
    writer.write(REQUEST)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.7)
    assert echo.requests == []
    held[0][1].close()
    assert b" 200 " in (await response(reader)).split(b"\r\n", 1)[0]
    writer.close()
    held[1][1].close()


async def test_max_connections_holds_when_many_arrive_at_once(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    """Connections that reach the backlog together are accepted only up to max_connections:
    of five sent at once with a ceiling of two, two are answered, then two more once those
    two close."""
    proxy = await start_proxy(server={"max_connections": 2, "header_timeout": 30})
    opened = await asyncio.gather(*(connect(proxy.url) for _ in range(5)))
    for _, writer in opened:
        writer.write(REQUEST)

    async def answered(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
        try:
            await response(pair[0], 0.8)
        except TimeoutError:
            return False
        return True

    first = await asyncio.gather(*(answered(p) for p in opened))
    assert sum(first) == 2
    for done, (_, writer) in zip(first, opened, strict=True):
        if done:
            writer.close()
    waiting = [p for done, p in zip(first, opened, strict=True) if not done]
    second = await asyncio.gather(*(answered(p) for p in waiting))
    assert sum(second) == 2
    for _, writer in opened:
        writer.close()
    assert len(echo.requests) == 4


async def test_parser_error_does_not_echo_the_request(start_proxy: StartProxy) -> None:
    """aiohttp's own 400 quotes the line it could not parse; the proxy's names no byte of it."""
    proxy = await start_proxy()
    secret = b"ppk_do-not-echo-me"
    for bad in (
        b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: " + secret + b"\x01\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: "
        + secret
        + b"\r\nBad Line\r\n\r\n",
        b"GET /echo/" + secret + b"\xff HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ):
        reader, writer = await connect(proxy.url)
        writer.write(bad)
        answer = await response(reader)
        writer.close()
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.")
        assert b" 400 " in head.split(b"\r\n", 1)[0]
        assert secret not in answer
        assert json.loads(body)["error"] == "bad_request"


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_accept_errors_logged_once_per_interval(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path, event_loop: str
) -> None:
    """Under a descriptor limit, hundreds of connections make one log line, not one per failed
    accept; none is dropped (they wait in the backlog); and the proxy serves again once
    descriptors are free."""
    port = free_port()
    routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
    server = {"port": port, "event_loop": event_loop}
    path = write_config(tmp_path, config_dict(idp, ca_file, routes, server=server))
    limit = 96

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=os.environ.copy(),
        preexec_fn=low_limit,
    )
    assert proc.stderr is not None
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await read_until(proc.stderr, "server.listening")
        for _ in range(3 * limit):
            opened.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(3)
        assert not [r for r, _ in opened if r.at_eof()]  # nothing dropped
        for _, writer in opened:
            writer.close()
        opened.clear()
        await asyncio.sleep(1.5)  # the proxy's pause after a resource error
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        assert b" 200 " in (await response(reader, 10)).split(b"\r\n", 1)[0]
        writer.close()
    finally:
        for _, writer in opened:
            writer.close()
        proc.terminate()
        _, rest = await proc.communicate()
    text = rest.decode()
    lines = [line for line in text.splitlines() if "accept" in line.lower()]
    assert len(lines) == 1, text[:3000]
    assert "EMFILE" in lines[0]
