"""The debugging tap: capture, caps, redaction, the live stream, HAR, the recorder, access."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import cli
from proxy.access import new_key
from proxy.app import TAP, create_app
from proxy.commands.serve import with_tap
from proxy.config import from_dict
from proxy.config.tap import TapConfig
from proxy.errors import ConfigError
from proxy.exchange import BodyCapture
from proxy.jwt_unverified import summary as claims_summary
from proxy.tap.capture import body_record
from proxy.testing import EchoUpstream, IdentityProvider, pattern_sha256

from .conftest import Proxy, StartProxy, config_dict, from_peer, serve_app
from .processes import free_port, read_until, spawn

TAP_ON = {"enabled": True}


async def exchanges(client: aiohttp.ClientSession, proxy: Proxy) -> list[dict[str, Any]]:
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges") as resp:
        assert resp.status == 200
        items: list[dict[str, Any]] = (await resp.json())["exchanges"]
    return items


async def detail(client: aiohttp.ClientSession, proxy: Proxy, exchange_id: int) -> dict[str, Any]:
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}") as resp:
        assert resp.status == 200
        found: dict[str, Any] = await resp.json()
    return found


async def last(client: aiohttp.ClientSession, proxy: Proxy) -> dict[str, Any]:
    return await detail(client, proxy, (await exchanges(client, proxy))[-1]["id"])


def header(pairs: list[list[str]], name: str) -> str | None:
    return next((v for k, v in pairs if k.lower() == name.lower()), None)


# -- configuration -------------------------------------------------------------------------


def test_tap_config_defaults(idp_free_raw: dict[str, Any]) -> None:
    """Off by default; keep 200, 64 KiB per body, 16 MiB files, five rotated files kept."""
    config = from_dict(idp_free_raw, {}, base_dir=Path.cwd())
    assert config.tap == TapConfig()
    assert (config.tap.enabled, config.tap.keep, config.tap.max_body_bytes) == (False, 200, 65536)
    assert (config.tap.file_max_bytes, config.tap.file_keep) == (16 * 1024 * 1024, 5)


def test_tap_config_problems_all_reported(idp_free_raw: dict[str, Any], tmp_path: Path) -> None:
    raw = {
        **idp_free_raw,
        "tap": {
            "keep": 0,
            "max_body_bytes": -1,
            "file": "rec.jsonl",
            "file_max_bytes": 10,
            "colour": "blue",
        },
    }
    with pytest.raises(ConfigError) as e:
        from_dict(raw, {}, base_dir=tmp_path)
    text = e.value.render()
    for key in ("tap.keep", "tap.max_body_bytes", "tap.file_max_bytes", "tap.colour", "tap.file"):
        assert key in text
    assert "set tap.enabled = true" in text


def test_tap_file_relative_to_config(idp_free_raw: dict[str, Any], tmp_path: Path) -> None:
    raw = {**idp_free_raw, "tap": {"enabled": True, "file": "rec.jsonl"}}
    assert from_dict(raw, {}, base_dir=tmp_path).tap.file == (tmp_path / "rec.jsonl").resolve()


def test_cli_tap_flags(tmp_path: Path, idp_free_raw: dict[str, Any]) -> None:
    """``--tap`` turns the tap on; ``--tap-file`` records and implies ``--tap``."""
    config = from_dict(idp_free_raw, {}, base_dir=tmp_path)
    args = cli._parser().parse_args(["serve", "--tap-file", str(tmp_path / "t.jsonl")])
    tapped = with_tap(config, on=args.tap, file=args.tap_file)
    assert tapped.tap.enabled
    assert tapped.tap.file == (tmp_path / "t.jsonl").resolve()
    args = cli._parser().parse_args(["serve", "--tap"])
    assert with_tap(config, on=args.tap, file=args.tap_file).tap.enabled
    assert with_tap(config, on=False, file=None).tap.enabled is False
    with pytest.raises(ConfigError, match="--tap-file"):
        with_tap(config, on=False, file=tmp_path / "missing" / "t.jsonl")


@pytest.fixture
def idp_free_raw() -> dict[str, Any]:
    """A configuration that never needs the identity provider (nothing is started)."""
    return {
        "identities": {"default": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
        "routes": [{"name": "x", "prefix": "/x", "upstream": "https://x.example"}],
    }


# -- capture units -------------------------------------------------------------------------


def test_body_capture_stops_at_cap() -> None:
    """64 MiB pass through ``add``; only the cap is copied, the size counts everything."""
    capture = BodyCapture(1000)
    chunk = b"x" * 65536
    for _ in range(1024):
        capture.add(chunk)
    assert len(capture.data) == 1000
    assert capture.size == 64 * 1024 * 1024
    assert capture.truncated


@pytest.mark.parametrize(
    ("content_type", "data", "expected"),
    [
        ("application/json", b'{"a":1,"b":[true,null]}', {"json": True}),
        ("application/json; charset=utf-8", b'{"a":', {"text": '{"a":'}),
        ("text/plain", b"hello", {"text": "hello"}),
        ("application/octet-stream", b"\x00\x01\x02", {"binary": True}),
        ("image/png", b"\x89PNG\r\n", {"binary": True}),
        ("", b"plain words", {"text": "plain words"}),
        ("", b"\x00\xff\x00", {"binary": True}),
    ],
)
def test_body_record_kinds(content_type: str, data: bytes, expected: dict[str, Any]) -> None:
    """JSON is pretty-printed; text is kept; binary is size and type only."""
    capture = BodyCapture(65536)
    capture.add(data)
    rec = body_record(capture, [("Content-Type", content_type)] if content_type else [])
    for key, value in expected.items():
        assert rec[key] == value
    assert rec["size"] == len(data)
    if rec.get("binary"):
        assert "text" not in rec
    if rec.get("json"):
        assert rec["text"] == json.dumps(json.loads(data), indent=2)


def test_gzip_body_is_binary() -> None:
    capture = BodyCapture(100)
    capture.add(b"\x1f\x8b\x08\x00")
    rec = body_record(capture, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")])
    assert rec["binary"]
    assert rec["encoding"] == "gzip"
    assert "text" not in rec


def test_json_body_redacted_by_key_and_shape() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    body = {"client_secret": "hunter2", "note": f"see {jwt}", "name": "ok"}
    capture = BodyCapture(65536)
    capture.add(json.dumps(body).encode())
    text = body_record(capture, [("Content-Type", "application/json")])["text"]
    assert "hunter2" not in text
    assert jwt not in text
    assert '"name": "ok"' in text


def test_claims_summary_only_four_claims() -> None:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"aud": "https://x/", "azp": "app", "roles": ["R"], "exp": 5, "oid": "o", "tid": "t"}
    token = f"{seg({'alg': 'none'})}.{seg(claims)}.sig"
    assert claims_summary(token) == {"aud": "https://x/", "roles": ["R"], "exp": 5, "appid": "app"}
    assert claims_summary("opaque-token") is None
    assert claims_summary("a.!!!.c") is None


# -- end to end through the proxy ----------------------------------------------------------


async def test_tap_off_by_default(start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    """Without [tap] the endpoints do not exist and the forwarder has no tap."""
    proxy = await start_proxy()
    assert TAP not in proxy.app
    async with client.get(f"{proxy.url}/_proxy/tap") as resp:
        assert resp.status == 404
    async with client.get(f"{proxy.url}/_proxy/tap.har") as resp:
        assert resp.status == 404


async def test_exchange_captured(
    start_proxy: StartProxy, client: aiohttp.ClientSession, idp: IdentityProvider
) -> None:
    """Method, target, route, headers both ways, status, JSON body, timings, token, claims."""
    proxy = await start_proxy(tap=TAP_ON)
    for _ in range(2):
        async with client.get(f"{proxy.url}/echo/hello?name=world") as resp:
            assert resp.status == 200
            await resp.read()
    first, second = [await detail(client, proxy, x["id"]) for x in await exchanges(client, proxy)]
    assert (second["method"], second["target"], second["route"]) == (
        "GET",
        "/echo/hello?name=world",
        "echo",
    )
    assert second["status"] == 200
    assert second["reason"] == "OK"
    assert second["upstream_url"].endswith("/hello?name=world")
    assert header(second["upstream_headers"], "Authorization") == "[redacted]"
    assert header(second["response_headers"], "Content-Type").startswith("application/json")
    body = second["response_body"]
    assert body["json"]
    assert json.loads(body["text"])["path"] == "/hello?name=world"
    assert body["size"] == second["bytes_out"] > 0
    assert (first["token_source"], second["token_source"]) == ("entra", "cache")
    timings = second["timings"]
    assert set(timings) == {"token_wait_ms", "throttle_wait_ms", "upstream_ttfb_ms", "total_ms"}
    assert timings["throttle_wait_ms"] is None  # nothing held this one back
    assert 0 <= timings["token_wait_ms"] <= timings["total_ms"]
    assert 0 < timings["upstream_ttfb_ms"] <= timings["total_ms"]
    claims = second["claims"]
    assert set(claims) == {"aud", "appid", "roles", "exp"}
    assert claims["appid"] == "test-client"
    assert isinstance(claims["exp"], int)


async def test_proxy_error_captured(start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    """An answer the proxy makes itself (404 no_route) is captured with its JSON body."""
    proxy = await start_proxy(tap=TAP_ON)
    async with client.get(f"{proxy.url}/nowhere") as resp:
        assert resp.status == 404
    rec = await last(client, proxy)
    assert (rec["status"], rec["error"], rec["route"], rec["token_source"]) == (
        404,
        "no_route",
        None,
        None,
    )
    assert json.loads(rec["response_body"]["text"])["error"] == "no_route"
    assert rec["upstream_url"] is None
    assert rec["claims"] is None


async def test_ring_buffer_keeps_last(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(tap={"enabled": True, "keep": 3})
    for i in range(5):
        async with client.get(f"{proxy.url}/echo/n{i}") as resp:
            await resp.read()
    items = await exchanges(client, proxy)
    assert [x["target"] for x in items] == ["/echo/n2", "/echo/n3", "/echo/n4"]
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/1") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"


async def test_request_bodies_capped_and_intact(
    start_proxy: StartProxy, client: aiohttp.ClientSession, echo: EchoUpstream
) -> None:
    """Small (held), large (streamed with Content-Length) and chunked bodies all arrive whole;
    each capture holds only max_body_bytes and knows the full size."""
    proxy = await start_proxy(tap={"enabled": True, "max_body_bytes": 1000})
    small = b'{"q": "' + b"a" * 100 + b'"}'
    large = os.urandom(300_000)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"z" * 50_000

    cases: list[tuple[Any, int, str, str]] = [
        (small, len(small), hashlib.sha256(small).hexdigest(), "application/json"),
        (large, len(large), hashlib.sha256(large).hexdigest(), "application/octet-stream"),
        (chunked(), 500_000, hashlib.sha256(b"z" * 500_000).hexdigest(), "text/plain"),
    ]
    for data, size, digest, content_type in cases:
        async with client.post(
            f"{proxy.url}/echo/up", data=data, headers={"Content-Type": content_type}
        ) as resp:
            assert resp.status == 200
            seen = await resp.json()
        assert (seen["body_bytes"], seen["body_sha256"]) == (size, digest)
        rec = (await last(client, proxy))["request_body"]
        assert rec["size"] == size
        assert rec["truncated"] == (size > 1000)
        assert len(rec.get("text", "").encode()) <= 1000
    # The streamed body kept its Content-Length upstream: wrapping it did not make it chunked.
    sent = {k.lower(): v for k, v in echo.requests[-2].headers}
    assert sent["content-length"] == str(len(large))
    assert "transfer-encoding" not in sent


async def test_large_download_streams_intact(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """64 MiB through the tap arrive byte for byte; the record keeps size and type only."""
    n = 64 * 1024 * 1024
    proxy = await start_proxy(tap=TAP_ON)
    digest = hashlib.sha256()
    async with client.get(f"{proxy.url}/echo/_echo/bytes/{n}") as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == pattern_sha256(n)
    rec = await last(client, proxy)
    body = rec["response_body"]
    assert (body["size"], body["truncated"], body["binary"]) == (n, True, True)
    assert rec["bytes_out"] == n
    assert "text" not in body


async def test_capture_does_not_delay_stream(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """The first chunk reaches the client while the upstream is still stalling."""
    proxy = await start_proxy(tap=TAP_ON)
    async with client.get(f"{proxy.url}/echo/_echo/stall?seconds=3") as resp:
        first = await asyncio.wait_for(resp.content.readline(), 1.5)
        assert first == b"first chunk\n"
        assert await resp.read() == b"rest after the stall\n"
    body = (await last(client, proxy))["response_body"]
    assert body["text"] == "first chunk\nrest after the stall\n"


async def test_links_rewritten_route_captured(
    start_proxy: StartProxy, client: aiohttp.ClientSession, echo: EchoUpstream
) -> None:
    """On a rewrite_links route the held JSON body is captured (what the upstream sent)."""
    proxy = await start_proxy(
        [{"name": "echo", "prefix": "/echo", "upstream": echo.url, "rewrite_links": True}],
        tap=TAP_ON,
    )
    async with client.get(f"{proxy.url}/echo/doc") as resp:
        assert resp.status == 200
        sent = await resp.read()
    rec = await last(client, proxy)
    body = rec["response_body"]
    assert body["json"]
    assert json.loads(body["text"])["path"] == "/doc"
    assert body["size"] == int(header(rec["response_headers"], "Content-Length") or -1)
    assert rec["bytes_out"] == len(sent)  # the rewritten body the client got


# -- redaction everywhere ------------------------------------------------------------------

_CLIENT_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjbGllbnQifQ.Y2xpZW50LXNpZ25hdHVyZQ"


async def test_token_never_leaks(
    start_proxy: StartProxy,
    client: aiohttp.ClientSession,
    echo: EchoUpstream,
    tmp_path: Path,
) -> None:
    """The token injected upstream, and credentials the client sent, never appear in the buffer,
    the page, the HAR, the event stream or the recording file."""
    record_file = tmp_path / "tap.jsonl"
    proxy = await start_proxy(tap={"enabled": True, "file": str(record_file)})
    events: list[bytes] = []
    stream_done = asyncio.Event()

    async def listen() -> None:
        async with client.get(f"{proxy.url}/_proxy/tap/events") as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                events.append(line)
                if sum(line.startswith(b"id: ") for line in events) >= 3:
                    stream_done.set()
                    return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    secret_headers = {
        "Authorization": f"Bearer {_CLIENT_JWT}",
        "Cookie": "session=cookie-value-123",
        "X-Api-Key": "api-key-value-456",
        "X-Note": f"carried {_CLIENT_JWT}",
    }
    async with client.get(
        f"{proxy.url}/echo/a?access_token=query-secret-789", headers=secret_headers
    ) as resp:
        await resp.read()
    async with client.post(
        f"{proxy.url}/echo/b",
        json={"password": "body-secret-000", "jwt": _CLIENT_JWT},
        headers=secret_headers,
    ) as resp:
        await resp.read()
    async with client.get(f"{proxy.url}/echo/_echo/headers") as resp:  # Set-Cookie: a=b
        await resp.read()
    await asyncio.wait_for(stream_done.wait(), 10)
    await listener

    token = dict((k.lower(), v) for k, v in echo.requests[0].headers)["authorization"][7:]
    assert token.count(".") == 2
    _, payload, signature = token.split(".")
    forbidden = [
        token,
        payload,
        signature,
        _CLIENT_JWT,
        "cookie-value-123",
        "api-key-value-456",
        "query-secret-789",
        "body-secret-000",
    ]

    texts: dict[str, str] = {"events": b"".join(events).decode()}
    texts["list"] = json.dumps(await exchanges(client, proxy))
    details = [await detail(client, proxy, x["id"]) for x in await exchanges(client, proxy)]
    texts["details"] = json.dumps(details)
    for path in ("/_proxy/tap", "/_proxy/tap.har"):
        async with client.get(proxy.url + path) as resp:
            texts[path] = await resp.text()
    await proxy_stop(proxy)
    texts["file"] = record_file.read_text()
    assert texts["file"].count("\n") == 3
    for where, text in texts.items():
        for value in forbidden:
            assert value not in text, f"{value[:12]}... leaked into {where}"
    # And the redaction is visible, not silent: the headers are still listed.
    set_cookie = header(details[2]["response_headers"], "Set-Cookie")
    assert set_cookie == "[redacted]"
    assert header(details[0]["client_headers"], "Cookie") == "[redacted]"
    assert header(details[0]["client_headers"], "X-Note") == "carried [redacted]"


async def proxy_stop(proxy: Proxy) -> None:
    """Run the app's shutdown and cleanup now (the recorder flushes and closes its file)."""
    tap = proxy.app[TAP]
    await tap.close()
    if tap.recorder is not None:
        await tap.recorder.close()


