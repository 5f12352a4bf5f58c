"""The Dataverse stand-in behaves like the Dataverse Web API where a proxy can go wrong.

Batch answers are read with the standard library's MIME parser, not the stand-in's own.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse.client import DataverseClient
from yarl import URL

from proxy.testing import LocalCA
from proxy.testing.dataverse import DataverseUpstream

GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
async def dv() -> AsyncIterator[DataverseUpstream]:
    async with DataverseUpstream() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as client:
        yield client


@dataclass
class Inner:
    """One inner response of a batch answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None

    def json(self) -> Any:
        return json.loads(self.body)


def batch(boundary: str, *items: str | list[str], newline: str = "\r\n") -> str:
    """A batch body; a string item is a request, a list of requests is a change set whose
    requests get Content-IDs 1, 2, ..."""
    out = []
    for n, item in enumerate(items):
        out.append(f"--{boundary}")
        if isinstance(item, str):
            out += ["Content-Type: application/http", "Content-Transfer-Encoding: binary", "", item]
            continue
        changeset = f"changeset_{n}"
        out += [f'Content-Type: multipart/mixed; boundary="{changeset}"', ""]
        for cid, request in enumerate(item, start=1):
            out.append(f"--{changeset}")
            out += ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
            out += [f"Content-ID: {cid}", "", request]
        out += [f"--{changeset}--", ""]
    out += [f"--{boundary}--", ""]
    return newline.join(out).replace("\r\n", newline)


def request(line: str, body: dict[str, Any] | None = None, *headers: str) -> str:
    """An inner request; a JSON body gets Content-Type like the SDK sends it."""
    lines = [f"{line} HTTP/1.1", *headers]
    if body is None:
        return "\r\n".join([*lines, ""])
    return "\r\n".join([*lines, "Content-Type: application/json; type=entry", "", json.dumps(body)])


async def post_batch(
    session: aiohttp.ClientSession, dv: DataverseUpstream, body: str, **headers: str
) -> tuple[int, Mapping[str, str], list[Inner | list[Inner]]]:
    content_type = 'multipart/mixed; boundary="batch_AAA"'
    async with session.post(
        f"{dv.service_root}/$batch",
        data=body.encode(),
        headers={"Content-Type": content_type, **headers},
    ) as response:
        raw = await response.read()
        return (
            response.status,
            response.headers,
            parse_answer(response.headers["Content-Type"], raw),
        )


def parse_answer(content_type: str, body: bytes) -> list[Inner | list[Inner]]:
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    answers: list[Inner | list[Inner]] = []
    for part in message.iter_parts():
        if part.is_multipart():
            answers.append([_inner(p) for p in part.iter_parts()])
        else:
            answers.append(_inner(part))
    return answers


def _inner(part: Any) -> Inner:
    assert part.get_content_type() == "application/http"
    head, _, body = part.get_content().partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return Inner(int(status_line.split()[1]), headers, body, part["Content-ID"])


async def create(session: aiohttp.ClientSession, dv: DataverseUpstream, name: str) -> str:
    async with session.post(f"{dv.service_root}/accounts", json={"name": name}) as response:
        assert response.status == 204
        match = re.fullmatch(
            re.escape(f"{dv.service_root}/accounts(") + f"({GUID})\\)",
            response.headers["OData-EntityId"],
        )
        assert match, response.headers["OData-EntityId"]
        return match.group(1)


# --- single requests -------------------------------------------------------------------------


