"""Request hygiene, Host/Origin checks, exposure on start and route policy (issue 5)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.access import exposure_problem
from proxy.browsers import allowed_hosts, allowed_origins, check_browser
from proxy.config import from_dict
from proxy.errors import ProxyError
from proxy.hygiene import check_request, check_stripped_path
from proxy.testing import EchoUpstream

from .conftest import StartProxy, raw_exchange
from .processes import free_port, read_until, spawn


def headers(**extra: str) -> CIMultiDict[str]:
    h: CIMultiDict[str] = CIMultiDict(Host="localhost:8080")
    for name, value in extra.items():
        h[name.replace("_", "-")] = value
    return h


def verdict(method: str, target: str, h: CIMultiDict[str] | None = None) -> str | None:
    try:
        check_request(method, target, headers() if h is None else h)
    except ProxyError as e:
        return f"{e.status} {e.code}"
    return None


BAD = "400 bad_request"
NOT_PROXIED = "501 not_implemented"


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        # Accepted: unusual but harmless targets go upstream byte for byte.
        ("GET", "/echo/a", None),
        ("GET", "/", None),
        ("GET", "/echo", None),
        ("GET", "/echo?only=query", None),
        ("GET", "/echo/a%20b/c+d;matrix=1", None),
        ("GET", "/echo/%E2%82%AC", None),
        ("GET", "/echo/x.y/..z/.hidden/%2e%2ex/...", None),
        ("GET", "/echo/a//b", None),
        ("GET", "/echo/x?$filter=url%20eq%20'https%3A%2F%2Fa%2F..%2Fb'&z=%zz", None),
        ("OPTIONS", "/echo/x", None),
        # Request-target forms other than origin-form.
        ("GET", "http://evil.example/x", BAD),
        ("GET", "https://evil.example/x", BAD),
        ("GET", "evil.example:443", BAD),
        ("CONNECT", "evil.example:443", BAD),
        ("CONNECT", "/echo/x", BAD),
        ("OPTIONS", "*", BAD),
        ("GET", "/echo/x#frag", BAD),
        # Paths that could leave the route's upstream or its base path.
        ("GET", "//evil.example/x", BAD),
        ("GET", "/echo/../x", BAD),
        ("GET", "/echo/./x", BAD),
        ("GET", "/echo/..", BAD),
        ("GET", "/echo/%2e%2e/x", BAD),
        ("GET", "/echo/%2E%2e/x", BAD),
        ("GET", "/echo/.%2e/x", BAD),
        ("GET", "/echo/%2e/x", BAD),
        ("GET", "/echo/..;x=1/y", BAD),
        ("GET", "/echo/..%3Bx/y", BAD),
        ("GET", "/echo/a%2fb", BAD),
        ("GET", "/echo/a%2Fb", BAD),
        ("GET", "/echo/a%5cb", BAD),
        ("GET", "/echo/a%5Cb", BAD),
        ("GET", "/echo/a\\b", BAD),
        ("GET", "/echo/a%zzb", BAD),
        ("GET", "/echo/a%2", BAD),
        ("GET", "/echo/%c0%ae%c0%ae/x", BAD),  # overlong UTF-8 for '.'
        # NUL and control characters, raw or encoded.
        ("GET", "/echo/a\x00b", BAD),
        ("GET", "/echo/a\x1bb", BAD),
        ("GET", "/echo/a\x7fb", BAD),
        ("GET", "/echo/a b", BAD),
        ("GET", "/echo/a?x=\x01", BAD),
        ("GET", "/echo/a%00b", BAD),
        ("GET", "/echo/a%0Ab", BAD),
        ("GET", "/echo/a%7fb", BAD),
        # The upstream would echo the injected token back.
        ("TRACE", "/echo/x", NOT_PROXIED),
        ("TRACK", "/echo/x", NOT_PROXIED),
    ],
)
def test_request_target_rules(method: str, target: str, expected: str | None) -> None:
    assert verdict(method, target) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"Upgrade": "websocket", "Connection": "Upgrade"}, NOT_PROXIED),
        ({"Upgrade": "h2c", "Connection": "keep-alive, upgrade"}, NOT_PROXIED),
        ({"Upgrade": "h2c"}, None),  # not an upgrade request: Upgrade is dropped as hop-by-hop
        ({"Connection": "upgrade"}, None),
    ],
)
def test_upgrade_rule(extra: dict[str, str], expected: str | None) -> None:
    assert verdict("GET", "/echo/ws", headers(**extra)) == expected


def test_host_header_required() -> None:
    assert verdict("GET", "/echo/x", CIMultiDict()) == BAD


def browser(h: CIMultiDict[str], allowed: tuple[str, ...] = ()) -> str | None:
    server = from_dict(
        {"server": {"allowed_hosts": list(allowed)}, **_MINIMAL}, {}, base_dir=Path()
    )
    try:
        check_browser(h, allowed_hosts(server.server))
    except ProxyError as e:
        return e.code
    return None


_MINIMAL = {
    "identities": {"a": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
    "routes": [{"name": "echo", "upstream": "http://127.0.0.1:1"}],
}


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("localhost", (), None),
        ("localhost:8080", (), None),
        ("LOCALHOST:1", (), None),
        ("127.0.0.1:8080", (), None),
        ("[::1]:8080", (), None),
        ("[::1]", (), None),
        ("evil.example", (), "host_not_allowed"),
        ("evil.example:8080", (), "host_not_allowed"),
        ("127.0.0.2", (), "host_not_allowed"),
        ("localhost.evil.example", (), "host_not_allowed"),
        ("evil@localhost", (), "host_not_allowed"),
        ("localhost:8080:1", (), "host_not_allowed"),
        ("", (), "host_not_allowed"),
        ("gw.corp.example:443", ("gw.corp.example",), None),
        ("GW.Corp.Example", ("gw.corp.example",), None),
        ("[fd00::1]:8080", ("[fd00::1]",), None),
        ("other.corp.example", ("gw.corp.example",), "host_not_allowed"),
    ],
)
def test_host_allowlist(host: str, allowed: tuple[str, ...], expected: str | None) -> None:
    """Only loopback names and server.allowed_hosts, any port: this stops DNS rebinding."""
    assert browser(CIMultiDict(Host=host), allowed) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"Origin": "http://localhost:3000"}, None),
        ({"Origin": "http://127.0.0.1:8080"}, None),
        ({"Origin": "http://[::1]:8080"}, None),
        ({"Origin": "https://evil.example"}, "cross_site_request"),
        ({"Origin": "null"}, "cross_site_request"),
        ({"Origin": "http://[::1"}, "cross_site_request"),
        ({"Sec-Fetch-Site": "cross-site"}, "cross_site_request"),
        ({"Sec-Fetch-Site": "Cross-Site"}, "cross_site_request"),
        ({"Sec-Fetch-Site": "same-origin"}, None),
        ({"Sec-Fetch-Site": "none"}, None),
        ({"Origin": "http://localhost:3000", "Sec-Fetch-Site": "cross-site"}, "cross_site_request"),
    ],
)
def test_browser_requests_from_other_sites(extra: dict[str, str], expected: str | None) -> None:
    h = CIMultiDict(Host="localhost:8080")
    h.update(extra)
    assert browser(h) == expected


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET http://evil.example/echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET http://localhost/echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 400),
        (b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET //echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/../echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/./x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/%2e%2e/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/%2E/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/a%2Fb HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/a%5cb HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/a\\b HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/a%00b HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/a\x00b HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/a\x01b HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /echo/x HTTP/1.0\r\n\r\n", 400),
        (b"TRACE /echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 501),
        (
            b"GET /echo/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            501,
        ),
    ],
)
async def test_rejected_requests_never_forwarded(
    start_proxy: StartProxy, echo: EchoUpstream, raw: bytes, status: int
) -> None:
    proxy = await start_proxy([{"name": "echo", "prefix": "/", "upstream": echo.url}])
    response = await raw_exchange(proxy.url, raw)
    assert response.split(b"\r\n", 1)[0].split(b" ")[1] == str(status).encode()
    assert echo.requests == []


async def test_rejection_is_json_and_closes(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    raw = b"GET /echo/%2e%2e/x?secret=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    response = await raw_exchange(proxy.url, raw)  # no Connection: close: the proxy closes
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"Connection: close" in head
    assert json.loads(body)["error"] == "bad_request"


async def test_host_and_origin_enforced_end_to_end(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(server={"allowed_hosts": ["gw.corp.example"]})
    url = f"{proxy.url}/echo/x"
    cases = [
        ({"Host": "evil.example"}, 403, "host_not_allowed"),
        ({"Origin": "https://evil.example"}, 403, "cross_site_request"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross_site_request"),
        ({"Host": "gw.corp.example:8080"}, 200, None),
        ({"Origin": "http://localhost:5173", "Sec-Fetch-Site": "same-site"}, 200, None),
    ]
    for extra, status, code in cases:
        async with client.get(url, headers=extra) as resp:
            assert resp.status == status, extra
            if code is not None:
                assert (await resp.json())["error"] == code
    assert len(echo.requests) == 2


async def test_livez_open_readyz_checks_host(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """livez says nothing and is always reachable; readyz shows details, so Host applies."""
    proxy = await start_proxy()
    evil = {"Host": "evil.example"}
    async with client.get(f"{proxy.url}/_proxy/livez", headers=evil) as resp:
        assert resp.status == 200
    async with client.get(f"{proxy.url}/_proxy/readyz", headers=evil) as resp:
        assert resp.status == 403


# --- binding a non-loopback address -------------------------------------------------------


# Only ever checked or refused: no test binds all interfaces.
ANY = "0.0.0.0"  # noqa: S104
KEY_SHA = hashlib.sha256(b"k").hexdigest()


@pytest.mark.parametrize(
    ("host", "server", "access", "refused"),
    [
        ("127.0.0.1", {}, None, False),
        ("localhost", {}, None, False),
        ("::1", {}, None, False),
        (ANY, {}, None, True),
        ("::", {}, None, True),
        ("192.0.2.10", {}, None, True),
        ("gateway.corp.example", {}, None, True),
        (ANY, {}, {"clients": []}, True),
        (ANY, {}, {"clients": [{"name": "ci", "key_sha256": KEY_SHA}]}, False),
        (ANY, {"allow_anonymous_remote": True}, None, False),
    ],
)
def test_exposure_check(
    host: str, server: dict[str, object], access: dict[str, object] | None, refused: bool
) -> None:
    raw = {**_MINIMAL, "server": {"host": host, **server}}
    if access is not None:
        raw["access"] = access
    config = from_dict(raw, {}, base_dir=Path())
    assert (exposure_problem(config) is not None) is refused


async def test_serve_refuses_non_loopback_without_access(tmp_path: Path) -> None:
    """--host 0.0.0.0 overrides a safe file; the proxy says why and never binds."""
    port = free_port()
    path = tmp_path / "proxy.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        '[identities.a]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\n'
        '[[routes]]\nname = "x"\nupstream = "http://127.0.0.1:1"\n'
    )
    proc = await spawn("serve", "--config", str(path), "--host", ANY)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert f"refusing to listen on {ANY}" in text
    assert "[[access.clients]]" in text
    assert "allow_anonymous_remote" in text
    assert "server.listening" not in text


async def test_anonymous_remote_warns_at_start(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "proxy.toml"
    path.write_text(
        f"[server]\nport = {port}\nallow_anonymous_remote = true\n"
        "[tokens]\nprefetch = false\n"
        '[identities.a]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\n'
        '[[routes]]\nname = "x"\nupstream = "http://127.0.0.1:1"\n'
    )
    proc = await spawn("serve", "--config", str(path))
    assert proc.stderr is not None
    try:
        seen = await read_until(proc.stderr, "server.listening")
        assert "server.anonymous_remote" in seen
        assert "acts as the service principal" in seen
    finally:
        proc.terminate()
        await proc.communicate()


async def test_anonymous_remote_warns_on_readyz(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(server={"allow_anonymous_remote": True})
    async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
        body = await resp.json()
    assert "acts as the service principal" in body["warnings"][0]
    plain = await start_proxy()
    async with client.get(f"{plain.url}/_proxy/readyz") as resp:
        assert "warnings" not in await resp.json()


# --- route policy ---------------------------------------------------------------------------


@pytest.fixture
async def policy_proxy(start_proxy: StartProxy, echo: EchoUpstream) -> str:
    proxy = await start_proxy(
        [
            {
                "name": "ro",
                "prefix": "/ro",
                "upstream": echo.url,
                "methods": ["GET", "HEAD", "OPTIONS"],
                "allow_paths": ["/apps/**", "/env"],
                "deny_paths": ["/apps/*/secret*"],
            },
            {"name": "small", "prefix": "/small", "upstream": echo.url, "max_body_bytes": 100},
            {"name": "big", "prefix": "/big", "upstream": echo.url, "max_body_bytes": 200_000},
        ]
    )
    return proxy.url


async def test_route_methods_405_with_allow(
    policy_proxy: str, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    async with client.post(f"{policy_proxy}/ro/apps/x", data=b"x") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert (await resp.json())["error"] == "method_not_allowed"
    async with client.get(f"{policy_proxy}/ro/apps/x") as resp:
        assert resp.status == 200
    assert [r.method for r in echo.requests] == ["GET"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ro/apps/a", 200),
        ("/ro/apps/a/b?x=1", 200),
        ("/ro/env", 200),
        ("/ro/env/x", 403),
        ("/ro/other", 403),
        ("/ro", 403),
        ("/ro/apps/a/secret1", 403),
        ("/ro/APPS/a/SECRET1", 403),  # the upstreams are case-insensitive
        ("/ro/apps/a/%73ecret", 403),  # decoded before matching
        ("/ro/apps/a//secret", 403),  # a run of slashes is one
        ("/ro/apps//a/secret", 403),
    ],
)
async def test_route_allow_and_deny_paths(
    policy_proxy: str, echo: EchoUpstream, client: aiohttp.ClientSession, path: str, status: int
) -> None:
    # encoded=True: the path goes out exactly as written, %73 and // included.
    async with client.get(URL(f"{policy_proxy}{path}", encoded=True)) as resp:
        assert resp.status == status
        if status == 403:
            assert (await resp.json())["error"] == "path_not_allowed"
    assert len(echo.requests) == (1 if status == 200 else 0)


async def test_max_body_bytes_declared(
    policy_proxy: str, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    async with client.post(f"{policy_proxy}/small/x", data=b"x" * 101) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "payload_too_large"
    assert echo.requests == []
    async with client.post(f"{policy_proxy}/small/x", data=b"x" * 100) as resp:
        assert resp.status == 200


async def _chunks(total: int, size: int = 16_384) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"y" * n


@pytest.mark.parametrize(("route", "size"), [("small", 101), ("big", 300_000)])
async def test_max_body_bytes_chunked(
    policy_proxy: str, echo: EchoUpstream, client: aiohttp.ClientSession, route: str, size: int
) -> None:
    """A chunked body has no length up front: it is cut off once it passes the limit."""
    try:
        async with client.post(f"{policy_proxy}/{route}/x", data=_chunks(size)) as resp:
            assert resp.status == 413
    except aiohttp.ClientError:
        pass  # the proxy may break the connection off while the client is still sending
    assert all(r.body_bytes < size for r in echo.requests)


async def test_chunked_body_under_limit_passes(
    policy_proxy: str, client: aiohttp.ClientSession
) -> None:
    async with client.post(f"{policy_proxy}/big/x", data=_chunks(150_000)) as resp:
        assert resp.status == 200
        assert (await resp.json())["body_bytes"] == 150_000


async def _expect_exchange(url: str, head: bytes) -> bytes:
    """Send headers with Expect: 100-continue and read the first response head."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ("", b"HTTP/1.1 100"),
        ("Content-Length: 999999\r\n", b"HTTP/1.1 413"),
    ],
)
async def test_expect_continue_checks_before_the_body(
    start_proxy: StartProxy, echo: EchoUpstream, extra: str, status: bytes
) -> None:
    """The body is asked for only when the request would be accepted: a body over the route's
    limit is refused before the client sends it."""
    proxy = await start_proxy(
        [{"name": "e", "prefix": "/e", "upstream": echo.url, "max_body_bytes": 1000}]
    )
    length = "" if "Content-Length" in extra else "Content-Length: 5\r\n"
    head = (
        f"PUT /e/x HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n{length}{extra}"
        "Connection: close\r\n\r\n"
    ).encode()
    assert (await _expect_exchange(proxy.url, head)).startswith(status)
    assert echo.requests == []