# -- live stream, HAR, recorder ------------------------------------------------------------


async def test_event_stream_replays_then_follows(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """The stream sends what is buffered after Last-Event-ID, then new exchanges as they end,
    and ends when the tap closes (so shutdown never waits for an open page)."""
    proxy = await start_proxy(tap=TAP_ON)
    for i in range(3):
        async with client.get(f"{proxy.url}/echo/e{i}") as resp:
            await resp.read()
    async with client.get(f"{proxy.url}/_proxy/tap/events", headers={"Last-Event-ID": "1"}) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        ids: list[int] = []

        async def read_events(count: int) -> None:
            while len(ids) < count:
                line = await resp.content.readline()
                if line.startswith(b"id: "):
                    ids.append(int(line[4:]))

        await asyncio.wait_for(read_events(2), 5)
        assert ids == [2, 3]
        async with client.get(f"{proxy.url}/echo/live") as live:
            await live.read()
        await asyncio.wait_for(read_events(3), 5)
        assert ids == [2, 3, 4]
        await proxy.app[TAP].close()
        rest = await asyncio.wait_for(resp.content.read(), 5)  # the stream ends
        assert b"id: " not in rest


async def test_polling_after(start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy(tap=TAP_ON)
    for i in range(3):
        async with client.get(f"{proxy.url}/echo/p{i}") as resp:
            await resp.read()
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges?after=2") as resp:
        body = await resp.json()
    assert [x["id"] for x in body["exchanges"]] == [3]
    assert body["keep"] == 200


def _check_har_entry(entry: dict[str, Any]) -> None:
    """Every field HAR 1.2 requires, with its type (softwareishard.com/blog/har-12-spec)."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["startedDateTime"])
    assert isinstance(entry["time"], int | float)
    assert entry["time"] >= 0
    request = entry["request"]
    for key, kind in [
        ("method", str),
        ("url", str),
        ("httpVersion", str),
        ("cookies", list),
        ("headers", list),
        ("queryString", list),
        ("headersSize", int),
        ("bodySize", int),
    ]:
        assert isinstance(request[key], kind), key
    assert request["url"].startswith(("http://", "https://"))
    response = entry["response"]
    for key, kind in [
        ("status", int),
        ("statusText", str),
        ("httpVersion", str),
        ("cookies", list),
        ("headers", list),
        ("content", dict),
        ("redirectURL", str),
        ("headersSize", int),
        ("bodySize", int),
    ]:
        assert isinstance(response[key], kind), key
    assert isinstance(response["content"]["size"], int)
    assert isinstance(response["content"]["mimeType"], str)
    for pair in request["headers"] + response["headers"] + request["queryString"]:
        assert set(pair) >= {"name", "value"}
        assert isinstance(pair["name"], str)
        assert isinstance(pair["value"], str)
    assert isinstance(entry["cache"], dict)
    timings = entry["timings"]
    for key in ("send", "wait", "receive"):
        assert isinstance(timings[key], int | float)
        assert timings[key] >= 0
    for key in entry:
        assert key in {"startedDateTime", "time", "request", "response", "cache", "timings"} or (
            key.startswith("_")  # the spec's custom fields
        )


async def test_har_timings_are_the_measured_ones(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """HAR's wait is the upstream's time to first byte, blocked the wait for the token, and the
    entry's time the whole exchange, as the tap measured them (a slow upstream shows in wait)."""
    proxy = await start_proxy(tap=TAP_ON)
    async with client.get(f"{proxy.url}/echo/_echo/slow?seconds=0.3") as resp:
        assert resp.status == 200
    [summary] = await exchanges(client, proxy)
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/{summary['id']}") as resp:
        measured = (await resp.json())["timings"]
    async with client.get(f"{proxy.url}/_proxy/tap.har") as resp:
        [entry] = json.loads(await resp.read())["log"]["entries"]
    timings = entry["timings"]
    assert timings["wait"] >= 300
    assert timings["wait"] == pytest.approx(measured["upstream_ttfb_ms"], abs=0.01)
    assert timings["blocked"] == pytest.approx(measured["token_wait_ms"], abs=0.01)
    assert entry["time"] == pytest.approx(measured["total_ms"], abs=0.01)
    assert entry["time"] >= timings["blocked"] + timings["wait"]


async def test_har_export(start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    """GET /_proxy/tap.har is HAR 1.2 with every required field, bodies and the query."""
    proxy = await start_proxy(tap=TAP_ON)
    async with client.post(f"{proxy.url}/echo/items?$top=5&x=", json={"n": 1}) as resp:
        await resp.read()
    async with client.get(f"{proxy.url}/echo/_echo/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
    async with client.get(f"{proxy.url}/missing") as resp:
        assert resp.status == 404
    async with client.get(f"{proxy.url}/_proxy/tap.har") as resp:
        assert resp.status == 200
        assert "ppproxy-tap.har" in resp.headers["Content-Disposition"]
        doc = json.loads(await resp.read())
    log = doc["log"]
    assert log["version"] == "1.2"
    assert isinstance(log["creator"]["name"], str)
    assert isinstance(log["creator"]["version"], str)
    assert len(log["entries"]) == 3
    for entry in log["entries"]:
        _check_har_entry(entry)
    post, redirect, missing = log["entries"]
    assert post["request"]["queryString"] == [
        {"name": "$top", "value": "5"},
        {"name": "x", "value": ""},
    ]
    assert json.loads(post["request"]["postData"]["text"]) == {"n": 1}
    assert post["request"]["postData"]["mimeType"] == "application/json"
    assert json.loads(post["response"]["content"]["text"])["method"] == "POST"
    assert post["_tokenSource"] in ("entra", "cache")
    assert post["_route"] == "echo"
    assert redirect["response"]["redirectURL"] == "/_echo/elsewhere"
    assert missing["response"]["status"] == 404
    assert missing["request"]["url"].endswith("/missing")


async def test_recorder_appends_and_rotates(
    start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """One JSON line per exchange, owner-only file, rotated at file_max_bytes, file_keep kept."""
    path = tmp_path / "rec.jsonl"
    proxy = await start_proxy(
        tap={"enabled": True, "file": str(path), "file_max_bytes": 4096, "file_keep": 2}
    )
    for i in range(12):
        async with client.get(f"{proxy.url}/echo/r{i}") as resp:
            await resp.read()
    await proxy_stop(proxy)
    files = sorted(os.listdir(tmp_path))
    assert files == ["rec.jsonl", "rec.jsonl.1", "rec.jsonl.2"]
    lines: list[dict[str, Any]] = []
    for name in ("rec.jsonl.2", "rec.jsonl.1", "rec.jsonl"):
        file = tmp_path / name
        assert file.stat().st_size <= 4096
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        lines += [json.loads(line) for line in file.read_text().splitlines()]
    targets = [line["target"] for line in lines]
    assert targets == [f"/echo/r{i}" for i in range(12 - len(targets), 12)]  # newest kept, in order
    assert len(targets) < 12  # the oldest file was dropped


# -- who may look --------------------------------------------------------------------------

Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_custom(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> AsyncIterator[Start]:
    """Start a proxy whose requests appear to come from ``remote`` (as a forwarding middleware
    in front would make them), with optional ``[access]``."""
    runners: list[web.AppRunner] = []

    async def start(remote: str | None = None, **tables: Any) -> str:
        routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
        config = from_dict(
            config_dict(idp, ca_file, routes, tap=TAP_ON, **tables), {}, base_dir=Path.cwd()
        )
        app = create_app(config)
        if remote is not None:
            from_peer(app, remote)
        runner, url = await serve_app(app)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        (None, True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.7", False),
        ("10.1.2.3", False),
    ],
)
async def test_loopback_only_without_access(
    start_custom: Start, client: aiohttp.ClientSession, remote: str | None, allowed: bool
) -> None:
    url = await start_custom(remote)
    for path in ("/_proxy/tap", "/_proxy/tap.har", "/_proxy/tap/exchanges", "/_proxy/tap/events"):
        async with client.get(url + path) as resp:
            if allowed:
                assert resp.status == 200, path
            else:
                assert resp.status == 403, path
                assert (await resp.json())["error"] == "forbidden"


async def test_admin_clients_only_with_access(
    start_custom: Start, client: aiohttp.ClientSession
) -> None:
    """With [access], only clients with admin = true may look, even from loopback."""
    admin_key, admin_digest = new_key()
    user_key, user_digest = new_key()
    clients = [
        {"name": "ops", "key_sha256": admin_digest, "admin": True},
        {"name": "tool", "key_sha256": user_digest},
    ]
    url = await start_custom(None, access={"clients": clients})
    async with client.get(f"{url}/_proxy/tap") as resp:
        assert resp.status == 401
    async with client.get(f"{url}/_proxy/tap", headers={"X-Api-Key": user_key}) as resp:
        assert resp.status == 403
        assert "admin" in (await resp.json())["message"]
    async with client.get(f"{url}/echo/x", headers={"X-Api-Key": user_key}) as resp:
        assert resp.status == 200  # the tool's own traffic is fine, and captured
    async with client.get(f"{url}/_proxy/tap/exchanges", headers={"X-Api-Key": admin_key}) as resp:
        assert resp.status == 200
        listed = (await resp.json())["exchanges"]
    assert [x["target"] for x in listed] == ["/echo/x"]
    # What a browser sends after the 401 prompt: the key as the Basic password.
    basic = "Basic " + base64.b64encode(f"ops:{admin_key}".encode()).decode()
    async with client.get(f"{url}/_proxy/tap", headers={"Authorization": basic}) as resp:
        assert resp.status == 200
    rec_url = f"{url}/_proxy/tap/exchanges/{listed[0]['id']}"
    async with client.get(rec_url, headers={"X-Api-Key": admin_key}) as resp:
        text = await resp.text()
    assert user_key not in text
    assert admin_key not in text


async def test_page_served_with_strict_csp(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """The page is one self-contained file: no external URL, and a CSP allowing only its own
    inline script and style (by hash) and connections to itself."""
    proxy = await start_proxy(tap=TAP_ON)
    async with client.get(f"{proxy.url}/_proxy/tap") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert "script-src 'sha256-" in csp
    assert "unsafe-inline" not in csp
    assert "connect-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert not re.search(r"(?:src|href)=\"https?:", html)
    assert resp.headers["Cache-Control"] == "no-store"


async def test_demo_tap_shows_the_curl_exchange(client: aiohttp.ClientSession) -> None:
    """`ppproxy demo --tap` prints the tap URL and the curl command; after the curl, the tap
    lists the exchange, as a new user would see it."""
    port = free_port()
    proc = await spawn("demo", "--port", str(port), "--tap")
    assert proc.stdout is not None
    try:
        text = await read_until(proc.stdout, r"Press Ctrl\+C")
        tap_url = re.search(r"open (\S+/_proxy/tap) in a browser", text).group(1)  # type: ignore[union-attr]
        curl_url = re.search(r"curl -s '(\S+)'", text).group(1)  # type: ignore[union-attr]
        curl = await asyncio.create_subprocess_exec(
            "curl", "-s", curl_url, stdout=asyncio.subprocess.PIPE
        )
        await curl.communicate()
        async with client.get(tap_url) as resp:
            assert resp.status == 200
            assert "ppproxy tap" in await resp.text()
        async with client.get(tap_url + "/exchanges") as resp:
            listed = (await resp.json())["exchanges"]
        assert [(x["method"], x["target"], x["status"]) for x in listed] == [
            ("GET", "/demo/hello?name=world", 200)
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
