"""Dataverse ``$batch`` through the proxy: every inner request checked as if sent alone, inner
URLs rewritten both ways, against the Dataverse stand-in (which parses the batch, refuses inner
URLs outside its service root and answers with inner OData-EntityId and Location).

Batch answers are read with the standard library's MIME parser (``parse_answer``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse.aio.async_client import AsyncDataverseClient

from proxy.testing import IdentityProvider, LocalCA
from proxy.testing.dataverse import DataverseUpstream

from .conftest import StartProxy, events
from .signin_helpers import ANN, GATEWAY_URI
from .test_dataverse_standin import GUID, Inner, batch, parse_answer, request

ROOT = "/api/data/v9.2"
BOUNDARY = "batch_AAA"
KEY = "ppk_batch-client-key-0123456789abcdef"
README = Path(__file__).resolve().parent.parent / "README.md"
SECURITY = Path(__file__).resolve().parent.parent / "docs" / "security.md"


@pytest.fixture
async def dv(ca: LocalCA) -> AsyncIterator[DataverseUpstream]:
    async with DataverseUpstream(ssl_context=ca.server_context()) as server:
        yield server


def dv_route(dv: DataverseUpstream, **options: Any) -> dict[str, Any]:
    """/dv -> the stand-in's origin: the proxy path /dv/api/data/v9.2/... as the SDK builds it."""
    return {"name": "dv", "prefix": "/dv", "upstream": dv.url, **options}


def client_entry(**grants: Any) -> dict[str, Any]:
    return {"name": "tool", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), **grants}


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: str | bytes,
    boundary: str = BOUNDARY,
    **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    data = body.encode() if isinstance(body, str) else body
    content_type = f'multipart/mixed; boundary="{boundary}"'
    async with session.post(
        url, data=data, headers={"Content-Type": content_type, **headers}
    ) as response:
        return response.status, dict(response.headers), await response.read()


def answers(headers: dict[str, str], body: bytes) -> list[Inner | list[Inner]]:
    return parse_answer(headers["Content-Type"], body)


def flat(items: list[Inner | list[Inner]]) -> list[Inner]:
    return [i for item in items for i in (item if isinstance(item, list) else [item])]


# --- allowed batches reach the upstream --------------------------------------------------


async def test_documented_batch_with_a_change_set_is_forwarded_byte_for_byte(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """Dataverse's documented shape (CRLF, a change set with Content-IDs, a JSON body,
    upstream-absolute and relative URLs, a GET with raw spaces): unchanged without
    rewrite_links, and answered per inner request."""
    proxy = await start_proxy([dv_route(dv)])
    body = batch(
        BOUNDARY,
        [
            request(f"POST {dv.service_root}/accounts", {"name": "Contoso"}),
            request("PATCH $1", {"telephone1": "555"}, "If-Match: *"),
        ],
        request("GET accounts?$select=name,telephone1&$filter=name eq 'Contoso'"),
        request(f"GET {ROOT}/WhoAmI"),
    )
    status, headers, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)
    assert status == 200, raw
    [posted] = dv.requests
    assert posted.raw_path == f"{ROOT}/$batch"
    assert posted.body == body.encode()
    assert [i.target for i in posted.inner] == [
        f"{dv.service_root}/accounts",
        "$1",
        "accounts?$select=name,telephone1&$filter=name eq 'Contoso'",
        f"{ROOT}/WhoAmI",
    ]
    changeset, listed, whoami = answers(headers, raw)
    assert isinstance(changeset, list)
    assert [(i.status, i.content_id) for i in changeset] == [(204, "1"), (204, "2")]
    assert isinstance(listed, Inner)
    assert [(r["name"], r["telephone1"]) for r in listed.json()["value"]] == [("Contoso", "555")]
    assert isinstance(whoami, Inner)
    assert whoami.status == 200


async def test_lf_line_ends_are_read_and_forwarded(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """A batch written with bare LF (a shell here-document) passes and runs."""
    proxy = await start_proxy([dv_route(dv)])
    body = batch(BOUNDARY, request("POST accounts", {"name": "lf"}), newline="\n")
    assert "\r" not in body
    status, headers, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)
    assert status == 200, raw
    [created] = flat(answers(headers, raw))
    assert created.status == 204
    assert [r["name"] for r in dv.records("accounts").values()] == ["lf"]