async def test_expect_continue_needs_the_key_first(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    proxy = await start_proxy(access={"clients": [{"name": "c", "key_sha256": digest}]})
    head = (
        b"PUT /echo/x HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\n"
    )
    assert (await _expect_exchange(proxy.url, head)).startswith(b"HTTP/1.1 401")
    with_key = head.replace(b"Expect:", b"X-Api-Key: k\r\nExpect:")
    assert (await _expect_exchange(proxy.url, with_key)).startswith(b"HTTP/1.1 100")


async def test_reserved_prefix_is_judged_decoded(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """aiohttp routes on the decoded path, so /%5Fproxy/... is the proxy's own namespace
    everywhere: its endpoints answer there, and nothing under it goes to a "/" route."""
    proxy = await start_proxy([{"name": "all", "prefix": "/", "upstream": echo.url}])
    async with client.get(URL(f"{proxy.url}/%5Fproxy/livez", encoded=True)) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "alive"
    async with client.get(URL(f"{proxy.url}/%5Fproxy/nothing", encoded=True)) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "no_route"
    async with client.get(f"{proxy.url}/_proxy/nothing") as resp:
        assert resp.status == 404
    assert echo.requests == []


# -- odd bytes (issue 13, item 7) ------------------------------------------------------------

ODD_KEY = "ppk_odd-bytes-key"


@pytest.mark.parametrize("access", [False, True], ids=["open", "clients"])
@pytest.mark.parametrize("value", [b"a\xffb", b"caf\xc3", b"\x80", b"\xc0\xae"])
async def test_header_value_not_utf8_is_400_never_500(
    start_proxy: StartProxy, echo: EchoUpstream, access: bool, value: bytes
) -> None:
    """A header value that is not UTF-8 is refused with a JSON 400 and never forwarded, with
    or without [access] clients (whose key removal copies the headers), and with the tap on."""
    tables: dict[str, Any] = {"tap": {"enabled": True}}
    if access:
        digest = hashlib.sha256(ODD_KEY.encode()).hexdigest()
        tables["access"] = {"clients": [{"name": "c", "key_sha256": digest}]}
    proxy = await start_proxy(**tables)
    raw = (
        b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: " + ODD_KEY.encode() + b"\r\n"
        b"X-Odd: " + value + b"\r\n\r\n"
    )
    response = await raw_exchange(proxy.url, raw)
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.split(b" ", 2)[1] == b"400"
    assert json.loads(body)["error"] == "bad_request"
    assert echo.requests == []


async def test_utf8_header_value_forwarded_intact(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    """Non-ASCII UTF-8 in a header value reaches the upstream byte for byte."""
    proxy = await start_proxy()
    value = "café €".encode()
    raw = b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Name: " + value
    raw += b"\r\n\r\n"
    response = await raw_exchange(proxy.url, raw)
    assert response.split(b" ", 2)[1] == b"200"
    # The echo upstream shows raw header bytes as latin-1 text.
    assert ("X-Name", value.decode("latin-1")) in echo.requests[0].headers


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/echo//providers", None),
        ("/echo///x", None),
        ("/echo//", None),
        ("/echo/x//y", "/x//y"),
        ("/echo/?a=//b", "/?a=//b"),
        ("/echo?x=//y", "/?x=//y"),
    ],
)
async def test_double_slash_after_the_prefix_is_400(
    start_proxy: StartProxy, echo: EchoUpstream, target: str, forwarded: str | None
) -> None:
    """After the prefix is stripped, the path the upstream would see must not start with //,
    the rule the whole target obeys; a // further in, or in the query, is forwarded."""
    proxy = await start_proxy()
    raw = f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    response = await raw_exchange(proxy.url, raw)
    status = response.split(b" ", 2)[1]
    if forwarded is None:
        assert status == b"400"
        assert echo.requests == []
    else:
        assert status == b"200"
        assert echo.requests[0].raw_path == forwarded


async def test_double_slash_kept_when_the_prefix_is_not_stripped(
    start_proxy: StartProxy, echo: EchoUpstream
) -> None:
    """strip_prefix = false: the upstream sees /echo//x, whose path starts with one slash."""
    proxy = await start_proxy(
        [{"name": "echo", "prefix": "/echo", "upstream": echo.url, "strip_prefix": False}]
    )
    raw = b"GET /echo//x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(proxy.url, raw)
    assert response.split(b" ", 2)[1] == b"200"
    assert echo.requests[0].raw_path == "/echo//x"


def test_stripped_path_rule() -> None:
    check_stripped_path("/bap/providers", "/bap")
    check_stripped_path("//x", "/")  # the "/" route strips nothing; the whole target's rule
    with pytest.raises(ProxyError, match="//"):
        check_stripped_path("/bap//providers", "/bap")


# -- Origins on a gateway (issue 13, item 10) -------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "allowed", "origin", "expected"),
    [
        # A local proxy: pages on this machine are its own.
        ("127.0.0.1", (), "http://localhost:3000", None),
        ("localhost", ("gw.corp.example",), "http://127.0.0.1:5173", None),
        # A gateway: only the names it is configured to be reached by.
        (ANY, ("gw.corp.example",), "http://localhost:3000", "cross_site_request"),
        (ANY, ("gw.corp.example",), "http://127.0.0.1:8080", "cross_site_request"),
        (ANY, ("gw.corp.example",), "http://[::1]:8080", "cross_site_request"),
        ("10.1.2.3", ("gw.corp.example",), "http://localhost", "cross_site_request"),
        (ANY, ("gw.corp.example",), "https://gw.corp.example", None),
        (ANY, ("gw.corp.example",), "https://GW.corp.example:8443", None),
        (ANY, ("gw.corp.example",), "https://evil.example", "cross_site_request"),
        (ANY, ("gw.corp.example", "localhost"), "http://localhost:3000", None),  # listed
    ],
)
def test_loopback_origins_not_trusted_on_a_gateway(
    listen: str, allowed: tuple[str, ...], origin: str, expected: str | None
) -> None:
    """On a non-loopback listener an Origin must match server.allowed_hosts (or public_url):
    a page on the user's own machine is another site to a gateway reached by its name."""
    raw = {
        "server": {"host": listen, "allowed_hosts": list(allowed)},
        "access": {"clients": [{"name": "c", "key_sha256": KEY_SHA}]},
        **_MINIMAL,
    }
    server = from_dict(raw, {}, base_dir=Path()).server
    h = CIMultiDict(Host="gw.corp.example" if allowed else "localhost", Origin=origin)
    found = None
    try:
        check_browser(h, allowed_hosts(server), (), allowed_origins(server))
    except ProxyError as e:
        found = e.code
    assert found == expected