async def test_create_answers_204_with_an_absolute_entity_id(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    record_id = await create(session, dv, "Contoso")
    assert dv.records("accounts")[record_id]["name"] == "Contoso"


async def test_create_with_return_representation_answers_201_and_the_record(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    headers = {"Prefer": "return=representation"}
    async with session.post(
        f"{dv.service_root}/accounts?$select=name", json={"name": "Fabrikam"}, headers=headers
    ) as response:
        body = await response.json()
        assert response.status == 201
        assert response.headers["Preference-Applied"] == "return=representation"
    assert body["@odata.context"] == f"{dv.service_root}/$metadata#accounts(name)/$entity"
    assert body["name"] == "Fabrikam"
    assert response.headers["OData-EntityId"] == f"{dv.service_root}/accounts({body['accountid']})"


async def test_retrieve_returns_the_selected_columns(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    record_id = dv.add("accounts", {"name": "Contoso", "telephone1": "555"})
    async with session.get(f"{dv.service_root}/accounts({record_id})?$select=name") as response:
        body = await response.json()
    assert response.status == 200
    assert body["@odata.context"] == f"{dv.service_root}/$metadata#accounts(name)/$entity"
    assert {k for k in body if not k.startswith("@")} == {"name", "accountid"}
    assert re.fullmatch(r'W/"\d+"', body["@odata.etag"])


async def test_update_changes_the_record_and_its_etag(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    record_id = dv.add("accounts", {"name": "Old"})
    before = dv.records("accounts")[record_id]["versionnumber"]
    url = f"{dv.service_root}/accounts({record_id})"
    async with session.patch(url, json={"name": "New"}, headers={"If-Match": "*"}) as response:
        assert response.status == 204
        assert response.headers["OData-EntityId"] == url
    after = dv.records("accounts")[record_id]
    assert after["name"] == "New"
    assert after["versionnumber"] > before


async def test_update_of_a_missing_record_with_if_match_is_404_in_dataverse_shape(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    url = f"{dv.service_root}/accounts(00000000-0000-0000-0000-000000000001)"
    async with session.patch(url, json={"name": "x"}, headers={"If-Match": "*"}) as response:
        body = await response.json()
    assert response.status == 404
    assert body["error"]["code"] == "0x80040217"
    assert "Does Not Exist" in body["error"]["message"]
    assert dv.records("accounts") == {}


async def test_update_with_a_stale_etag_is_412(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    record_id = dv.add("accounts", {"name": "Old"})
    url = f"{dv.service_root}/accounts({record_id})"
    async with session.get(url) as response:
        etag = (await response.json())["@odata.etag"]
    async with session.patch(url, json={"name": "First"}, headers={"If-Match": etag}) as response:
        assert response.status == 204
    async with session.patch(url, json={"name": "Second"}, headers={"If-Match": etag}) as response:
        assert response.status == 412
        assert (await response.json())["error"]["code"] == "0x80060882"
    assert dv.records("accounts")[record_id]["name"] == "First"


async def test_patch_without_if_match_creates_a_missing_record(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    record_id = "00000000-0000-0000-0000-000000000002"
    async with session.patch(
        f"{dv.service_root}/accounts({record_id})", json={"name": "Upserted"}
    ) as response:
        assert response.status == 204
    assert dv.records("accounts")[record_id]["name"] == "Upserted"


async def test_delete_removes_the_record(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    record_id = dv.add("contacts", {"fullname": "Ada"})
    url = f"{dv.service_root}/contacts({record_id})"
    async with session.delete(url) as response:
        assert response.status == 204
    async with session.get(url) as response:
        assert response.status == 404
    assert dv.records("contacts") == {}


async def test_list_filters_orders_and_limits(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    for name, city in [("a", "Oslo"), ("b", "Rome"), ("c", "oslo"), ("d", "Oslo")]:
        dv.add("accounts", {"name": name, "address1_city": city})
    # Encoded the way requests encodes params: %24 and '+' for spaces.
    query = "%24select=name&%24filter=address1_city+eq+%27Oslo%27&%24orderby=name+desc&%24top=2"
    async with session.get(URL(f"{dv.service_root}/accounts?{query}", encoded=True)) as response:
        body = await response.json()
    assert body["@odata.context"] == f"{dv.service_root}/$metadata#accounts(name)"
    # String comparison is case-insensitive, as with Dataverse's default collation.
    assert [row["name"] for row in body["value"]] == ["d", "c"]
    assert "@odata.nextLink" not in body


async def test_paging_answers_absolute_next_links_on_the_service_root(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    for n in range(5):
        dv.add("accounts", {"name": f"n{n}"})
    url: str | None = f"{dv.service_root}/accounts?$select=name&$orderby=name"
    pages = []
    while url is not None:
        # A nextLink is used verbatim: yarl must not re-encode its %-escapes.
        async with session.get(
            URL(url, encoded=True), headers={"Prefer": "odata.maxpagesize=2"}
        ) as response:
            assert response.headers["Preference-Applied"] == "odata.maxpagesize=2"
            body = await response.json()
        pages.append([row["name"] for row in body["value"]])
        url = body.get("@odata.nextLink")
        if url is not None:
            assert url.startswith(
                f"{dv.service_root}/accounts?$select=name&$orderby=name&$skiptoken=%3Ccookie%20pagenumber="
            )
    assert pages == [["n0", "n1"], ["n2", "n3"], ["n4"]]


async def test_top_is_ignored_when_a_page_size_is_preferred(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    """learn.microsoft.com page-results: "If you include both, $top is ignored"."""
    for n in range(3):
        dv.add("accounts", {"name": f"n{n}"})
    async with session.get(
        f"{dv.service_root}/accounts?$top=1", headers={"Prefer": "odata.maxpagesize=2"}
    ) as response:
        body = await response.json()
    assert len(body["value"]) == 2
    assert "@odata.nextLink" in body


@pytest.mark.parametrize(
    "path",
    [
        "/api/data/v9.2/WhoAmI",
        "/api/data/v9.2/EntityDefinitions?$filter=LogicalName eq 'contact'&$select=EntitySetName",
        "/api/data/v9.2/EntityDefinitions(LogicalName='account')/Attributes"
        "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
    ],
)
async def test_serves_the_lookups_clients_make_first(
    dv: DataverseUpstream, session: aiohttp.ClientSession, path: str
) -> None:
    async with session.get(dv.url + path) as response:
        body = await response.json()
    assert response.status == 200
    assert body["@odata.context"].startswith(f"{dv.service_root}/$metadata#")
    if "$filter" in path:
        assert [row["EntitySetName"] for row in body["value"]] == ["contacts"]


async def test_unknown_entity_set_is_404(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{dv.service_root}/widgets") as response:
        body = await response.json()
    assert response.status == 404
    assert body == {
        "error": {"code": "0x80060888", "message": "Resource not found for the segment 'widgets'."}
    }


# --- refusals ----------------------------------------------------------------------------------


async def test_a_request_for_another_host_is_refused(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    """What a proxy that forwards the client's Host header gets."""
    async with session.get(
        f"{dv.service_root}/accounts", headers={"Host": "127.0.0.1:8080"}
    ) as response:
        body = await response.json()
    assert response.status == 400
    assert body["error"]["message"] == (
        "The URI 'http://127.0.0.1:8080/api/data/v9.2/accounts' is not valid because it is not"
        f" based on '{dv.service_root}/'."
    )


async def test_a_request_without_a_bearer_token_gets_401(dv: DataverseUpstream) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{dv.service_root}/accounts") as response,
    ):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")


async def test_a_bind_to_a_url_outside_the_service_root_is_refused(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    contact = dv.add("contacts", {"fullname": "Ada"})
    bind = {
        "primarycontactid@odata.bind": f"http://127.0.0.1:8080/dv/api/data/v9.2/contacts({contact})"
    }
    async with session.post(f"{dv.service_root}/accounts", json={"name": "x", **bind}) as response:
        assert response.status == 400
        assert "is not based on" in (await response.json())["error"]["message"]
    assert dv.records("accounts") == {}


# --- $batch ------------------------------------------------------------------------------------


async def test_batch_without_change_set_answers_each_request_in_order(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    root = dv.service_root
    body = batch(
        "batch_AAA",
        request(f"POST {root}/accounts", {"name": "x y"}),
        # Raw spaces and quotes in the query, as Microsoft's Python SDK sends them.
        request(
            f"GET {root}/accounts?$select=name&$filter=name eq 'x y'&$orderby=name desc",
            None,
            "Prefer: odata.maxpagesize=2",
        ),
    )
    status, headers, answers = await post_batch(session, dv, body)
    assert status == 200
    assert str(headers["Content-Type"]).startswith("multipart/mixed; boundary=batchresponse_")
    created, listed = answers
    assert isinstance(created, Inner)
    assert isinstance(listed, Inner)
    assert created.status == 204
    assert re.fullmatch(
        re.escape(f"{root}/accounts(") + GUID + r"\)", created.headers["OData-EntityId"]
    )
    assert created.headers["Location"] == created.headers["OData-EntityId"]
    assert listed.status == 200
    assert listed.json()["@odata.context"] == f"{root}/$metadata#accounts(name)"
    assert [row["name"] for row in listed.json()["value"]] == ["x y"]


@pytest.mark.parametrize("form", ["absolute", "path-absolute", "relative"])
async def test_batch_accepts_inner_urls_on_its_service_root(
    dv: DataverseUpstream, session: aiohttp.ClientSession, form: str
) -> None:
    target = {
        "absolute": f"{dv.service_root}/accounts",
        "path-absolute": "/api/data/v9.2/accounts",
        "relative": "accounts",
    }[form]
    _, _, [answer] = await post_batch(
        session, dv, batch("batch_AAA", request(f"POST {target}", {"name": "x"}))
    )
    assert isinstance(answer, Inner)
    assert answer.status == 204


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:8080/dv/api/data/v9.2/accounts",  # the proxy's own URL, not rewritten
        "/dv/api/data/v9.2/accounts",  # the proxy's route prefix left in
        "https://{authority}/api/data/v9.2/accounts",  # the wrong scheme
        "http://{authority}/api/data/v9.1/accounts",  # another service root on the same host
    ],
)
async def test_batch_fails_inner_requests_outside_its_service_root(
    dv: DataverseUpstream, session: aiohttp.ClientSession, target: str
) -> None:
    target = target.format(authority=dv.url.partition("://")[2])
    status, _, [answer] = await post_batch(
        session, dv, batch("batch_AAA", request(f"POST {target}", {"name": "x"}))
    )
    assert status == 400
    assert isinstance(answer, Inner)
    assert answer.status == 400
    assert (
        answer.json()["error"]["message"]
        == f"The URI '{target}' is not valid because it is not based on '{dv.service_root}/'."
    )
    assert dv.records("accounts") == {}


async def test_change_set_resolves_content_id_references(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    root = dv.service_root
    body = batch(
        "batch_AAA",
        [
            request(f"POST {root}/contacts", {"fullname": "Ada"}),
            request(
                f"POST {root}/accounts", {"name": "Babbage", "primarycontactid@odata.bind": "$1"}
            ),
            request("PATCH $2", {"telephone1": "555"}, "If-Match: *"),
        ],
    )
    status, _, [changeset] = await post_batch(session, dv, body)
    assert status == 200
    assert isinstance(changeset, list)
    assert [(a.status, a.content_id) for a in changeset] == [(204, "1"), (204, "2"), (204, "3")]
    contact_id = changeset[0].headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    account_url = changeset[1].headers["OData-EntityId"]
    assert changeset[2].headers["OData-EntityId"] == account_url
    [account] = dv.records("accounts").values()
    assert account["_primarycontactid_value"] == contact_id
    assert account["telephone1"] == "555"
    assert [(r.method, r.target, r.content_id, r.changeset) for r in dv.requests[-1].inner] == [
        ("POST", f"{root}/contacts", "1", 1),
        ("POST", f"{root}/accounts", "2", 1),
        ("PATCH", "$2", "3", 1),
    ]


async def test_a_reference_outside_a_change_set_fails(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    _, _, [answer] = await post_batch(
        session, dv, batch("batch_AAA", request("PATCH $1", {"name": "x"}))
    )
    assert isinstance(answer, Inner)
    assert answer.status == 400
    assert (
        answer.json()["error"]["message"]
        == "Content-ID Reference: '$1' does not exist in the batch context."
    )


async def test_a_failed_change_set_is_rolled_back_and_stops_the_batch(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    root = dv.service_root
    missing = "00000000-0000-0000-0000-000000000009"
    body = batch(
        "batch_AAA",
        [
            request(f"POST {root}/accounts", {"name": "rolled back"}),
            request(f"PATCH {root}/accounts({missing})", {"name": "x"}, "If-Match: *"),
        ],
        request(f"POST {root}/contacts", {"fullname": "never made"}),
    )
    status, _, answers = await post_batch(session, dv, body)
    # The batch answers with the status of its first failure, and only that failure.
    assert status == 404
    [changeset] = answers
    assert isinstance(changeset, list)
    assert [(a.status, a.content_id) for a in changeset] == [(404, "2")]
    assert dv.records("accounts") == {}
    assert dv.records("contacts") == {}


async def test_continue_on_error_runs_every_request(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    root = dv.service_root
    body = batch(
        "batch_AAA",
        request(f"GET {root}/accounts(00000000-0000-0000-0000-000000000009)"),
        request(f"POST {root}/contacts", {"fullname": "made anyway"}),
    )
    status, headers, answers = await post_batch(session, dv, body, Prefer="odata.continue-on-error")
    assert status == 200
    assert headers["Preference-Applied"] == "odata.continue-on-error"
    assert [a.status for a in answers if isinstance(a, Inner)] == [404, 204]
    assert len(dv.records("contacts")) == 1


async def test_batch_accepts_bare_lf_line_ends(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    body = batch("batch_AAA", request("POST accounts", {"name": "x"}), newline="\n")
    status, _, [answer] = await post_batch(session, dv, body)
    assert (status, isinstance(answer, Inner) and answer.status) == (200, 204)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "--batch_AAA\r\nContent-Type: application/http\r\n\r\nGET accounts HTTP/1.1\r\n",
            "no closing delimiter",
        ),
        (
            batch("batch_AAA", [request("GET accounts")]),
            "GET requests are not allowed in change sets.",
        ),
        (batch("batch_AAA", *[request("GET WhoAmI")] * 1001), "the limit is 1000"),
        (
            batch("batch_AAA", request("GET WhoAmI")).replace(
                "Content-Transfer-Encoding: binary\r\n", ""
            ),
            "its value must be 'binary'",
        ),
        (
            batch("batch_AAA", request("GET WhoAmI")).replace("application/http", "text/plain"),
            "The 'Content-Type' header value 'text/plain' is invalid.",
        ),
    ],
)
async def test_a_malformed_batch_is_refused_whole(
    dv: DataverseUpstream, session: aiohttp.ClientSession, body: str, message: str
) -> None:
    headers = {"Content-Type": 'multipart/mixed; boundary="batch_AAA"'}
    async with session.post(f"{dv.service_root}/$batch", data=body, headers=headers) as response:
        answer = await response.json()
    assert response.status == 400
    assert message in answer["error"]["message"]


# --- throttling, recording, options ----------------------------------------------------------


async def test_throttle_answers_429_with_retry_after_then_recovers(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    rule = dv.throttle(2, retry_after=3)
    statuses = []
    for _ in range(3):
        async with session.get(f"{dv.service_root}/accounts") as response:
            statuses.append(response.status)
            if response.status == 429:
                assert response.headers["Retry-After"] == "3"
                assert await response.json() == {
                    "error": {
                        "code": "0x80072322",
                        "message": "Number of requests exceeded the limit of 6000 over time"
                        " window of 300 seconds.",
                    }
                }
    assert statuses == [429, 429, 200]
    assert (rule.refused, rule.remaining) == (2, 0)


async def test_throttle_can_be_limited_to_a_method_and_path(
    dv: DataverseUpstream, session: aiohttp.ClientSession
) -> None:
    dv.throttle(1, method="POST", path="accounts", reason="concurrency")
    async with session.get(f"{dv.service_root}/accounts") as response:
        assert response.status == 200
    async with session.post(f"{dv.service_root}/contacts", json={}) as response:
        assert response.status == 204
    async with session.post(f"{dv.service_root}/accounts", json={}) as response:
        assert response.status == 429
        assert (await response.json())["error"]["code"] == "0x80072326"


async def test_every_request_is_recorded_with_a_bounded_body() -> None:
    payload = json.dumps({"name": "x" * 100}).encode()
    async with (
        DataverseUpstream(max_recorded_body=10, dop_hint=4) as dv,
        aiohttp.ClientSession(headers=AUTH) as client,
    ):
        async with client.post(f"{dv.service_root}/accounts", data=payload) as response:
            assert response.status == 204
            assert response.headers["x-ms-dop-hint"] == "4"
        async with client.get(
            f"{dv.service_root}/accounts", headers={"Host": "elsewhere"}
        ) as response:
            assert response.status == 400
    first, second = dv.requests
    assert (first.method, first.raw_path) == ("POST", "/api/data/v9.2/accounts")
    assert (first.body, first.body_size) == (payload[:10], len(payload))
    assert first.header("authorization") == AUTH["Authorization"]
    assert second.header("Host") == "elsewhere"
    assert first.arrived <= second.arrived
    assert "test-token" not in repr(first)


async def test_serves_https_with_a_local_ca(ca: LocalCA) -> None:
    async with (
        DataverseUpstream(ssl_context=ca.server_context()) as dv,
        aiohttp.ClientSession(headers=AUTH) as client,
    ):
        assert dv.service_root.startswith("https://127.0.0.1:")
        async with client.get(f"{dv.service_root}/WhoAmI", ssl=ca.client_context()) as response:
            body = await response.json()
    assert (
        body["@odata.context"]
        == f"{dv.service_root}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"
    )


def test_refuses_a_non_loopback_address() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DataverseUpstream(host="0.0.0.0")  # noqa: S104  # the address under test


# --- Microsoft's SDK -------------------------------------------------------------------------


async def test_microsofts_python_sdk_runs_against_the_stand_in(
    ca: LocalCA, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRUD, paging and a batch with a change set through powerplatform-dataverse-client.

    The package is in the ``test`` extra, imported at the top: missing, the suite fails rather
    than skips. It insists on https and trusts REQUESTS_CA_BUNDLE only.
    """

    class StaticCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            return AccessToken("sdk-token", 2**31 - 1)

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    async with DataverseUpstream(ssl_context=ca.server_context()) as dv:

        def use_sdk() -> dict[str, Any]:
            with DataverseClient(dv.url, StaticCredential()) as client:
                first = client.records.create("account", {"name": "a"})
                client.records.update("account", first, {"name": "b"})
                for name in ("c", "d"):
                    client.records.create("account", {"name": name})
                names = [
                    r["name"]
                    for r in client.records.list(
                        "account", select=["name"], orderby=["name"], page_size=2
                    )
                ]
                client.records.delete("account", first)
                job = client.batch.new()
                with job.changeset() as changeset:
                    reference = changeset.records.create("contact", {"fullname": "Ada"})
                    changeset.records.update("contact", reference, {"telephone1": "555"})
                job.records.list(
                    "contact", filter="fullname eq 'Ada'", select=["fullname", "telephone1"]
                )
                result = job.execute()
                return {
                    "names": names,
                    "batch": [(r.status_code, r.content_id) for r in result.responses],
                    "listed": result.responses[-1].data,
                }

        seen = await asyncio.to_thread(use_sdk)
    assert seen["names"] == ["b", "c", "d"]
    assert seen["batch"] == [(204, "1"), (204, "2"), (200, None)]
    assert [(r["fullname"], r["telephone1"]) for r in seen["listed"]["value"]] == [("Ada", "555")]
    assert any("$skiptoken=" in r.raw_path for r in dv.requests)
    # Absolute inner URLs (raw spaces and all), except for the Content-ID reference.
    [posted] = [r for r in dv.requests if r.inner]
    assert [i.target for i in posted.inner] == [
        f"{dv.service_root}/contacts",
        "$1",
        f"{dv.service_root}/contacts?$select=fullname,telephone1&$filter=fullname eq 'Ada'",
    ]


async def test_ssl_context_is_really_used(ca: LocalCA) -> None:
    """Without the CA the client refuses the certificate: the server speaks TLS."""
    async with (
        DataverseUpstream(ssl_context=ca.server_context()) as dv,
        aiohttp.ClientSession(headers=AUTH) as client,
    ):
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.get(f"{dv.service_root}/WhoAmI", ssl=ssl.create_default_context())
