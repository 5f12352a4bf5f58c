"""Legacy tools: URLs handed back by the API stay on the proxy; per-route ports; header edits."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.config import ConfigError, loads

from .conftest import StartProxy
from .upstreams import upstream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bap:
    """Answers like BAP: a long-running operation (202 + Location, polled until 200)."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: list[tuple[str, str, str]] = []  # method, path, authorization
        self.polls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(
            (request.method, request.raw_path, request.headers.get("Authorization", ""))
        )
        path = request.path
        if request.method == "POST" and path.endswith("/environments"):
            location = (
                f"{self.url}/providers/Microsoft.BusinessAppPlatform/operations/op1?api-version=1"
            )
            return web.json_response(
                {"status": "Accepted"},
                status=202,
                headers={
                    "Location": location,
                    "Azure-AsyncOperation": location,
                    "Operation-Location": location,
                    "Retry-After": "0",
                },
            )
        if path.endswith("/operations/op1"):
            self.polls += 1
            if self.polls < 3:
                return web.json_response(
                    {"status": "Running"},
                    status=202,
                    headers={"Location": f"{self.url}{request.raw_path}"},
                )
            return web.json_response({"status": "Succeeded", "name": "env-1"})
        if path == "/elsewhere":
            return web.Response(status=302, headers={"Location": "https://login.example.org/x"})
        return web.json_response({"path": request.raw_path})


async def follow(session: aiohttp.ClientSession, method: str, url: str) -> aiohttp.ClientResponse:
    """What a simple legacy tool does: call, then poll the Location it is given until done."""
    resp = await session.request(method, url, allow_redirects=False)
    for _ in range(10):
        if resp.status != 202:
            return resp
        url = resp.headers["Location"]
        resp.release()
        resp = await session.get(url, allow_redirects=False)
    return resp