@pytest.mark.parametrize(
    "behind", [{"public_url": "https://ppgw.corp.example"}, {"trusted_proxies": ["127.0.0.1"]}]
)
def test_a_loopback_listener_behind_a_reverse_proxy_is_a_gateway_for_origins(
    behind: dict[str, Any],
) -> None:
    """Reached from the network through a proxy on the same machine, a page on the user's own
    localhost is another site: its Origin is refused unless listed."""
    raw = {"server": {"host": "127.0.0.1", **behind}, **_MINIMAL}
    server = from_dict(raw, {}, base_dir=Path()).server
    h = CIMultiDict(Host="localhost", Origin="http://localhost:3000")
    with pytest.raises(ProxyError) as refused:
        check_browser(h, allowed_hosts(server), (), allowed_origins(server))
    assert refused.value.code == "cross_site_request"


def test_public_url_host_is_a_trusted_origin_on_a_gateway() -> None:
    raw = {
        "server": {"host": ANY, "public_url": "https://ppgw.corp.example"},
        "access": {"clients": [{"name": "c", "key_sha256": KEY_SHA}]},
        **_MINIMAL,
    }
    assert allowed_origins(from_dict(raw, {}, base_dir=Path()).server) == {"ppgw.corp.example"}


async def test_gateway_refuses_a_page_on_localhost_end_to_end(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """A proxy configured to listen on all interfaces (bound here to 127.0.0.1 by the test)
    refuses a request from a page on http://localhost:3000 and takes one from its own name."""
    proxy = await start_proxy(
        server={"host": ANY, "allowed_hosts": ["gw.corp.example"]},
        access={"clients": [{"name": "c", "key_sha256": KEY_SHA}]},
    )
    key = {"X-Api-Key": "k", "Host": "gw.corp.example"}
    async with client.post(
        f"{proxy.url}/echo/x", headers={**key, "Origin": "http://localhost:3000"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "cross_site_request"
    async with client.post(
        f"{proxy.url}/echo/x", headers={**key, "Origin": "https://gw.corp.example"}
    ) as resp:
        assert resp.status == 200
    assert len(echo.requests) == 1