async def test_inner_urls_on_the_proxy_are_rewritten_both_ways(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """With rewrite_links: inner URLs on the proxy's address (absolute, and path-absolute on
    the route) go out on the upstream; inner OData-EntityId, Location and JSON bodies come
    back on the proxy's address, with the outer Content-Length corrected."""
    proxy = await start_proxy([dv_route(dv, rewrite_links=True)])
    mine = f"{proxy.url}/dv{ROOT}"
    body = batch(
        BOUNDARY,
        [request(f"POST {mine}/accounts", {"name": "A"}), request("PATCH $1", {"name": "B"})],
        request(f"GET /dv{ROOT}/accounts?$select=name&$filter=name eq 'B'"),
        request(f"GET {dv.service_root}/accounts?$select=name"),
        request("GET accounts?$select=name"),
    )
    status, headers, raw = await send(client, f"{mine}/$batch", body)
    assert status == 200, raw
    [posted] = dv.requests
    assert [i.target for i in posted.inner] == [
        f"{dv.service_root}/accounts",
        "$1",
        f"{dv.service_root}/accounts?$select=name&$filter=name eq 'B'",
        f"{dv.service_root}/accounts?$select=name",
        "accounts?$select=name",
    ]
    assert int(headers["Content-Length"]) == len(raw)
    assert headers["X-Ppproxy-Links"] == "rewritten"
    assert dv.url.encode() not in raw  # nothing points at the upstream any more
    changeset, *lists = answers(headers, raw)
    assert isinstance(changeset, list)
    created = changeset[0]
    assert re.fullmatch(
        re.escape(f"{mine}/accounts(") + GUID + r"\)", created.headers["OData-EntityId"]
    )
    assert created.headers["Location"] == created.headers["OData-EntityId"]
    for listed in lists:
        assert isinstance(listed, Inner)
        assert listed.json()["@odata.context"].startswith(f"{mine}/$metadata#accounts")
        assert [r["name"] for r in listed.json()["value"]] == ["B"]


async def test_without_rewrite_links_the_answer_passes_unchanged(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """Inner URLs in the answer stay the upstream's when the route does not rewrite links."""
    proxy = await start_proxy([dv_route(dv)])
    body = batch(BOUNDARY, request("POST accounts", {"name": "A"}))
    status, headers, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)
    assert status == 200
    [created] = flat(answers(headers, raw))
    assert created.headers["OData-EntityId"].startswith(f"{dv.service_root}/accounts(")
    assert "X-Ppproxy-Links" not in headers


async def test_proxy_urls_without_rewrite_links_are_checked_and_sent_unchanged(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """Without rewrite_links an inner URL on the proxy's address is checked as the proxy path
    it names and sent as written; the upstream, which takes only its own service root,
    refuses that inner request."""
    proxy = await start_proxy([dv_route(dv, deny_paths=["**/systemusers*"])])
    mine = f"{proxy.url}/dv{ROOT}"
    denied = batch(
        BOUNDARY, request(f"DELETE {mine}/systemusers({'0' * 8}-0000-0000-0000-{'0' * 12})")
    )
    status, _, _ = await send(client, f"{mine}/$batch", denied)
    assert status == 403
    allowed = batch(BOUNDARY, request(f"GET {mine}/accounts"))
    status, headers, raw = await send(client, f"{mine}/$batch", allowed)
    [posted] = dv.requests
    assert posted.body == allowed.encode()
    [refused] = flat(answers(headers, raw))
    assert refused.status == 400
    assert "is not based on" in refused.json()["error"]["message"]


# --- refused batches never reach the upstream ---------------------------------------------

SYSTEMUSER = "systemusers(00000000-0000-0000-0000-0000000000aa)"


@pytest.mark.parametrize(
    "where",
    ["proxy-absolute", "upstream-absolute", "path-absolute", "relative", "in-change-set"],
)
async def test_the_reported_bypass_is_closed(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    client: aiohttp.ClientSession,
    where: str,
) -> None:
    """A client allowed GET and POST, a route denying systemusers: a DELETE of a system user
    inside a batch is refused 403 naming the method, path and position, however its URL is
    written, and the upstream receives nothing."""
    user = dv.add("systemusers", {"fullname": "Admin"})
    proxy = await start_proxy(
        [dv_route(dv, rewrite_links=True, deny_paths=["/api/data/v9.2/systemusers*"])],
        access={"clients": [client_entry(methods=["GET", "POST"])]},
    )
    mine = f"{proxy.url}/dv{ROOT}"
    target = {
        "proxy-absolute": f"{mine}/systemusers({user})",
        "upstream-absolute": f"{dv.service_root}/systemusers({user})",
        "path-absolute": f"{ROOT}/systemusers({user})",
        "relative": f"systemusers({user})",
        "in-change-set": f"systemusers({user})",
    }[where]
    first = request("GET accounts")
    delete = request(f"DELETE {target}")
    items: list[str | list[str]] = (
        [first, [delete]] if where == "in-change-set" else [first, delete]
    )
    status, _headers, raw = await send(
        client, f"{mine}/$batch", batch(BOUNDARY, *items), **{"X-Api-Key": KEY}
    )
    assert status == 403, raw
    answer = json.loads(raw)
    assert answer["error"] == "forbidden"
    assert answer["batch"]["position"] == 2
    assert answer["batch"]["method"] == "DELETE"
    assert answer["batch"]["path"] == f"{ROOT}/systemusers({user})"
    assert "batch request 2 (DELETE" in answer["message"]
    assert dv.requests == []
    assert user in dv.records("systemusers")


@pytest.mark.parametrize(
    ("route_options", "grants", "reason"),
    [
        ({"methods": ["GET", "POST"]}, {}, "method_not_allowed"),
        (
            {"allow_paths": ["/api/data/v9.2/accounts*", "/api/data/v9.2/$batch"]},
            {},
            "path_not_allowed",
        ),
        ({}, {"methods": ["GET", "POST"]}, "forbidden"),
    ],
)
async def test_each_rule_applies_to_inner_requests(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    client: aiohttp.ClientSession,
    route_options: dict[str, Any],
    grants: dict[str, Any],
    reason: str,
) -> None:
    """The route's methods and allow_paths and the client's methods each refuse an inner
    PATCH of a contact; the reason is the code a standalone request would get."""
    proxy = await start_proxy(
        [dv_route(dv, **route_options)], access={"clients": [client_entry(**grants)]}
    )
    body = batch(BOUNDARY, request("GET accounts"), request("PATCH contacts(x)", {"a": 1}))
    status, _, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body, **{"X-Api-Key": KEY})
    assert status == 403, raw
    answer = json.loads(raw)
    assert (answer["error"], answer["batch"]["reason"]) == ("forbidden", reason)
    assert dv.requests == []


async def test_client_route_grant_applies_to_the_batch(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """A client without the route cannot send it a batch (the outer request is checked too)."""
    proxy = await start_proxy(
        [dv_route(dv), {"name": "other", "prefix": "/other", "upstream": dv.url}],
        access={"clients": [client_entry(routes=["other"])]},
    )
    body = batch(BOUNDARY, request("GET accounts"))
    status, _, _ = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body, **{"X-Api-Key": KEY})
    assert status == 403
    assert dv.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "https://example.org/api/data/v9.2/accounts",  # another host
        "http://127.0.0.1:1/api/data/v9.2/accounts",  # another port
        "PROXY/other/api/data/v9.2/accounts",  # another route of the proxy, absolute
        "UPSTREAM/admin/x",  # on the upstream, but a standalone request would take /dv/admin
    ],
)
async def test_inner_urls_outside_the_route_are_refused(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession, target: str
) -> None:
    routes = [
        dv_route(dv, rewrite_links=True),
        {"name": "other", "prefix": "/other", "upstream": dv.url},
        {"name": "admin", "prefix": "/dv/admin", "upstream": dv.url},
    ]
    proxy = await start_proxy(routes)
    target = target.replace("PROXY", proxy.url).replace("UPSTREAM", dv.url)
    status, _, raw = await send(
        client, f"{proxy.url}/dv{ROOT}/$batch", batch(BOUNDARY, request(f"GET {target}"))
    )
    assert status == 403, raw
    assert json.loads(raw)["batch"]["reason"] == "outside_route"
    assert dv.requests == []


