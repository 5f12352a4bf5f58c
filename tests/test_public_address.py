"""The address clients see behind a reverse proxy: server.public_url, and Forwarded /
X-Forwarded-* from server.trusted_proxies only. From other peers those headers change nothing,
and from no peer do they reach the upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import ServerConfig
from proxy.public_address import PublicAddress, parse_forwarded

from .conftest import StartProxy
from .upstreams import upstream

PATH = "/bap/providers/Microsoft.BusinessAppPlatform/environments"
# What a proxy in front (or a client pretending to be one) may say about the client: none of it
# ever reaches the upstream.
FORWARDING = {
    "Forwarded": "for=198.51.100.7;proto=https;host=gw.corp.example",
    "X-Forwarded-For": "198.51.100.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "gw.corp.example",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/outer",
    "X-Forwarded-Server": "edge.corp.internal",
    "X-Forwarded-Scheme": "https",
    "X-Forwarded-Ssl": "on",
    "X-Real-IP": "198.51.100.7",
    "X-Client-IP": "198.51.100.7",
    "True-Client-IP": "198.51.100.7",
    "X-Original-Host": "gw.corp.example",
    "X-Original-URL": "/admin",
    "X-Rewrite-URL": "/admin",
    "Front-End-Https": "on",
    "Via": "1.1 edge.corp.internal",
}


def forwarded_upstream(received: dict[str, str]) -> list[str]:
    """The forwarding headers among those the upstream received (none, ever)."""
    names = {name.lower() for name in FORWARDING}
    return [name for name in received if name.lower() in names]


class Operations:
    """Answers 202 with an absolute Location on itself, and keeps the headers it received."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(dict(request.headers))
        return web.json_response(
            {"next": f"{self.url}/providers/x?page=2"},
            status=202,
            headers={"Location": f"{self.url}/operations/1"},
        )


@pytest.fixture
async def ops() -> AsyncIterator[Operations]:
    server = Operations()
    async with upstream(server.handle) as url:
        server.url = url
        yield server


async def start(start_proxy: StartProxy, ops: Operations, **server: Any) -> str:
    route = {"name": "bap", "prefix": "/bap", "upstream": ops.url, "rewrite_links": True}
    return (await start_proxy([route], server=server)).url


async def post(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, str, dict[str, Any]]:
    async with client.post(url + PATH, headers=headers) as resp:
        body = await resp.json()
        return resp.status, resp.headers.get("Location", ""), body


async def test_public_url_fixes_the_links(
    start_proxy: StartProxy, ops: Operations, client: aiohttp.ClientSession
) -> None:
    """Whatever Host the request carries; its host name is allowed without allowed_hosts."""
    url = await start(start_proxy, ops, public_url="https://ppproxy.corp.example")
    for host in (None, "ppproxy.corp.example"):
        status, location, body = await post(client, url, {"Host": host} if host else {})
        assert status == 202
        assert location == "https://ppproxy.corp.example/bap/operations/1"
        assert body["next"] == "https://ppproxy.corp.example/bap/providers/x?page=2"


@pytest.mark.parametrize(
    "headers",
    [
        {"Forwarded": 'for=198.51.100.7;proto=https;host="gw.corp.example:8443"'},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.corp.example:8443"},
        # Appended by the trusted peer: its own (last) values count.
        {
            "X-Forwarded-Proto": "http, https",
            "X-Forwarded-Host": "evil.example, gw.corp.example:8443",
        },
    ],
)
async def test_a_trusted_proxy_says_what_the_client_used(
    start_proxy: StartProxy,
    ops: Operations,
    client: aiohttp.ClientSession,
    headers: dict[str, str],
) -> None:
    url = await start(
        start_proxy, ops, trusted_proxies=["127.0.0.1"], allowed_hosts=["gw.corp.example"]
    )
    status, location, body = await post(client, url, headers)
    assert status == 202
    assert location == "https://gw.corp.example:8443/bap/operations/1"
    assert body["next"] == "https://gw.corp.example:8443/bap/providers/x?page=2"
    # The proxy decided the client-facing address itself: the upstream hears of none of it.
    assert forwarded_upstream(ops.received[0]) == []