async def test_long_running_operation_polled_through_proxy(
    start_proxy: StartProxy, bap: Bap, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([{"name": "bap", "prefix": "/bap", "upstream": bap.url}])
    path = "/providers/Microsoft.BusinessAppPlatform/environments"
    first = await client.post(f"{proxy.url}/bap{path}?api-version=1")
    assert first.status == 202
    for name in ("Location", "Azure-AsyncOperation", "Operation-Location"):
        assert first.headers[name] == (
            f"{proxy.url}/bap/providers/Microsoft.BusinessAppPlatform/operations/op1?api-version=1"
        )
    first.release()
    resp = await follow(client, "POST", f"{proxy.url}/bap{path}?api-version=1")
    assert resp.status == 200
    assert (await resp.json())["status"] == "Succeeded"
    assert len(bap.calls) == 5  # the first POST, then POST + three polls
    assert all(auth.startswith("Bearer ey") for _, _, auth in bap.calls)


async def test_unknown_hosts_and_unrelated_urls_unchanged(
    start_proxy: StartProxy, bap: Bap, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([{"name": "bap", "prefix": "/bap", "upstream": bap.url}])
    async with client.get(f"{proxy.url}/bap/elsewhere", allow_redirects=False) as resp:
        assert resp.headers["Location"] == "https://login.example.org/x"


async def test_host_header_decides_the_address(
    start_proxy: StartProxy, bap: Bap, client: aiohttp.ClientSession
) -> None:
    """The address in rewritten URLs is the one the client used, not a guess."""
    proxy = await start_proxy([{"name": "bap", "prefix": "/bap", "upstream": bap.url}])
    port = proxy.url.rsplit(":", 1)[1]
    headers = {"Host": f"localhost:{port}"}
    path = "/bap/providers/Microsoft.BusinessAppPlatform/environments"
    async with client.post(proxy.url + path, headers=headers) as resp:
        assert resp.headers["Location"].startswith(f"http://localhost:{port}/bap/providers/")


@pytest.fixture
async def bap() -> AsyncIterator[Bap]:
    server = Bap()
    async with upstream(server.handle) as url:
        server.url = url
        yield server


class Dataverse:
    """Answers like Dataverse: three pages linked by @odata.nextLink."""

    def __init__(self) -> None:
        self.url = ""
        self.auth: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization", ""))
        page = int(request.query.get("$skiptoken", "1"))
        base = f"{self.url}/api/data/v9.2"
        body: dict[str, object] = {
            "@odata.context": f"{base}/$metadata#accounts",
            "value": [
                {"name": f"account {page}", "@odata.id": f"{base}/accounts({page})", "n": 1.50}
            ],
        }
        if page < 3:
            body["@odata.nextLink"] = f"{base}/accounts?$skiptoken={page + 1}"
        text = json.dumps(body, indent=1).replace("/", "\\/") if page == 2 else json.dumps(body)
        if request.query.get("gzip"):
            return web.Response(
                body=gzip.compress(text.encode()),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        return web.Response(text=text, content_type="application/json")


@pytest.fixture
async def dv() -> AsyncIterator[Dataverse]:
    server = Dataverse()
    async with upstream(server.handle) as url:
        server.url = url
        yield server


def dv_route(dv: Dataverse, **options: object) -> dict[str, object]:
    """The /dv route to the Dataverse stand-in's Web API base, with ``options``."""
    return {"name": "dv", "prefix": "/dv", "upstream": f"{dv.url}/api/data/v9.2", **options}


async def test_paging_stays_on_the_proxy(
    start_proxy: StartProxy, dv: Dataverse, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv, rewrite_links=True)])
    names = []
    next_url: str | None = f"{proxy.url}/dv/accounts"
    while next_url:
        async with client.get(next_url) as resp:
            assert resp.headers["X-Ppproxy-Links"] == "rewritten"
            raw = await resp.read()
            assert int(resp.headers["Content-Length"]) == len(raw)
            page = json.loads(raw)
        names += [v["name"] for v in page["value"]]
        assert page["@odata.context"] == f"{proxy.url}/dv/$metadata#accounts"
        assert page["value"][0]["@odata.id"].startswith(f"{proxy.url}/dv/accounts(")
        next_url = page.get("@odata.nextLink")
        if next_url:
            assert next_url.startswith(f"{proxy.url}/dv/accounts?$skiptoken=")
    assert names == ["account 1", "account 2", "account 3"]
    assert len(dv.auth) == 3
    assert all(a.startswith("Bearer ey") for a in dv.auth)


async def test_rewrite_keeps_other_bytes(
    start_proxy: StartProxy, dv: Dataverse, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv, rewrite_links=True)])
    async with client.get(f"{proxy.url}/dv/accounts?$skiptoken=3") as resp:
        text = await resp.text()
    assert '"n": 1.5' in text  # numbers and spacing untouched
    assert dv.url not in text


@pytest.mark.parametrize(
    ("query", "cap", "reason"),
    [("?gzip=1", 1_000_000, "content-encoding"), ("", 50, "too-large")],
)
async def test_rewrite_skipped_and_said_so(
    start_proxy: StartProxy,
    dv: Dataverse,
    client: aiohttp.ClientSession,
    query: str,
    cap: int,
    reason: str,
) -> None:
    proxy = await start_proxy([dv_route(dv, rewrite_links=True, rewrite_max_bytes=cap)])
    async with client.get(f"{proxy.url}/dv/accounts{query}") as resp:
        assert resp.headers["X-Ppproxy-Links"] == f"unchanged; reason={reason}"
        raw = await resp.read()
    text = gzip.decompress(raw).decode() if reason == "content-encoding" else raw.decode()
    assert f"{dv.url}/api/data/v9.2/accounts?$skiptoken=2" in text


async def test_links_not_rewritten_without_opt_in(
    start_proxy: StartProxy, dv: Dataverse, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv)])
    async with client.get(f"{proxy.url}/dv/accounts") as resp:
        assert "X-Ppproxy-Links" not in resp.headers
        assert (await resp.json())["@odata.nextLink"].startswith(dv.url)