MALFORMED = {
    "no boundary": ("multipart/mixed", batch(BOUNDARY, request("GET accounts"))),
    "JSON batch": (
        "application/json",
        json.dumps({"requests": [{"id": "1", "method": "DELETE", "url": "systemusers(1)"}]}),
    ),
    "no closing delimiter": (
        None,
        batch(BOUNDARY, request("GET accounts")).replace(f"--{BOUNDARY}--", ""),
    ),
    "malformed request line": (None, batch(BOUNDARY, "DELETE systemusers(1)\r\n")),
    "boundary inside a part": (
        None,
        batch(BOUNDARY, request("POST accounts", {"name": f"x--{BOUNDARY}"})),
    ),
    "boundary after a bare CR": (
        None,
        batch(BOUNDARY, request("GET accounts")).replace("\r\n\r\n--", "\r\n\r\r--", 1),
    ),
    "bare CR in headers": (
        None,
        batch(BOUNDARY, request("GET accounts", None, "Accept: x\rX-HTTP-Method: DELETE")),
    ),
    "nested change set": (
        None,
        f"--{BOUNDARY}\r\nContent-Type: multipart/mixed; boundary=cs1\r\n\r\n"
        "--cs1\r\nContent-Type: multipart/mixed; boundary=cs2\r\n\r\n"
        "--cs2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        "DELETE accounts(x) HTTP/1.1\r\n\r\n--cs2--\r\n--cs1--\r\n"
        f"--{BOUNDARY}--\r\n",
    ),
    "nested batch": (None, batch(BOUNDARY, request("POST $batch", {"x": 1}))),
    "reference outside a change set": (None, batch(BOUNDARY, request("DELETE $1"))),
    "Host inside": (None, batch(BOUNDARY, request("GET /api/data/v9.2/accounts", None, "Host: x"))),
    "dot segments": (None, batch(BOUNDARY, request("GET accounts/../systemusers"))),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_batches_are_refused_400(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession, case: str
) -> None:
    """A batch the proxy cannot read whole and unambiguously is never forwarded."""
    proxy = await start_proxy([dv_route(dv)])
    content_type, body = MALFORMED[case]
    async with client.post(
        f"{proxy.url}/dv{ROOT}/$batch",
        data=body.encode(),
        headers={"Content-Type": content_type or f"multipart/mixed; boundary={BOUNDARY}"},
    ) as response:
        assert response.status == 400, await response.text()
        assert (await response.json())["error"] == "bad_batch"
    assert dv.requests == []


async def test_method_override_inside_a_batch_is_refused(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """X-HTTP-Method (and friends) in an inner request: 400 method_override_refused."""
    proxy = await start_proxy([dv_route(dv)])
    body = batch(BOUNDARY, request("POST accounts(x)", {}, "X-HTTP-Method: DELETE"))
    status, _, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)
    assert status == 400
    answer = json.loads(raw)
    assert answer["error"] == "method_override_refused"
    assert answer["batch"]["position"] == 1
    assert dv.requests == []


SOMEONE = "11111111-2222-3333-4444-555555555555"  # an object id an inner request names


def impersonating(dv: DataverseUpstream, idp: IdentityProvider) -> dict[str, Any]:
    """/dv (a service route) and /dv-as (impersonate = true) with the same identity; a key
    client and a signed-in member."""
    return {
        "routes": [
            dv_route(dv),
            {**dv_route(dv), "name": "as", "prefix": "/dv-as", "impersonate": True},
        ],
        "access": {
            "entra": {"tenant_id": idp.tenant_id, "audience": [GATEWAY_URI],
                      "authority_host": idp.authority_host},
            "clients": [client_entry(routes=["dv"]), {"name": "ann", "users": [ANN]}],
        },
    }  # fmt: skip


@pytest.mark.parametrize("header", ["CallerObjectId", "MSCRMCallerID"])
@pytest.mark.parametrize("who", ["key client on a sibling service route", "member"])
async def test_an_inner_caller_header_is_refused_where_the_proxy_names_the_caller(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    header: str,
    who: str,
) -> None:
    """On a route whose identity impersonates anywhere, an inner request naming its own
    caller is 403 forbidden with its position: it could act as anyone."""
    settings = impersonating(dv, idp)
    proxy = await start_proxy(settings["routes"], access=settings["access"])
    if who == "member":
        url = f"{proxy.url}/dv-as{ROOT}/$batch"
        credential = {"Authorization": f"Bearer {idp.user_token(audience=GATEWAY_URI, upn=ANN)}"}
    else:
        url, credential = f"{proxy.url}/dv{ROOT}/$batch", {"X-Api-Key": KEY}
    body = batch(
        BOUNDARY, request("GET accounts"), request("GET accounts", None, f"{header}: {SOMEONE}")
    )

    status, _, raw = await send(client, url, body, **credential)

    assert status == 403, raw
    answer = json.loads(raw)
    assert (answer["error"], answer["batch"]["position"]) == ("forbidden", 2)
    assert answer["batch"]["reason"] == "caller_header"
    assert dv.requests == []


async def test_an_inner_caller_header_passes_where_no_route_impersonates(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv)])
    body = batch(BOUNDARY, request("GET accounts", None, f"CallerObjectId: {SOMEONE}"))

    status, _, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)

    assert status == 200, raw
    assert len(dv.requests) == 1


