"""Logs: one access event per request, and never a token, a secret or a query string."""

from __future__ import annotations

import asyncio
import io
import os

import aiohttp

from proxy import observe, redaction
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import SECRET, StartProxy, events, raw_exchange


async def test_access_event_fields(
    captured: io.StringIO, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    async with client.post(f"{proxy.url}/echo/a/b?x=1", data=b"12345") as resp:
        body = await resp.read()
        request_id = resp.headers["x-ms-client-request-id"]
    async with client.get(f"{proxy.url}/echo/again") as resp:
        await resp.read()
    access = [e for e in events(captured) if e["event"] == "request"]
    assert len(access) == 2
    first, second = access
    assert first["path"] == "/echo/a/b"
    assert (first["method"], first["status"], first["route"]) == ("POST", 200, "echo")
    assert first["request_id"] == request_id
    assert (first["bytes_in"], first["bytes_out"]) == (5, len(body))
    assert (first["token_source"], second["token_source"]) == ("entra", "cache")
    assert first["peer"] == "127.0.0.1"  # the client's address
    for key in ("duration_ms", "upstream_ms", "token_wait_ms"):
        assert isinstance(first[key], float)


async def test_no_secret_token_or_query_in_logs(
    captured: io.StringIO,
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    """At debug level, everything logged is searched for the secret, the tokens and queries."""
    proxy = await start_proxy()
    query = "sig=Q7uery-Secret-Value"
    headers = {"Authorization": "Bearer client-token-XYZ", "Cookie": "c=Cookie-Value"}
    async with client.get(f"{proxy.url}/echo/x?{query}", headers=headers) as resp:
        assert resp.status == 200
    async with client.get(f"{proxy.url}/nothing?{query}") as resp:
        assert resp.status == 404
    idp.fail_with("invalid_client")
    bad = await start_proxy(tokens={"prefetch": True})
    async with client.get(f"{bad.url}/echo/y?{query}") as resp:
        assert resp.status == 503
    tokens = [
        v.removeprefix("Bearer ")
        for r in echo.requests
        for k, v in r.headers
        if k.lower() == "authorization"
    ]
    assert tokens
    logged = captured.getvalue()
    access = [e for e in events(captured) if e["event"] == "request"]
    assert [e["status"] for e in access] == [200, 404, 503]  # every request was logged
    for needle in [SECRET, *tokens, "Q7uery-Secret-Value", "client-token-XYZ", "Cookie-Value"]:
        assert needle not in logged, needle


def test_redact_shapes() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl"
    assert redaction.redact_text(f"got {jwt} here") == "got [redacted] here"
    assert (
        redaction.redact_text("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    )
    assert redaction.redact_text("client_secret=hunter2&x=1") == "client_secret=[redacted]&x=1"
    assert redaction.redact({"client_secret": "x", "n": 1}) == {
        "client_secret": "[redacted]",
        "n": 1,
    }
    assert redaction.redact([["Cookie", "a=b"], ["X", "y"]]) == [
        ["Cookie", "[redacted]"],
        ["X", "y"],
    ]


async def test_malformed_requests_logged_as_one_warning(
    captured: io.StringIO, start_proxy: StartProxy
) -> None:
    """A request aiohttp cannot parse is one warning line, not an error with a traceback."""
    proxy = await start_proxy()
    answer = await raw_exchange(
        proxy.url, b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nBad\r\n\r\n"
    )
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    logged = [e for e in events(captured) if e.get("logger") == "aiohttp.server"]
    assert logged
    assert [e["level"] for e in logged] == ["warning"] * len(logged)
    assert all(e["event"].startswith("http.malformed_request") for e in logged)
    assert "Traceback" not in captured.getvalue()


async def test_credentials_in_client_values_are_redacted(
    captured: io.StringIO, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """The request id, method and path come from the client: a token pasted into any of them
    is replaced in the access event, which is rendered without the general redaction pass."""
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl"
    proxy = await start_proxy()
    async with client.get(
        f"{proxy.url}/echo/{jwt}", headers={"x-ms-client-request-id": f"id-{jwt}"}
    ) as resp:
        assert resp.status == 200
    [access] = [e for e in events(captured) if e["event"] == "request"]
    assert access["path"] == "/echo/[redacted]"
    assert access["request_id"] == "id-[redacted]"
    assert jwt not in captured.getvalue()


class _Writes(observe._Lines):
    """The writer with each write's size noted (the lines still go to the pipe)."""

    def __init__(self, stream: io.TextIOBase) -> None:
        super().__init__(stream)  # type: ignore[arg-type]  # a real file: it has a descriptor
        self.sizes: list[int] = []

    def _write(self, data: bytes) -> None:
        self.sizes.append(len(data))
        super()._write(data)


async def test_lines_of_one_loop_iteration_are_written_together_and_whole() -> None:
    """On the loop, lines wait for the end of the iteration; they then go out in order, in
    writes of whole lines no larger than PIPE_BUF (atomic on a pipe shared by workers)."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream, os.fdopen(read_end, "rb", buffering=0) as reader:
        lines = _Writes(stream)
        sent = [f'{{"n":{i},"pad":"{"x" * 300}"}}'.encode() for i in range(40)]
        for line in sent:
            lines.msg(line)
        assert lines.sizes == []  # nothing written before the iteration ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(lines.sizes) > 1
        assert max(lines.sizes) <= 4096
        received = b""
        while len(received) < sum(lines.sizes):
            received += reader.read(65536) or b""
    assert received.splitlines() == sent


async def test_token_events_name_the_identity(
    captured: io.StringIO,
    start_proxy: StartProxy,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    """token.refreshed and token.failed say which identity, not only which scope; Entra's
    description arrives on one line with the portal step that fixes it."""
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/x") as resp:
        assert resp.status == 200
    idp.fail_with("invalid_client")
    failing = await start_proxy()
    async with client.get(f"{failing.url}/echo/x") as resp:
        body = await resp.json()
    logged = events(captured)
    refreshed = next(e for e in logged if e["event"] == "token.refreshed")
    failed = next(e for e in logged if e["event"] == "token.failed")
    assert refreshed["identity"] == failed["identity"] == "default"
    assert "\r" not in failed["description"]
    assert failed["hint"].startswith("wrong client secret")
    assert body["hint"] == failed["hint"]  # the 503 token_unavailable says it too