async def test_route_port_listener(
    start_proxy: StartProxy, bap: Bap, client: aiohttp.ClientSession
) -> None:
    """A route with its own port takes every path there, no prefix; Location points back there."""
    port = free_port()
    proxy = await start_proxy(
        [{"name": "bap", "prefix": "/bap", "upstream": bap.url, "port": port}]
    )
    path = "/providers/Microsoft.BusinessAppPlatform/environments"
    async with client.post(f"http://127.0.0.1:{port}{path}") as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == (
            f"http://127.0.0.1:{port}/providers/Microsoft.BusinessAppPlatform/"
            "operations/op1?api-version=1"
        )
    async with client.get(f"http://127.0.0.1:{port}/x?y=1") as resp:
        assert (await resp.json())["path"] == "/x?y=1"
    async with client.get(f"http://127.0.0.1:{port}/_proxy/livez") as resp:
        assert resp.status == 200  # the proxy's own endpoints are never forwarded
    # The main listener still routes by prefix, and points at the route's own port.
    async with client.post(f"{proxy.url}/bap{path}") as resp:
        assert resp.headers["Location"].startswith(f"http://127.0.0.1:{port}/providers/")


async def test_header_edits_and_default_query(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="ok", headers={"X-Internal": "1", "Server": "up"})

    async with upstream(handler) as url:
        route = {
            "name": "u",
            "prefix": "/u",
            "upstream": url,
            "set_request_headers": {"Prefer": "odata.maxpagesize=500"},
            "remove_request_headers": ["X-Drop"],
            "set_response_headers": {"Cache-Control": "no-store"},
            "remove_response_headers": ["X-Internal"],
            "default_query": {"api-version": "2020-10-01"},
        }
        proxy = await start_proxy([route])
        headers = {"X-Drop": "1", "X-Keep": "1", "Prefer": "return=minimal"}
        async with client.get(f"{proxy.url}/u/a?x=1", headers=headers) as resp:
            assert resp.headers["Cache-Control"] == "no-store"
            assert "X-Internal" not in resp.headers
        async with client.get(f"{proxy.url}/u/b?api-version=2016-11-01") as resp:
            assert resp.status == 200
        async with client.get(f"{proxy.url}/u/c") as resp:
            assert resp.status == 200
    first, second, third = seen
    assert first.raw_path == "/a?x=1&api-version=2020-10-01"
    assert first.headers["Prefer"] == "odata.maxpagesize=500"
    assert "X-Drop" not in first.headers
    assert first.headers["X-Keep"] == "1"
    assert second.raw_path == "/b?api-version=2016-11-01"
    assert third.raw_path == "/c?api-version=2020-10-01"


@pytest.mark.parametrize("key", ["set_request_headers", "set_response_headers"])
def test_authorization_cannot_be_edited(key: str) -> None:
    text = (
        '[identities.d]\ntenant_id="t"\nclient_id="c"\nclient_secret="s"\n'
        f'[[routes]]\npreset="bap"\n{key} = {{ Authorization = "Bearer x" }}\n'
    )
    with pytest.raises(ConfigError, match="Authorization cannot be changed"):
        loads(text, {})


def test_authorization_cannot_be_removed() -> None:
    text = (
        '[identities.d]\ntenant_id="t"\nclient_id="c"\nclient_secret="s"\n'
        '[[routes]]\npreset="bap"\nremove_request_headers = ["authorization"]\n'
    )
    with pytest.raises(ConfigError, match="authorization cannot be changed"):
        loads(text, {})


def test_route_ports_must_be_distinct() -> None:
    text = (
        '[server]\nport = 9000\n[identities.d]\ntenant_id="t"\nclient_id="c"\nclient_secret="s"\n'
        '[[routes]]\npreset="bap"\nport = 9001\n[[routes]]\npreset="flow"\nport = 9001\n'
        '[[routes]]\npreset="powerapps"\nport = 9000\n'
    )
    with pytest.raises(ConfigError) as info:
        loads(text, {})
    assert "routes[1].port: 9001 is also used by routes[0]" in info.value.problems
    assert "routes[2].port: 9000 is server.port; a route needs its own port" in info.value.problems