async def test_batch_over_the_route_limit_is_413(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv, max_body_bytes=1000)])
    body = batch(BOUNDARY, request("POST accounts", {"name": "x" * 2000}))
    status, _, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)
    assert status == 413, raw
    assert dv.requests == []


@pytest.mark.parametrize("expect", [False, True])
async def test_batches_are_limited_to_16_mib_by_default(
    start_proxy: StartProxy, dv: DataverseUpstream, expect: bool
) -> None:
    """Without max_body_bytes a batch may have 16 MiB; a larger one is refused before its body
    is read (and with Expect: 100-continue, before it is sent)."""
    proxy = await start_proxy([dv_route(dv)])
    head = (
        f"POST /dv{ROOT}/$batch HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: multipart/mixed; boundary={BOUNDARY}\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + f"Content-Length: {16 * 1024 * 1024 + 1}\r\n\r\n"
    )
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode())
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert dv.requests == []


async def test_a_refused_batch_is_logged_as_a_refusal(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    client: aiohttp.ClientSession,
    captured: Any,
) -> None:
    """request.rejected with the error code, like any refusal of the guard; no token fetched."""
    proxy = await start_proxy([dv_route(dv, methods=["GET", "POST"])], tap={"enabled": True})
    status, _, _ = await send(
        client, f"{proxy.url}/dv{ROOT}/$batch", batch(BOUNDARY, request("DELETE accounts(x)"))
    )
    assert status == 403
    logged = [e for e in events(captured) if e["event"].startswith("request")]
    assert [(e["event"], e["status"], e["error"]) for e in logged] == [
        ("request.rejected", 403, "forbidden")
    ]
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges") as response:
        assert (await response.json())["exchanges"] == []  # refusals are not kept, as ever


