"""Forwarding end to end: token injection, header hygiene, byte-exact paths, streaming, errors."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os

import aiohttp
import pytest
from yarl import URL

from proxy.testing import GZIP_BODY, EchoUpstream, IdentityProvider, LocalCA, pattern_sha256

from .conftest import StartProxy, raw_exchange

POWERAPPS = "https://service.powerapps.com//.default"


async def test_token_injected_with_route_scope(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    """The upstream gets a Bearer token issued for the route's scope, byte for byte."""
    proxy = await start_proxy(
        [{"name": "pa", "prefix": "/pa", "upstream": echo.url, "scope": POWERAPPS}]
    )
    async with client.get(f"{proxy.url}/pa/providers?x=1") as resp:
        assert resp.status == 200
        body = await resp.json()
    shown = dict((k.lower(), v) for k, v in body["headers"])["authorization"]
    assert shown.endswith(".[signature redacted]")  # the echo never hands a usable token back
    auth = dict((k.lower(), v) for k, v in echo.requests[-1].headers)["authorization"]
    assert auth.startswith("Bearer ")
    claims = idp.verify(auth.removeprefix("Bearer "))
    assert claims["aud"] == "https://service.powerapps.com/"
    assert [r.scope for r in idp.requests] == [POWERAPPS]
    assert body["path"] == "/providers?x=1"


