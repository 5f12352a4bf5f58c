"""The tap's tools: copy as curl / PowerShell, resend and edit-and-resend, the HAR bodies
replay needs, and ``ppproxy replay`` (matching, cycling, not_recorded; end to end through real
processes)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.access import new_key
from proxy.replay import Recordings, load
from proxy.replay.recorded import HarError
from proxy.testing import EchoUpstream, IdentityProvider, LocalCA
from proxy.testing.dataverse import DataverseUpstream

from .conftest import Proxy, StartProxy, config_dict
from .processes import free_port, read_until, spawn, write_config

TAP_ON = {"enabled": True}
RESEND = {"X-PPProxy-Tap": "resend"}


async def listed(client: aiohttp.ClientSession, proxy: Proxy, **headers: str) -> list[Any]:
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges", headers=headers) as resp:
        assert resp.status == 200
        items: list[Any] = (await resp.json())["exchanges"]
    return items


async def post_contact(client: aiohttp.ClientSession, proxy: Proxy, **headers: str) -> int:
    async with client.post(
        f"{proxy.url}/echo/contacts?$select=name&x=1",
        data=b'{"firstname": "Ada", "note": "it\'s"}',
        headers={"Content-Type": "application/json", "X-Custom": "kept", **headers},
    ) as resp:
        assert resp.status == 200
    return int((await listed(client, proxy, **headers))[-1]["id"])


def upstream_view(echo: EchoUpstream, n: int) -> tuple[Any, ...]:
    """What the upstream saw of request ``n``, less what differs between two sends."""
    r = echo.requests[n]
    headers = tuple(
        (k.lower(), v)
        for k, v in r.headers
        if k.lower() not in ("x-ms-client-request-id", "authorization")
    )
    return r.method, r.raw_path, headers, r.body_sha256


# -- copy as a command ---------------------------------------------------------------------


async def test_curl_command_calls_the_proxy_and_sends_the_same_request(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """GET .../curl is text/plain; run by a shell, it reaches the proxy (not the upstream) and
    the upstream sees the same method, path, query, headers and body; it holds no token."""
    proxy = await start_proxy(tap=TAP_ON)
    exchange_id = await post_contact(client, proxy)
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}/curl") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        command = await resp.text()
    assert command.startswith(f"curl '{proxy.url}/echo/contacts?$select=name&x=1'")
    assert "-H 'X-Custom: kept'" in command
    assert "Authorization" not in command
    assert "eyJ" not in command
    assert "PPPROXY_KEY" not in command  # no [access]: no key needed
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command.replace("curl ", "curl -s -o /dev/null ", 1)
    )
    assert await proc.wait() == 0
    assert len(echo.requests) == 2
    assert upstream_view(echo, 1)[:2] == upstream_view(echo, 0)[:2]
    assert upstream_view(echo, 1)[3] == upstream_view(echo, 0)[3]  # the same body, byte for byte
    assert ("x-custom", "kept") in upstream_view(echo, 1)[2]


async def test_commands_use_a_key_placeholder_on_a_gateway(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """With [access], the commands carry $PPPROXY_KEY where the key goes, never a key."""
    key, digest = new_key()
    proxy = await start_proxy(
        tap=TAP_ON, access={"clients": [{"name": "ops", "key_sha256": digest, "admin": True}]}
    )
    exchange_id = await post_contact(client, proxy, **{"X-Api-Key": key})
    base = f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}"
    async with client.get(f"{base}/curl", headers={"X-Api-Key": key}) as resp:
        curl = await resp.text()
    async with client.get(f"{base}/powershell", headers={"X-Api-Key": key}) as resp:
        powershell = await resp.text()
    assert '-H "X-Api-Key: $PPPROXY_KEY"' in curl
    assert powershell.startswith(
        f"Invoke-RestMethod -Method POST -Uri '{proxy.url}/echo/contacts?$select=name&x=1'"
    )
    # PowerShell reads the environment variable the curl command reads: $env:, not a
    # PowerShell variable of the same name.
    assert "'X-Api-Key' = $env:PPPROXY_KEY" in powershell
    assert "-ContentType 'application/json'" in powershell
    assert '-Body \'{"firstname": "Ada", "note": "it\'\'s"}\'' in powershell
    for text in (curl, powershell):
        assert key not in text


async def test_curl_command_for_head_asks_for_the_head_only(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """A captured HEAD becomes `curl -I` (not `-X HEAD`, which waits for a body that never
    comes): run by a shell, it ends at once and reaches the upstream as HEAD."""
    proxy = await start_proxy(tap=TAP_ON)
    async with client.head(f"{proxy.url}/echo/contacts?x=1") as resp:
        assert resp.status == 200
    [item] = await listed(client, proxy)
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/{item['id']}/curl") as resp:
        command = await resp.text()
    assert command.startswith(f"curl -I '{proxy.url}/echo/contacts?x=1'")
    assert "-X HEAD" not in command
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command.replace("curl ", "curl -s -o /dev/null ", 1)
    )
    try:
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert [r.method for r in echo.requests] == ["HEAD", "HEAD"]


async def test_curl_leaves_out_a_body_not_captured_whole(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(tap={"enabled": True, "max_body_bytes": 10})
    text = {"Content-Type": "text/plain"}
    async with client.post(f"{proxy.url}/echo/big", data=b"x" * 100, headers=text) as resp:
        assert resp.status == 200
    [item] = await listed(client, proxy)
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/{item['id']}/curl") as resp:
        command = await resp.text()
    assert command.startswith("# only the first bytes of the 100-byte body were captured\n")
    assert "--data-binary" not in command


# -- resend --------------------------------------------------------------------------------


async def test_resend_sends_the_same_upstream_request_as_a_linked_exchange(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(tap=TAP_ON)
    exchange_id = await post_contact(client, proxy)
    url = f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}/resend"
    async with client.post(url, headers=RESEND) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["resend_of"] == exchange_id
    assert answer["status"] == 200
    assert upstream_view(echo, 1) == upstream_view(echo, 0)
    items = await listed(client, proxy)
    assert [(x["id"], x["resend_of"]) for x in items] == [
        (exchange_id, None),
        (answer["id"], exchange_id),
    ]


async def test_edit_and_resend_changes_what_is_sent(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """Edited method, target and body are sent; headers left out of the edit stay as captured."""
    proxy = await start_proxy(tap=TAP_ON)
    exchange_id = await post_contact(client, proxy)
    edit = {"method": "PATCH", "target": "/echo/contacts(1)", "body": '{"firstname":"Grace"}'}
    url = f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}/resend"
    async with client.post(url, json=edit, headers=RESEND) as resp:
        assert resp.status == 200, await resp.text()
    sent = echo.requests[1]
    assert (sent.method, sent.raw_path) == ("PATCH", "/contacts(1)")
    assert sent.body_bytes == len(b'{"firstname":"Grace"}')
    assert ("X-Custom", "kept") in sent.headers


async def test_resend_leaves_out_the_original_clients_credentials(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """A plain resend sends no header the redactor takes for a credential (by name or by
    value) and no Cookie; the answer and the exchange name them, and Edit and resend sends
    the ones typed back in; a query holding a credential is refused (409), not resent."""
    proxy = await start_proxy(tap=TAP_ON)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    secret_headers = {
        "X-Access-Token": "s3cret",
        "X-Client-Secret": "hunter2",
        "X-Forwarded-Credential": "abc",
        "X-Custom-Jwt": jwt,
        "Cookie": "session=abc",
    }
    exchange_id = await post_contact(client, proxy, **secret_headers)
    assert ("X-Access-Token", "s3cret") in echo.requests[0].headers  # the original had them
    base = f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}"
    async with client.get(base) as resp:
        shown = await resp.json()
    expected = ["X-Access-Token", "X-Client-Secret", "X-Forwarded-Credential", "X-Custom-Jwt"]
    assert sorted(shown["resend_leaves_out"]) == sorted([*expected, "Cookie"])
    async with client.post(base + "/resend", headers=RESEND) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert sorted(answer["left_out"]) == sorted([*expected, "Cookie"])
    again = echo.requests[1]
    assert ("X-Custom", "kept") in again.headers
    for name, value in secret_headers.items():
        assert all(k.lower() != name.lower() for k, _ in again.headers), name
        assert all(value not in v for _, v in again.headers), name
    # Edit and resend: a header typed back in is sent as typed.
    edit = {"headers": [["X-Custom", "kept"], ["X-Access-Token", "mine"]]}
    async with client.post(base + "/resend", json=edit, headers=RESEND) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["left_out"] == []
    assert ("X-Access-Token", "mine") in echo.requests[2].headers
    # A credential in the query is not resent under the resender's identity.
    async with client.get(f"{proxy.url}/echo/blob?sig=abcdef&x=1") as resp:
        assert resp.status == 200
    signed = (await listed(client, proxy))[-1]["id"]
    url = f"{proxy.url}/_proxy/tap/exchanges/{signed}/resend"
    async with client.post(url, headers=RESEND) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"] == "not_resendable"
    assert len(echo.requests) == 4


async def test_resend_the_guard_refuses_answers_at_once_with_its_error(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """An Edit and resend the route's policy refuses answers at once with the proxy's own
    status and error code (not a 10 s wait and an id of null)."""
    routes = [
        {
            "name": "echo",
            "prefix": "/echo",
            "upstream": echo.url,
            "deny_paths": ["/secret/**"],
            "methods": ["GET", "POST"],
        }
    ]
    proxy = await start_proxy(routes=routes, tap=TAP_ON)
    exchange_id = await post_contact(client, proxy)
    url = f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}/resend"
    for edit, status, code in [
        ({"target": "/echo/secret/x"}, 403, "path_not_allowed"),
        ({"method": "DELETE"}, 405, "method_not_allowed"),
    ]:
        started = asyncio.get_running_loop().time()
        async with client.post(url, json=edit, headers=RESEND) as resp:
            assert resp.status == status, await resp.text()
            assert (await resp.json())["error"] == code
        assert asyncio.get_running_loop().time() - started < 3
    assert len(echo.requests) == 1
    async with client.post(url, headers=RESEND) as resp:  # an allowed one still gets its id
        assert resp.status == 200
        assert (await resp.json())["id"] is not None


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "no page header"),
        ({**RESEND, "Origin": "http://localhost:1"}, "another origin"),
        ({**RESEND, "Sec-Fetch-Site": "same-site"}, "another origin of the site"),
    ],
)
async def test_resend_refused_unless_from_the_page(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    headers: dict[str, str],
    why: str,
) -> None:
    proxy = await start_proxy(tap=TAP_ON)
    exchange_id = await post_contact(client, proxy)
    url = f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}/resend"
    async with client.post(url, headers=headers) as resp:
        assert resp.status == 403, why
        assert (await resp.json())["error"] == "cross_site_request"
    assert len(echo.requests) == 1


@pytest.mark.parametrize(
    ("target", "status", "error"),
    [
        ("/_proxy/tap", 404, "no_route"),
        ("/%5Fproxy/livez", 404, "no_route"),
        ("/nowhere", 404, "no_route"),
        ("echo/x", 400, "bad_request"),
    ],
)
async def test_resend_never_leaves_the_routes(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    target: str,
    status: int,
    error: str,
) -> None:
    proxy = await start_proxy(tap=TAP_ON)
    exchange_id = await post_contact(client, proxy)
    url = f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}/resend"
    async with client.post(url, json={"target": target}, headers=RESEND) as resp:
        assert (resp.status, (await resp.json())["error"]) == (status, error)
    assert len(echo.requests) == 1


async def test_resend_needs_the_whole_body(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """A body over tap.max_body_bytes cannot be resent as it was (409), but an edit with a
    body of its own can."""
    proxy = await start_proxy(tap={"enabled": True, "max_body_bytes": 10})
    async with client.post(f"{proxy.url}/echo/big", data=b"x" * 100) as resp:
        assert resp.status == 200
    [item] = await listed(client, proxy)
    url = f"{proxy.url}/_proxy/tap/exchanges/{item['id']}/resend"
    async with client.post(url, headers=RESEND) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"] == "not_resendable"
    async with client.post(url, json={"body": "small"}, headers=RESEND) as resp:
        assert resp.status == 200
    assert [r.body_bytes for r in echo.requests] == [100, 5]


async def test_resend_on_a_gateway_acts_as_the_admin_resending(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """With [access], the resend carries the key of the admin who asked (the tool's key was
    never kept) and the new exchange shows that client."""
    admin_key, admin_digest = new_key()
    tool_key, tool_digest = new_key()
    clients = [
        {"name": "ops", "key_sha256": admin_digest, "admin": True},
        {"name": "tool", "key_sha256": tool_digest},
    ]
    proxy = await start_proxy(tap=TAP_ON, access={"clients": clients})
    async with client.get(f"{proxy.url}/echo/x", headers={"X-Api-Key": tool_key}) as resp:
        assert resp.status == 200
    admin = {"X-Api-Key": admin_key}
    [item] = await listed(client, proxy, **admin)
    url = f"{proxy.url}/_proxy/tap/exchanges/{item['id']}/resend"
    async with client.post(url, headers={"X-Api-Key": tool_key, **RESEND}) as resp:
        assert resp.status == 403  # the tool may not look, so it may not resend either
    async with client.post(url, headers={**admin, **RESEND}) as resp:
        assert resp.status == 200
    first, again = await listed(client, proxy, **admin)
    assert (first["client"], again["client"]) == ("tool", "ops")
    assert all(admin_key not in v and tool_key not in v for _, v in echo.requests[1].headers)


# -- HAR bodies ----------------------------------------------------------------------------


async def test_har_keeps_the_client_url_and_bodies_as_captured(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """_clientUrl is the URL the client called; binary bodies are base64 of the exact bytes;
    gzip is decoded; a compact JSON body stays compact; secrets are still redacted."""
    proxy = await start_proxy(tap=TAP_ON)
    async with client.get(f"{proxy.url}/echo/_echo/bytes/300") as resp:
        binary = await resp.read()
    async with client.get(
        f"{proxy.url}/echo/_echo/gzip", headers={"Accept-Encoding": "gzip"}
    ) as resp:
        packed = await resp.read()
    async with client.post(
        f"{proxy.url}/echo/login?sig=abc",
        data=b'{"user":"a","password":"hunter2"}',
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
    async with client.get(f"{proxy.url}/_proxy/tap.har") as resp:
        entries = json.loads(await resp.read())["log"]["entries"]
    blob, zipped, login = entries
    assert blob["_clientUrl"] == f"{proxy.url}/echo/_echo/bytes/300"
    assert blob["response"]["content"]["encoding"] == "base64"
    assert base64.b64decode(blob["response"]["content"]["text"]) == binary
    assert zipped["response"]["content"]["text"].encode() == gzip.decompress(packed)
    assert login["request"]["postData"]["text"] == '{"user":"a","password":"[redacted]"}'
    assert "hunter2" not in json.dumps(entries)


# -- replay: matching ------------------------------------------------------------------------


def har_file(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "x.har"
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": entries}}))
    return path


def entry(
    method: str, url: str, text: str, *, body: str | None = None, client_url: str | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"method": method, "url": url, "headers": []}
    if body is not None:
        request["postData"] = {"mimeType": "application/json", "text": body}
        request["bodySize"] = len(body)
    found: dict[str, Any] = {
        "request": request,
        "response": {
            "status": 200,
            "statusText": "OK",
            "headers": [{"name": "Content-Type", "value": "text/plain"}],
            "content": {"size": len(text), "mimeType": "text/plain", "text": text},
        },
    }
    if client_url:
        found["_clientUrl"] = client_url
    return found


def test_replay_matches_method_path_query_and_body(tmp_path: Path) -> None:
    """The client URL wins over the upstream URL; query order does not matter; redacted
    values match anything; bodies compare as JSON values."""
    recordings = Recordings(
        load(
            har_file(
                tmp_path,
                [
                    entry("GET", "https://up/a?x=1&y=2", "a", client_url="http://p/r/a?x=1&y=2"),
                    entry("GET", "https://up/b?sig=[redacted]", "b"),
                    entry("POST", "https://up/c", "c1", body='{"n": 1, "pw": "[redacted]"}'),
                    entry("POST", "https://up/c", "c2", body='{"n": 2}'),
                ],
            )
        )
    )

    def text(method: str, target: str, body: bytes = b"") -> str | None:
        found = recordings.answer(method, target, body)
        return None if found is None else found.content.decode()

    assert text("GET", "/r/a?y=2&x=1") == "a"
    assert text("GET", "/a?x=1&y=2") is None  # the upstream path is not where clients call
    assert text("GET", "/b?sig=whatever") == "b"
    assert text("POST", "/c", b'{"pw":"secret","n":1}') == "c1"
    assert text("POST", "/c", b'{"n":2}') == "c2"
    assert text("POST", "/c", b'{"n":3}') is None
    assert text("POST", "/c") is None
    assert text("DELETE", "/b?sig=x") is None


def test_replay_cycles_through_repeated_matches(tmp_path: Path) -> None:
    recordings = Recordings(
        load(har_file(tmp_path, [entry("GET", "http://h/n", t) for t in ("1", "2", "3")]))
    )
    seen = [recordings.answer("GET", "/n", b"") for _ in range(5)]
    assert [s.content for s in seen if s is not None] == [b"1", b"2", b"3", b"1", b"2"]


def test_replay_refuses_a_file_that_is_not_har(tmp_path: Path) -> None:
    path = tmp_path / "bad.har"
    path.write_text('{"log": {"entries": [{"request": {}}]}}')
    with pytest.raises(HarError, match=r"log.entries\[0\]"):
        load(path)


# -- replay: end to end ----------------------------------------------------------------------


async def test_record_export_stop_then_replay_answers_the_same(
    idp: IdentityProvider,
    ca: LocalCA,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    """Record with the tap (a real `ppproxy serve` in front of the Dataverse stand-in), export
    HAR, stop the proxy, the identity provider and the upstream; `ppproxy replay` answers the
    same requests with the same statuses, headers and bodies, a repeated request with its
    recorded answers in turn, and an unmatched one with 404 not_recorded."""
    root = "/dv/api/data/v9.2"
    calls: list[tuple[str, str, bytes | None]] = [
        ("GET", f"{root}/accounts?$select=name", None),
        ("POST", f"{root}/accounts", b'{"name":"Contoso"}'),
        ("GET", f"{root}/accounts?$select=name", None),
        ("POST", f"{root}/accounts", b'{"name":"Fabrikam"}'),
        ("GET", f"{root}/accounts?$select=name", None),
    ]
    json_body = {"Content-Type": "application/json"}
    recorded = []
    async with aiohttp.ClientSession() as client:
        async with DataverseUpstream(ssl_context=ca.server_context()) as dv:
            port = free_port()
            routes = [{"name": "dv", "prefix": "/dv", "upstream": dv.url, "rewrite_links": True}]
            raw = config_dict(idp, ca_file, routes, server={"port": port}, tap=TAP_ON)
            proc = await spawn("serve", "--config", str(write_config(tmp_path, raw)))
            assert proc.stderr is not None
            await read_until(proc.stderr, "server.listening")
            base = proxy_base = f"http://127.0.0.1:{port}"
            try:
                for method, target, body in calls:
                    async with client.request(
                        method, base + target, data=body, headers=json_body
                    ) as resp:
                        recorded.append(
                            (
                                resp.status,
                                resp.headers.get("OData-EntityId"),
                                resp.headers.get("Content-Type"),
                                await resp.read(),
                            )
                        )
                async with client.get(f"{base}/_proxy/tap.har") as resp:
                    har = tmp_path / "session.har"
                    har.write_bytes(await resp.read())
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.communicate(), 20)
        await idp.close()
        assert b"Contoso" in recorded[2][3]
        assert b"Fabrikam" in recorded[4][3]

        replay_port = free_port()
        replayer = await spawn("replay", "--har", str(har), "--port", str(replay_port))
        assert replayer.stdout is not None
        try:
            await read_until(replayer.stdout, "Replaying 5 recorded")
            base = f"http://127.0.0.1:{replay_port}"
            for (method, target, body), (status, entity, kind, content) in zip(
                calls, recorded, strict=True
            ):
                async with client.request(
                    method, base + target, data=body, headers=json_body
                ) as resp:
                    # The same answer, its links now naming the replay (where a tool that
                    # follows them stays) instead of the proxy.
                    assert resp.status == status, target
                    expected = None if entity is None else entity.replace(proxy_base, base)
                    assert resp.headers.get("OData-EntityId") == expected, target
                    assert resp.headers.get("Content-Type") == kind, target
                    assert await resp.read() == content.replace(
                        proxy_base.encode(), base.encode()
                    ), target
            async with client.get(f"{base}{root}/acounts?$select=name") as resp:
                assert resp.status == 404
                missing = await resp.json()
            assert missing["error"] == "not_recorded"
            assert missing["nearest"][0] == f"GET {root}/accounts?$select=name"
            async with client.post(
                f"{base}{root}/accounts", data=b'{"name":"Northwind"}', headers=json_body
            ) as resp:
                assert resp.status == 404  # the body differs from both recorded ones
        finally:
            replayer.send_signal(signal.SIGINT)
            await asyncio.wait_for(replayer.communicate(), 20)
    assert replayer.returncode == 0


async def test_replay_keeps_web_pages_out(tmp_path: Path) -> None:
    """`ppproxy replay` checks Host and Origin as the proxy does: another Host name (DNS
    rebinding) gets 403 host_not_allowed unless given with --allowed-host, a page of another
    site gets 403 cross_site_request, neither sees the recorded body; recorded
    Access-Control-* headers are never replayed."""
    recorded = entry("GET", "https://up/b", "tenant data")
    recorded["response"]["headers"] += [
        {"name": "Access-Control-Allow-Origin", "value": "*"},
        {"name": "Access-Control-Allow-Credentials", "value": "true"},
        {"name": "X-Kept", "value": "yes"},
    ]
    har = har_file(tmp_path, [recorded])
    port = free_port()
    replayer = await spawn(
        "replay", "--har", str(har), "--port", str(port), "--allowed-host", "replay.test"
    )
    assert replayer.stdout is not None
    base = f"http://127.0.0.1:{port}/b"
    try:
        await read_until(replayer.stdout, "Replaying 1 recorded")
        async with aiohttp.ClientSession() as client:
            async with client.get(base, headers={"Origin": f"http://localhost:{port}"}) as resp:
                assert resp.status == 200
                assert await resp.text() == "tenant data"
                assert resp.headers["X-Kept"] == "yes"
                assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
            async with client.get(base, headers={"Host": f"replay.test:{port}"}) as resp:
                assert resp.status == 200  # named with --allowed-host
            for headers, code in [
                ({"Host": f"evil.example:{port}"}, "host_not_allowed"),
                ({"Origin": "http://evil.example"}, "cross_site_request"),
                ({"Sec-Fetch-Site": "cross-site"}, "cross_site_request"),
            ]:
                async with client.get(base, headers=headers) as resp:
                    assert resp.status == 403, headers
                    text = await resp.text()
                    assert json.loads(text)["error"] == code
                    assert "tenant data" not in text
                    assert "access-control-allow-origin" not in {h.lower() for h in resp.headers}
    finally:
        replayer.send_signal(signal.SIGINT)
        await asyncio.wait_for(replayer.communicate(), 20)
    assert replayer.returncode == 0