async def test_the_tap_lists_inner_requests_and_responses(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([dv_route(dv, rewrite_links=True)], tap={"enabled": True})
    mine = f"{proxy.url}/dv{ROOT}"
    body = batch(
        BOUNDARY,
        [request(f"POST {mine}/accounts", {"name": "A"}), request("PATCH $1", {"name": "B"})],
        request("GET accounts?$select=name"),
    )
    status, _, _ = await send(client, f"{mine}/$batch", body)
    assert status == 200
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges") as response:
        [summary] = (await response.json())["exchanges"]
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/{summary['id']}") as response:
        record = await response.json()
    listed = record["batch"]
    assert (listed["total"], listed["changesets"]) == (3, 1)
    assert [
        (r["method"], r["target"], r["sent"], r["changeset"], r["content_id"])
        for r in listed["requests"]
    ] == [
        ("POST", f"{mine}/accounts", f"{dv.service_root}/accounts", 1, "1"),
        ("PATCH", "$1", None, 1, "2"),
        ("GET", "accounts?$select=name", None, None, None),
    ]
    assert [r["path"] for r in listed["requests"]] == [
        f"{ROOT}/accounts",
        f"{ROOT}/accounts($1)",
        f"{ROOT}/accounts",
    ]
    assert [(r["status"], r["changeset"], r["content_id"]) for r in listed["responses"]] == [
        (204, 1, "1"),
        (204, 1, "2"),
        (200, None, None),
    ]
    assert listed["responses"][0]["OData-EntityId"].startswith(f"{dv.service_root}/accounts(")
    assert listed["responses_complete"] is True
    assert "POST " in record["request_body"]["text"]  # the batch body as text, redacted


async def test_a_relative_url_under_batch_slash_is_refused(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """Under .../$batch/ a relative inner URL would be checked below "$batch/" and run below
    the service root: 400 bad_batch, nothing forwarded; path-absolute URLs still pass."""
    user = dv.add("systemusers", {"fullname": "Admin"})
    proxy = await start_proxy([dv_route(dv, deny_paths=[f"{ROOT}/systemusers*"])])
    url = f"{proxy.url}/dv{ROOT}/$batch/"
    status, _, raw = await send(
        client, url, batch(BOUNDARY, request(f"DELETE systemusers({user})"))
    )
    assert status == 400, raw
    assert json.loads(raw)["error"] == "bad_batch"
    assert json.loads(raw)["batch"]["position"] == 1
    assert dv.requests == []
    status, _, raw = await send(
        client, url, batch(BOUNDARY, request(f"DELETE {ROOT}/systemusers({user})"))
    )
    assert status == 403, raw
    assert dv.requests == []


def _gzip_stored(*blocks: bytes) -> bytes:
    """gzip (RFC 1952) of ``blocks`` as stored deflate blocks (RFC 1951 §3.2.4): each block's
    5-byte header sits in the raw bytes between the blocks' texts."""
    out = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    for n, data in enumerate(blocks):
        final = n == len(blocks) - 1
        out += bytes([int(final)]) + struct.pack("<HH", len(data), 0xFFFF ^ len(data)) + data
    whole = b"".join(blocks)
    return out + struct.pack("<II", zlib.crc32(whole), len(whole))


async def test_an_encoded_batch_is_refused(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """A Content-Encoding other than identity: 400 bad_batch, nothing forwarded. The body here
    reads as one allowed POST raw and as that POST plus a denied DELETE once decompressed; an
    encoding the listener does not decode would have been checked raw."""
    proxy = await start_proxy([dv_route(dv, deny_paths=[f"{ROOT}/systemusers*"])])
    part = "--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    first = f'\r\n{part}POST accounts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{{"x":"\n-'
    second = f"{part[1:]}DELETE systemusers(1) HTTP/1.1\r\n\r\n--b--\r\n"
    data = _gzip_stored(first.encode(), second.encode())
    assert zlib.decompress(data, 31).count(b"HTTP/1.1") == 2
    url = f"{proxy.url}/dv{ROOT}/$batch"
    for encoding in ("gzip", "x-unknown", "identity, x-unknown"):
        status, _, raw = await send(client, url, data, "b", **{"Content-Encoding": encoding})
        assert status == 400, raw
        assert json.loads(raw)["error"] == "bad_batch"
    assert dv.requests == []
    plain = batch(BOUNDARY, request("GET accounts"))
    status, _, raw = await send(client, url, plain, **{"Content-Encoding": "identity"})
    assert status == 200, raw


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer inner-token",
        "Cookie: a=b",
        "Proxy-Authorization: Basic eA==",
        "X-Internal: internal-secret",
    ],
)
async def test_inner_credentials_and_removed_headers_are_refused(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession, header: str
) -> None:
    """Headers the proxy drops from a standalone request (client credentials, the route's
    remove_request_headers) inside an inner request: 403 forbidden naming the request and the
    header, nothing forwarded."""
    proxy = await start_proxy([dv_route(dv, remove_request_headers=["X-Internal"])])
    body = batch(BOUNDARY, [request("POST accounts", {"name": "x"}, header)])
    status, _, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)
    assert status == 403, raw
    answer = json.loads(raw)
    assert answer["error"] == "forbidden"
    assert (answer["batch"]["position"], answer["batch"]["reason"]) == (1, "header_not_allowed")
    assert header.partition(":")[0] in answer["message"]
    assert header.partition(":")[2].strip() not in raw.decode()
    assert dv.requests == []