@pytest.mark.parametrize(
    "path",
    [
        # Rejected targets (dot segments, %2F, %5C, \, leading //) are in tests/test_guard.py.
        "/a%20b/c//d+e?q=%20+x&&z=%zz&u=https%3A%2F%2Fx%2F..%2F",
        "/%E2%82%AC/x;matrix=1?$filter=name%20eq%20'a'&$top=5",
        "/x.y/..z/.hidden/%2e%2ex",
        "?only=query",
        "",
    ],
)
async def test_raw_path_byte_for_byte(
    start_proxy: StartProxy, echo: EchoUpstream, path: str
) -> None:
    proxy = await start_proxy()
    request = f"GET /echo{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    response = await raw_exchange(proxy.url, request)
    assert response.startswith(b"HTTP/1.1 200")
    expected = path if path.startswith("/") else "/" + path
    assert echo.requests[-1].raw_path == expected


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "MERGE"])
async def test_every_method_with_body(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession, method: str
) -> None:
    proxy = await start_proxy()
    data = os.urandom(100_000)
    async with client.request(method, f"{proxy.url}/echo/m", data=data) as resp:
        body = await resp.json()
    assert (body["method"], body["body_bytes"]) == (method, len(data))
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_compressed_upload_is_forwarded_as_it_came(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """A gzip request body reaches the upstream still gzip, labelled so (it decodes it)."""
    proxy = await start_proxy()
    data = os.urandom(50_000)
    packed = gzip.compress(data)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    async with client.post(f"{proxy.url}/echo/up", data=packed, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()
    received = dict(echo.requests[-1].headers)
    assert received["Content-Encoding"] == "gzip"
    assert received["Content-Length"] == str(len(packed))


async def test_head_keeps_content_length(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    async with client.head(f"{proxy.url}/echo/_echo/bytes/12345") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "12345"
        assert await resp.read() == b""


async def test_chunked_upload_streams(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """A body without Content-Length goes upstream chunked and arrives whole."""
    proxy = await start_proxy()
    digest = hashlib.sha256()

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(50):
            block = bytes([i]) * 65536
            digest.update(block)
            yield block

    async with client.post(f"{proxy.url}/echo/up", data=chunks()) as resp:
        body = await resp.json()
    assert body["body_bytes"] == 50 * 65536
    assert body["body_sha256"] == digest.hexdigest()
    headers = {k.lower(): v for k, v in echo.requests[-1].headers}
    assert headers.get("transfer-encoding") == "chunked"


async def test_large_download_intact(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    size = 64 * 1024 * 1024 + 7
    digest = hashlib.sha256()
    async with client.get(f"{proxy.url}/echo/_echo/bytes/{size}") as resp:
        assert resp.headers["Content-Length"] == str(size)
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
    assert digest.hexdigest() == pattern_sha256(size)


async def test_gzip_response_byte_identical(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    headers = {"Accept-Encoding": "gzip"}
    async with client.get(f"{proxy.url}/echo/_echo/gzip", headers=headers) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == GZIP_BODY


async def test_redirect_passed_not_followed(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/_echo/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
        # A path on the upstream is a path under the route's prefix on the proxy.
        assert resp.headers["Location"] == "/echo/_echo/elsewhere"
    assert [r.raw_path for r in echo.requests] == ["/_echo/redirect"]


async def test_request_header_hygiene(start_proxy: StartProxy, echo: EchoUpstream) -> None:
    """Hop-by-hop, Connection-named, Authorization, Cookie and Expect never reach the upstream;
    Host is the upstream's; nothing is added that the client did not send."""
    proxy = await start_proxy()
    request = (
        b"POST /echo/h HTTP/1.1\r\n"
        b"Host: localhost:8080\r\n"
        b"Connection: close, X-Private\r\n"
        b"X-Private: drop-me\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Authorization: Bearer client-supplied\r\n"
        b"Cookie: session=1\r\n"
        b"X-Custom: Kept\r\n"
        b"Content-Length: 3\r\n"
        b"\r\nabc"
    )
    response = await raw_exchange(proxy.url, request)
    assert response.startswith(b"HTTP/1.1 200")
    received = echo.requests[-1]
    names = [k.lower() for k, _ in received.headers]
    for name in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "proxy-authorization",
        "cookie",
        "user-agent",
        "accept",
        "accept-encoding",
        "content-type",
    ]:
        assert name not in names, name
    headers = dict((k.lower(), v) for k, v in received.headers)
    assert headers["host"] == URL(echo.url).raw_authority
    assert headers["x-custom"] == "Kept"
    assert headers["content-length"] == "3"
    assert headers["authorization"].startswith("Bearer ey")
    assert names.count("authorization") == 1


async def test_expect_continue_answered_by_proxy(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    proxy = await start_proxy()
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"PUT /echo/e HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert b" 200 " in rest.split(b"\r\n", 1)[0]
    assert echo.requests[-1].body_bytes == 5
    assert "expect" not in [k.lower() for k, _ in echo.requests[-1].headers]


async def test_response_hop_by_hop_removed(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/_echo/headers") as resp:
        assert await resp.read() == b"ok"
        names = {k.lower() for k in resp.headers}
    assert "x-end-to-end" in names
    assert not names & {"x-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}


async def test_request_id_passed_through(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    rid = "abc-123"
    async with client.get(f"{proxy.url}/echo/r", headers={"x-ms-client-request-id": rid}) as resp:
        assert resp.headers["x-ms-client-request-id"] == rid
    assert (
        dict((k.lower(), v) for k, v in echo.requests[-1].headers)["x-ms-client-request-id"] == rid
    )


async def test_request_id_generated(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/echo/r") as resp:
        rid = resp.headers["x-ms-client-request-id"]
    assert len(rid) == 36
    assert (
        dict((k.lower(), v) for k, v in echo.requests[-1].headers)["x-ms-client-request-id"] == rid
    )


@pytest.mark.parametrize("path", ["/nothing", "/echox", "/_proxy/nope", "/_proxy"])
async def test_no_route(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession, path: str
) -> None:
    proxy = await start_proxy()
    async with client.get(proxy.url + path) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "no_route"
    assert echo.requests == []


async def test_no_route_lists_the_prefixes_that_exist(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        [
            {"name": "echo", "prefix": "/echo", "upstream": echo.url},
            {"name": "bap", "prefix": "/bap", "upstream": echo.url},
        ]
    )
    async with client.get(f"{proxy.url}/bpa/environments") as resp:
        body = await resp.json()
    assert body["prefixes"] == ["/bap", "/echo"]
    assert body["message"] == "no route matches this path; routes: /bap, /echo"


async def test_no_route_lists_only_the_routes_the_client_may_use(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """With [access], a client limited to some routes learns only their prefixes."""
    key = "ppk_limited-client-key-0123456789abcdef"
    digest = hashlib.sha256(key.encode()).hexdigest()
    proxy = await start_proxy(
        [
            {"name": "echo", "prefix": "/echo", "upstream": echo.url},
            {"name": "admin", "prefix": "/admin", "upstream": echo.url},
        ],
        access={"clients": [{"name": "ci", "key_sha256": digest, "routes": ["echo"]}]},
    )
    async with client.get(f"{proxy.url}/nope", headers={"X-Api-Key": key}) as resp:
        body = await resp.json()
    assert (resp.status, body["prefixes"]) == (404, ["/echo"])


async def test_livez(start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/_proxy/livez") as resp:
        assert resp.status == 200


async def test_readyz_ready_then_not(
    start_proxy: StartProxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["tokens"][0]["ok"] is True
    idp.fail_with("invalid_client")
    bad = await start_proxy()
    async with client.get(f"{bad.url}/_proxy/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["tokens"][0]["error"]["entra_error"] == "invalid_client"


async def test_upstream_unreachable(start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy([{"name": "x", "prefix": "/x", "upstream": "http://127.0.0.1:9"}])
    async with client.get(f"{proxy.url}/x/y") as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["error"] == "upstream_unreachable"
    assert "Bearer" not in json.dumps(body)


async def test_https_upstream_trusted_through_ca_file(
    start_proxy: StartProxy, tls_echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([{"name": "t", "prefix": "/t", "upstream": tls_echo.url}])
    async with client.get(f"{proxy.url}/t/ok") as resp:
        assert resp.status == 200
    assert tls_echo.requests[-1].raw_path == "/ok"


async def test_upstream_tls_untrusted(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """An upstream whose certificate ca_file does not vouch for gets nothing: 502."""
    async with EchoUpstream(ssl_context=LocalCA().server_context()) as stranger:
        proxy = await start_proxy([{"name": "t", "prefix": "/t", "upstream": stranger.url}])
        async with client.get(f"{proxy.url}/t/x") as resp:
            assert resp.status == 502
            body = await resp.json()
        assert stranger.requests == []
    assert body["error"] == "upstream_unreachable"
    assert "the TLS certificate of 127.0.0.1 is not trusted" in body["message"]
    assert "outbound.ca_file" in body["message"]


async def test_upstream_tls_handshake_failure_names_the_host(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """An https:// upstream that answers in plain HTTP: 502 naming host and port, not a bare
    exception name."""
    async with EchoUpstream() as plain:
        port = URL(plain.url).port
        upstream = f"https://127.0.0.1:{port}"
        proxy = await start_proxy([{"name": "t", "prefix": "/t", "upstream": upstream}])
        async with client.get(f"{proxy.url}/t/x") as resp:
            assert resp.status == 502
            body = await resp.json()
    assert body["error"] == "upstream_unreachable"
    assert f"the TLS handshake with 127.0.0.1:{port} failed" in body["message"]


async def test_upstream_timeout(start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy(outbound={"read_timeout": 0.5})
    async with client.get(f"{proxy.url}/echo/_echo/slow?seconds=3") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "upstream_timeout"


async def test_read_timeout_is_between_bytes_not_total(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """A download longer than read_timeout completes while bytes keep flowing."""
    proxy = await start_proxy(outbound={"read_timeout": 1})
    async with client.get(f"{proxy.url}/echo/_echo/stall?seconds=0.6") as resp:
        assert resp.status == 200
        await resp.read()


async def test_stall_mid_body_breaks_connection(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """A stall after the headers breaks the response off: never a short 'whole' body."""
    proxy = await start_proxy(outbound={"read_timeout": 0.5})
    async with client.get(f"{proxy.url}/echo/_echo/stall?seconds=3") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_client_disconnect_cancels_upstream(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    task = asyncio.ensure_future(client.get(f"{proxy.url}/echo/_echo/slow?seconds=30"))
    for _ in range(100):
        if echo.in_flight:
            break
        await asyncio.sleep(0.05)
    assert echo.in_flight == 1
    task.cancel()
    for _ in range(100):
        if echo.cancelled:
            break
        await asyncio.sleep(0.05)
    assert echo.cancelled == 1
    assert echo.in_flight == 0