async def test_default_request_headers_fill_only_what_the_client_did_not_send(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """default_request_headers leaves the client's own value; set_request_headers replaces it."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="ok")

    async with upstream(handler) as url:
        route = {
            "name": "u",
            "prefix": "/u",
            "upstream": url,
            "default_request_headers": {"Prefer": "odata.maxpagesize=500"},
            "set_request_headers": {"X-Set": "proxy"},
        }
        proxy = await start_proxy([route])
        async with client.get(f"{proxy.url}/u/a", headers={"X-Set": "client"}) as resp:
            assert resp.status == 200
        async with client.get(
            f"{proxy.url}/u/b", headers={"prefer": "odata.maxpagesize=2", "X-Set": "client"}
        ) as resp:
            assert resp.status == 200
    defaulted, kept = seen
    assert defaulted.headers.getall("Prefer") == ["odata.maxpagesize=500"]
    assert kept.headers.getall("Prefer") == ["odata.maxpagesize=2"]
    assert defaulted.headers.getall("X-Set") == kept.headers.getall("X-Set") == ["proxy"]


def test_a_header_cannot_be_both_set_and_defaulted() -> None:
    text = (
        '[identities.d]\ntenant_id="t"\nclient_id="c"\nclient_secret="s"\n'
        '[[routes]]\npreset="bap"\nset_request_headers = { Prefer = "a" }\n'
        'default_request_headers = { prefer = "b", Authorization = "x" }\n'
    )
    with pytest.raises(ConfigError) as info:
        loads(text, {})
    assert info.value.problems == (
        "routes[0].default_request_headers: Authorization cannot be changed this way",
        "routes[0].default_request_headers: prefer is in set_request_headers too: set replaces "
        "the client's value, default fills it only when missing; keep one",
    )


async def test_odata_entity_id_points_at_the_proxy(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """SDKs read a created record's id from OData-EntityId, and may follow it."""
    base = ""

    async def created(request: web.Request) -> web.Response:
        entity = f"{base}/api/data/v9.2/accounts(00000000-0000-0000-0000-000000000001)"
        return web.Response(status=204, headers={"OData-EntityId": entity, "Location": entity})

    async with upstream(created) as url:
        base = url
        proxy = await start_proxy([{"name": "dv", "prefix": "/dv", "upstream": url}])
        async with client.post(f"{proxy.url}/dv/api/data/v9.2/accounts", json={}) as resp:
            entity = f"{proxy.url}/dv/api/data/v9.2/accounts(00000000-0000-0000-0000-000000000001)"
            assert resp.headers["OData-EntityId"] == entity
            assert resp.headers["Location"] == entity


async def test_relative_links_and_bodies_without_upstream_urls_are_left_alone(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """Relative nextLinks (as SAP CAP sends them) resolve against the proxy's URL by
    themselves; the body passes byte for byte and X-Ppproxy-Links says unchanged."""
    bodies: dict[str, bytes] = {}

    async def pages(request: web.Request) -> web.Response:
        page = int(request.query.get("$skiptoken", "1"))
        link = f', "@odata.nextLink": "Accounts?$skiptoken={page + 1}"' if page < 3 else ""
        body = f'{{"value": [{{"ID": {page}, "url": "https://elsewhere.example/x"}}]{link}}}'
        bodies[str(page)] = body.encode()
        return web.Response(body=body.encode(), content_type="application/json")

    async with upstream(pages) as url:
        route = {"name": "cap", "prefix": "/cap", "upstream": url, "rewrite_links": True}
        proxy = await start_proxy([route])
        ids, next_url = [], f"{proxy.url}/cap/odata/v4/Accounts"
        while next_url:
            async with client.get(next_url) as resp:
                assert resp.headers["X-Ppproxy-Links"] == "unchanged"
                raw = await resp.read()
            page = json.loads(raw)
            assert raw == bodies[str(page["value"][0]["ID"])]
            ids.append(page["value"][0]["ID"])
            link = page.get("@odata.nextLink")
            next_url = str(resp.url.join(URL(link))) if link else ""
    assert ids == [1, 2, 3]