async def test_metadata_inside_a_batch_is_forwarded(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """GET $metadata is OData's own resource, not a reference to no request: the proxy checks
    it as that path and forwards it, and the upstream answers it (the stand-in, like
    Microsoft.OData, looks a relative "$..." up as a Content-ID first and refuses it)."""
    proxy = await start_proxy([dv_route(dv)])
    body = batch(BOUNDARY, request("GET $metadata"))
    status, _, raw = await send(client, f"{proxy.url}/dv{ROOT}/$batch", body)
    [posted] = dv.requests
    assert [i.target for i in posted.inner] == ["$metadata"]
    assert b"bad_batch" not in raw
    assert b"$metadata' does not exist in the batch context" in raw  # the upstream's word
    assert status == 400


async def test_batches_held_at_once_are_bounded_across_the_process(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """server.max_held_batch_bytes: while one batch is being uploaded, another that would pass
    the budget is 503 upstream_busy with Retry-After; one batch alone passes even over it; the
    bytes come back when a batch ends, also when its client goes away mid-body; a batch that
    only declares a large length holds only the bytes it sent."""
    proxy = await start_proxy([dv_route(dv)], server={"max_held_batch_bytes": 1000})
    url = f"{proxy.url}/dv{ROOT}/$batch"
    small = batch(BOUNDARY, request("POST accounts", {"name": "x" * 150}))
    assert 200 < len(small) < 400
    big = batch(BOUNDARY, request("POST accounts", {"name": "x" * 1500}))
    status, _, raw = await send(client, url, big)  # alone: over the budget, still served
    assert status == 200, raw
    host, port = proxy.url.removeprefix("http://").split(":")

    async def start_upload(length: int) -> asyncio.StreamWriter:
        """A batch whose head and all but 10 bytes of its body are sent, the rest held back
        (bytes are booked as they arrive, not as declared)."""
        _, writer = await asyncio.open_connection(host, int(port))
        first = f"--{BOUNDARY}\r\n"
        writer.write(
            f"POST /dv{ROOT}/$batch HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/mixed; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\n\r\n{first}{'x' * (length - len(first) - 10)}".encode()
        )
        await writer.drain()
        return writer

    async def busy_within(seconds: float) -> dict[str, str]:
        """Sends the small batch until the budget refuses it."""
        deadline = time.monotonic() + seconds
        while True:
            status, headers, raw = await send(client, url, small)
            if status == 503:
                assert json.loads(raw)["error"] == "upstream_busy"
                return headers
            assert status == 200, raw
            assert time.monotonic() < deadline, "the budget never refused"
            await asyncio.sleep(0.05)

    writer = await start_upload(800)
    try:
        headers = await busy_within(10)
        assert headers["Retry-After"] == "1"
    finally:
        writer.close()
    # The abandoned upload's 800 bytes come back: the small batch passes again.
    deadline = time.monotonic() + 10
    while (status := (await send(client, url, small))[0]) != 200:
        assert status == 503
        assert time.monotonic() < deadline, "the abandoned batch's bytes were never given back"
        await asyncio.sleep(0.05)
    assert dv.requests[-1].body == small.encode()
    # A batch that declares far more than the budget but sends little holds only what it sent.
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /dv{ROOT}/$batch HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/mixed; boundary={BOUNDARY}\r\n"
        f"Content-Length: 900\r\n\r\n--{BOUNDARY}\r\n".encode()
    )
    await writer.drain()
    try:
        status, _, raw = await send(client, url, small)
        assert status == 200, raw
    finally:
        writer.close()


def test_security_doc_and_readme_say_what_batches_and_path_rules_do() -> None:
    """docs/security.md says what path rules cannot stop and what the $batch check holds;
    README lists bad_batch and the batch limits."""
    security = SECURITY.read_text()
    for needed in (
        "$expand",
        "@odata.bind",
        "security role",
        "impersonate",
        'act_as = "user"',
        "bad_batch",
        "header_not_allowed",
        "Content-Encoding",
        "max_held_batch_bytes",
    ):
        assert needed in security, needed
    readme = README.read_text()
    for needed in ("bad_batch", "16 MiB", "max_held_batch_bytes"):
        assert needed in readme, needed


# --- real clients ---------------------------------------------------------------------------


async def test_microsofts_python_sdk_batch_through_the_proxy(
    start_proxy: StartProxy, dv: DataverseUpstream
) -> None:
    """powerplatform-dataverse-client's batch (a create, a list, a change set whose update
    references $1) pointed at the proxy over plain http (its async client; the sync one insists
    on https), against the stand-in that refuses inner URLs outside its service root."""

    class Credential:
        """The async credential protocol; the proxy adds the real token."""

        async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            return AccessToken("unused", int(time.time()) + 3600)

        async def close(self) -> None:
            return None

        async def __aenter__(self) -> Credential:
            return self

        async def __aexit__(self, *args: object) -> None:
            return None

    proxy = await start_proxy([dv_route(dv, rewrite_links=True, deny_paths=["**/systemusers*"])])
    async with AsyncDataverseClient(f"{proxy.url}/dv", Credential()) as sdk:
        job = sdk.batch.new()
        job.records.create("account", {"name": "Fabrikam"})
        job.records.list("account", select=["name"], filter="name eq 'Fabrikam'", top=2)
        async with job.changeset() as changeset:
            reference = changeset.records.create("contact", {"fullname": "Ada"})
            changeset.records.update("contact", reference, {"telephone1": "555"})
        result = await job.execute()
        assert [(r.status_code, r.content_id) for r in result.responses] == [
            (204, None),
            (200, None),
            (204, "1"),
            (204, "2"),
        ]
        assert result.responses[0].entity_id in dv.records("accounts")
        assert [r["name"] for r in result.responses[1].data["value"]] == ["Fabrikam"]
        assert [(c["fullname"], c["telephone1"]) for c in dv.records("contacts").values()] == [
            ("Ada", "555")
        ]
        [posted] = [r for r in dv.requests if r.inner]
        assert [i.target for i in posted.inner] == [
            f"{dv.service_root}/accounts",
            f"{dv.service_root}/accounts?$select=name&$filter=name eq 'Fabrikam'&$top=2",
            f"{dv.service_root}/contacts",
            "$1",
        ]
        # The same SDK cannot reach a denied table through a batch either.
        sent = len(dv.requests)
        denied = sdk.batch.new()
        denied.records.delete("systemuser", "00000000-0000-0000-0000-0000000000aa")
        with pytest.raises(Exception, match="this path is denied on this route") as refused:
            await denied.execute()
        assert getattr(refused.value, "status_code", None) == 403
        assert not any(r.inner for r in dv.requests[sent:])


async def test_readme_batch_example(
    start_proxy: StartProxy, dv: DataverseUpstream, client: aiohttp.ClientSession
) -> None:
    """The $batch call in README's legacy section, as written, through the proxy."""
    text = README.read_text()
    body = re.search(r"cat > batch\.txt <<'EOF'\n(.*?\n)EOF\n", text, re.DOTALL)
    command = re.search(r"curl [^\n]*batch\.txt[^\n]*\\\n[^\n]*\n", text)
    assert body is not None
    assert command is not None
    boundary = re.search(r"boundary=([\w-]+)", command.group(0))
    assert boundary is not None
    proxy = await start_proxy(
        [
            {
                "name": "dataverse",
                "prefix": "/dataverse",
                "upstream": dv.service_root,
                "rewrite_links": True,
            }
        ]
    )
    data = body.group(1).replace("http://localhost:8080", proxy.url)
    status, headers, raw = await send(
        client, f"{proxy.url}/dataverse/$batch", data, boundary=boundary.group(1)
    )
    assert status == 200, raw
    created, listed = flat(answers(headers, raw))
    assert created.status == 204
    assert created.headers["OData-EntityId"].startswith(f"{proxy.url}/dataverse/accounts(")
    assert [r["name"] for r in listed.json()["value"]] == ["Contoso"]