async def test_a_trusted_proxy_s_forwarding_headers_never_reach_the_upstream(
    start_proxy: StartProxy, ops: Operations, client: aiohttp.ClientSession
) -> None:
    """Every client-address header a proxy in front may add is dropped, so an upstream that
    builds links from them cannot build prefix-less ones, nor learn internal names."""
    url = await start(
        start_proxy, ops, trusted_proxies=["127.0.0.1"], allowed_hosts=["gw.corp.example"]
    )
    status, location, _ = await post(client, url, {**FORWARDING, "X-Keep": "1"})
    assert status == 202
    assert location == "https://gw.corp.example/bap/operations/1"
    received = ops.received[0]
    assert forwarded_upstream(received) == []
    assert received["X-Keep"] == "1"


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8", "::1"]])
async def test_the_same_headers_from_an_untrusted_peer_change_nothing(
    start_proxy: StartProxy,
    ops: Operations,
    client: aiohttp.ClientSession,
    trusted: list[str],
) -> None:
    """Ignored, and removed before forwarding; a host name there is not even checked."""
    url = await start(start_proxy, ops, trusted_proxies=trusted)
    headers = {**FORWARDING, "Forwarded": "proto=https;host=evil.example", "X-Keep": "1"}
    headers["X-Forwarded-Host"] = "evil.example"
    status, location, _ = await post(client, url, headers)
    assert status == 202
    assert location == f"{url}/bap/operations/1"
    received = ops.received[0]
    assert forwarded_upstream(received) == []
    assert received["X-Keep"] == "1"


async def test_a_forwarded_host_must_be_allowed_too(
    start_proxy: StartProxy, ops: Operations, client: aiohttp.ClientSession
) -> None:
    """DNS rebinding through the proxy in front: the name the browser used is checked, as is
    the Host the proxy in front wrote."""
    url = await start(start_proxy, ops, trusted_proxies=["127.0.0.0/8"])
    for headers in (
        {"X-Forwarded-Host": "evil.example"},
        {"Forwarded": "host=evil.example"},
        {"Forwarded": "host=localhost", "X-Forwarded-Host": "evil.example"},
        {"Host": "evil.example", "X-Forwarded-Host": "localhost"},
    ):
        async with client.post(url + PATH, headers=headers) as resp:
            assert resp.status == 403, headers
            assert (await resp.json())["error"] == "host_not_allowed"
    assert ops.received == []


async def test_only_the_elements_of_trusted_proxies_are_read(
    start_proxy: StartProxy, ops: Operations, client: aiohttp.ClientSession
) -> None:
    """Forwarded from a chain: the element written for the client by the outermost trusted
    proxy; whatever the client wrote to the left of it is never read."""
    url = await start(
        start_proxy,
        ops,
        trusted_proxies=["127.0.0.1", "10.0.0.0/8"],
        allowed_hosts=["gw.corp.example", "internal.example"],
    )
    forwarded = (
        "host=evil.example;proto=http, "  # what the client itself sent
        "for=198.51.100.7;proto=https;host=gw.corp.example, "  # the edge proxy, for the client
        'for="10.0.0.5:4711";proto=http;host=internal.example'  # the inner one, for the edge
    )
    status, location, _ = await post(client, url, {"Forwarded": forwarded})
    assert status == 202
    assert location == "https://gw.corp.example/bap/operations/1"


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        ("for=192.0.2.43", [{"for": "192.0.2.43"}]),
        (
            'For="[2001:db8:cafe::17]:4711";Proto=HTTPS, for=unknown',
            [{"for": "[2001:db8:cafe::17]:4711", "proto": "HTTPS"}, {"for": "unknown"}],
        ),
        ('host="a\\"b";by=_hidden', [{"host": 'a"b', "by": "_hidden"}]),
        ("for=192.0.2.43,, ;for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
        ("garbage", None),
        ('for="unterminated', None),
        ("", None),
    ],
)
def test_parse_forwarded(value: str, elements: list[dict[str, str]] | None) -> None:
    """RFC 7239 §4: names case-insensitive, values tokens or quoted strings."""
    assert parse_forwarded(value) == elements


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # an IPv4 peer on a dual-stack socket
        ("fd00::1", True),
        ("fe80::1%eth0", False),
        ("11.0.0.1", False),
        ("", False),
        ("not-an-ip", False),
    ],
)
def test_which_peers_are_trusted(peer: str, trusted: bool) -> None:
    addresses = PublicAddress(ServerConfig(trusted_proxies=("10.0.0.0/8", "fd00::/8")))
    assert addresses.trusts(peer) is trusted
