"""The $batch rules as pure functions: the strict reader, inner URL resolution, the check of
each inner request, and the rewrite of the answer. End to end: tests/test_batch.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.batch import Budget, is_batch, multipart, responses
from proxy.batch.check import check
from proxy.batch.targets import Place, resolve
from proxy.config import RouteConfig, from_dict
from proxy.errors import (
    BadBatch,
    BatchForbidden,
    ConfigError,
    MethodOverrideRefused,
    ProxyError,
    UpstreamBusy,
)
from proxy.policy import Policy
from proxy.routing import Resolver
from proxy.testing import _multipart as reference_reader

UP = "https://org.crm.dynamics.com"
ROOT = "/api/data/v9.2"
CT = 'multipart/mixed; boundary="batch_4aadba30-8530-4108-9ca6-c78908d80191"'

# Microsoft's Python SDK (powerplatform-dataverse-client 1.1.0) as captured: absolute inner
# URLs on its base URL, raw spaces in the query, "$1", bodiless parts without an empty line,
# an extra CRLF after the change set.
SDK_BODY = (
    b"--batch_4aadba30-8530-4108-9ca6-c78908d80191\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"POST http://localhost:8080/dv/api/data/v9.2/accounts HTTP/1.1\r\n"
    b"Content-Type: application/json; type=entry\r\n"
    b"\r\n"
    b'{"name": "Fabrikam"}\r\n'
    b"--batch_4aadba30-8530-4108-9ca6-c78908d80191\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"GET http://localhost:8080/dv/api/data/v9.2/accounts?$select=name&$filter=name eq 'x y'"
    b"&$orderby=name desc&$top=2 HTTP/1.1\r\n"
    b"Prefer: odata.maxpagesize=2\r\n"
    b"\r\n"
    b"--batch_4aadba30-8530-4108-9ca6-c78908d80191\r\n"
    b'Content-Type: multipart/mixed; boundary="changeset_2856117b-98e0-4ac4-a80e-383cf1f630d9"\r\n'
    b"\r\n"
    b"--changeset_2856117b-98e0-4ac4-a80e-383cf1f630d9\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"Content-ID: 1\r\n"
    b"\r\n"
    b"POST http://localhost:8080/dv/api/data/v9.2/accounts HTTP/1.1\r\n"
    b"Content-Type: application/json; type=entry\r\n"
    b"\r\n"
    b'{"name": "Ada"}\r\n'
    b"--changeset_2856117b-98e0-4ac4-a80e-383cf1f630d9\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"Content-ID: 2\r\n"
    b"\r\n"
    b"PATCH $1 HTTP/1.1\r\n"
    b"Content-Type: application/json; type=entry\r\n"
    b"If-Match: *\r\n"
    b"\r\n"
    b'{"telephone1": "555"}\r\n'
    b"--changeset_2856117b-98e0-4ac4-a80e-383cf1f630d9\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"Content-ID: 3\r\n"
    b"\r\n"
    b"DELETE http://localhost:8080/dv/api/data/v9.2/accounts(00000000-0000-0000-0000-0000000000a1)"
    b" HTTP/1.1\r\n"
    b"If-Match: *\r\n"
    b"\r\n"
    b"--changeset_2856117b-98e0-4ac4-a80e-383cf1f630d9--\r\n"
    b"\r\n"
    b"--batch_4aadba30-8530-4108-9ca6-c78908d80191\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"GET http://localhost:8080/dv/api/data/v9.2/accounts(00000000-0000-0000-0000-0000000000a1)"
    b"?$select=name HTTP/1.1\r\n"
    b"\r\n"
    b"--batch_4aadba30-8530-4108-9ca6-c78908d80191--\r\n"
)


def routes(*extra: dict[str, Any], **options: Any) -> tuple[RouteConfig, ...]:
    raw = [{"name": "dv", "prefix": "/dv", "upstream": UP, **options}, *extra]
    identities = {"i": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}}
    return from_dict({"identities": identities, "routes": raw}, {}, base_dir=Path()).routes


def place(
    configured: tuple[RouteConfig, ...] | None = None,
    *,
    listener: bool = False,
    host: str = "localhost:8080",
    batch_path: str = f"{ROOT}/$batch",
) -> Place:
    configured = configured or routes(rewrite_links=True)
    route = configured[0]
    return Place.of(
        route, route if listener else None, Resolver(configured).route_for, host, batch_path
    )


def body(*parts: str, boundary: str = "b") -> bytes:
    """Parts (each a whole part: MIME headers, empty line, content) in a CRLF batch body."""
    return (
        "".join(f"--{boundary}\r\n{p}\r\n" for p in parts).encode() + f"--{boundary}--\r\n".encode()
    )


def op(line: str, *headers: str, content: str = "") -> str:
    head = "\r\n".join(["Content-Type: application/http", "Content-Transfer-Encoding: binary"])
    inner = "\r\n".join([f"{line} HTTP/1.1", *headers])
    return f"{head}\r\n\r\n{inner}\r\n\r\n{content}" if content else f"{head}\r\n\r\n{inner}\r\n"


# --- the reader ----------------------------------------------------------------------------


def test_reads_what_microsofts_sdk_sends() -> None:
    found = multipart.read(SDK_BODY, CT)
    assert [(r.method, r.target, r.changeset, r.content_id) for r in found] == [
        ("POST", "http://localhost:8080/dv/api/data/v9.2/accounts", None, None),
        (
            "GET",
            "http://localhost:8080/dv/api/data/v9.2/accounts?$select=name&$filter=name eq 'x y'"
            "&$orderby=name desc&$top=2",
            None,
            None,
        ),
        ("POST", "http://localhost:8080/dv/api/data/v9.2/accounts", 1, "1"),
        ("PATCH", "$1", 1, "2"),
        (
            "DELETE",
            "http://localhost:8080/dv/api/data/v9.2/accounts(00000000-0000-0000-0000-0000000000a1)",
            1,
            "3",
        ),
        (
            "GET",
            "http://localhost:8080/dv/api/data/v9.2/accounts(00000000-0000-0000-0000-0000000000a1)"
            "?$select=name",
            None,
            None,
        ),
    ]
    for inner in found:
        start, end = inner.target_span
        assert SDK_BODY[start:end].decode() == inner.target
    assert found[1].header("prefer") == "odata.maxpagesize=2"


def test_the_sdk_body_agrees_with_the_stand_ins_reader() -> None:
    """Two independent readers see the same requests in the SDK's body."""
    mine = [(r.method, r.target) for r in multipart.read(SDK_BODY, CT)]
    theirs = []
    for part in reference_reader.split_parts(SDK_BODY, reference_reader.boundary_of(CT) or ""):
        inner = reference_reader.boundary_of(part.header("Content-Type") or "")
        for p in reference_reader.split_parts(part.body, inner) if inner else [part]:
            parsed = reference_reader.parse_request(p.body)
            theirs.append((parsed.method, parsed.target))
    assert mine == theirs


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/mixed; boundary=batch_1", "batch_1"),
        ('Multipart/Mixed;boundary="batch_1"', "batch_1"),
        ('multipart/mixed; charset=utf-8; boundary="a=b?c"', "a=b?c"),
    ],
)
def test_boundary_parameter(content_type: str, boundary: str) -> None:
    assert multipart.boundary_of(content_type) == boundary


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",  # OData 4.01 JSON batch: not checked, so never forwarded
        "multipart/mixed",
        "multipart/mixed; boundary=",
        "multipart/mixed; boundary=a; boundary=b",  # which one would the upstream take?
        'multipart/mixed; boundary="a:b"',  # "--a:b" would read as a header line
        'multipart/mixed; boundary="a b"',
        "multipart/mixed; boundary=" + "x" * 71,
        "multipart/mixed; boundary=b; charset=ibm037",  # EBCDIC: other bytes for the same text
        'multipart/mixed; boundary="b',
    ],
)
def test_boundary_parameter_refused(content_type: str) -> None:
    with pytest.raises(BadBatch):
        multipart.boundary_of(content_type)


def test_preamble_epilogue_padding_and_lf() -> None:
    data = (
        b"preamble\n--b \t\nContent-Type: application/http\n\nGET a HTTP/1.1\n\n--b--\t\nepilogue"
    )
    [found] = multipart.read(data, "multipart/mixed; boundary=b")
    assert (found.method, found.target) == ("GET", "a")


def test_empty_lines_before_the_request_line_are_skipped() -> None:
    """As Microsoft.OData does (it reads the first non-empty line)."""
    [found] = multipart.read(
        body("Content-Type: application/http\r\n\r\n\r\n\nGET a HTTP/1.1\r\n"),
        "multipart/mixed; boundary=b",
    )
    assert found.target == "a"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\n--b--x", "line end"),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\nx--b\r\n--b--", "inside"),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\r--b--\r\n", "inside"),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\n--b--\r\n--b\r\n",
            "after",
        ),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\n", "closing"),
        (b"--b\r\nContent-Type: text/plain\r\n\r\nGET a HTTP/1.1\r\n--b--", "application/http"),
        (b"--b\r\n\r\nGET a HTTP/1.1\r\n--b--", "application/http"),
        (
            b"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"R0VUIGEgSFRUUC8xLjE=\r\n--b--",
            "Transfer",
        ),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.0\r\n--b--", "request line"),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET a\r\n--b--", "request line"),
        (b"--b\r\nContent-Type: application/http\r\n\r\nG@T a HTTP/1.1\r\n--b--", "request line"),
        (b"--b\r\nContent-Type: application/http\r\n\r\n\r\n--b--", "no request"),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\nA: 1\rB: 2\r\n--b--",
            "bare CR",
        ),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\n folded\r\n--b--",
            "header",
        ),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\nA: 1\r\na: 2\r\n--b--",
            "twice",
        ),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\nA: \x00\r\n--b--",
            "control",
        ),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET \xff HTTP/1.1\r\n--b--", "UTF-8"),
    ],
)
def test_bodies_the_upstream_could_read_otherwise_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(BadBatch, match=why):
        multipart.read(data, "multipart/mixed; boundary=b")


def test_at_most_1000_requests_and_100_headers() -> None:
    many = body(*[op("GET a")] * 1001)
    with pytest.raises(BadBatch, match="at most 1000"):
        multipart.read(many, "multipart/mixed; boundary=b")
    assert len(multipart.read(body(*[op("GET a")] * 1000), "multipart/mixed; boundary=b")) == 1000
    headers = [f"H{i}: x" for i in range(101)]
    with pytest.raises(BadBatch, match="header lines"):
        multipart.read(body(op("GET a", *headers)), "multipart/mixed; boundary=b")


# --- inner URLs ----------------------------------------------------------------------------

PATH = f"{ROOT}/accounts"


@pytest.mark.parametrize(
    ("target", "path", "sent"),
    [
        (
            f"http://localhost:8080/dv{PATH}?$filter=a eq 'b c'",
            PATH,
            f"{UP}{PATH}?$filter=a eq 'b c'",
        ),
        (f"HTTPS://LOCALHOST:8080/dv{PATH}", PATH, f"{UP}{PATH}"),  # either scheme, any case
        (f"{UP}{PATH}", PATH, None),
        (f"https://org.crm.dynamics.com:443{PATH}", PATH, None),
        (f"/dv{PATH}", PATH, f"{UP}{PATH}"),  # the proxy's path: rewritten
        (PATH, PATH, None),  # not on the route at the proxy: the upstream's, as documented
        ("accounts?$top=1", PATH, None),  # relative to the batch URL
        ("/dv", "/", UP),
        ("/dv?x=1", "/", f"{UP}/?x=1"),
    ],
)
def test_inner_urls_resolve_to_the_route_path(target: str, path: str, sent: str | None) -> None:
    found = resolve(target, place())
    assert (found.path, found.sent) == (path, sent)


def test_without_rewrite_links_nothing_is_rewritten() -> None:
    unrewritten = place(routes())
    assert resolve(f"http://localhost:8080/dv{PATH}", unrewritten).sent is None
    # A path-absolute URL is then the upstream's: what the upstream will read.
    assert resolve(f"/dv{PATH}", unrewritten).path == f"/dv{PATH}"


@pytest.mark.parametrize(
    ("configured", "listener", "target", "path", "sent"),
    [
        # An upstream with a base path, reached under a prefix.
        (
            routes(upstream=UP + ROOT, rewrite_links=True),
            False,
            "http://localhost:8080/dv/accounts",
            "/accounts",
            f"{UP}{ROOT}/accounts",
        ),
        (
            routes(upstream=UP + ROOT, rewrite_links=True),
            False,
            f"{UP}{ROOT}/accounts",
            "/accounts",
            None,
        ),
        # strip_prefix = false: the prefix goes upstream too, and is not part of the route path.
        (
            routes(strip_prefix=False, rewrite_links=True),
            False,
            "http://localhost:8080/dv/x",
            "/x",
            f"{UP}/dv/x",
        ),
        (routes(strip_prefix=False, rewrite_links=True), False, f"{UP}/dv/x", "/x", None),
        # The route's own port: every path there is the route's.
        (routes(rewrite_links=True), True, "http://localhost:8080/x", "/x", f"{UP}/x"),
        (routes(rewrite_links=True), True, "/x", "/x", f"{UP}/x"),
    ],
)
def test_inner_urls_follow_the_route_mapping(
    configured: tuple[RouteConfig, ...], listener: bool, target: str, path: str, sent: str | None
) -> None:
    found = resolve(target, place(configured, listener=listener))
    assert (found.path, found.sent) == (path, sent)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/api/data/v9.2/accounts",
        "http://localhost:8081/dv/x",  # the proxy's host, another port
        "http://org.crm.dynamics.com/x",  # the upstream's host over http
        "ftp://org.crm.dynamics.com/x",
        "urn:x",
        "//evil.example/x",
        "http://localhost:8080/other/x",  # another route
        "http://localhost:8080/nowhere",  # no route
        f"{UP}/dv2/x",  # a standalone request for it would go to /dv/dv2
        f"{UP}/dv2",
    ],
)
def test_inner_urls_outside_the_route_are_forbidden(target: str) -> None:
    configured = routes(
        {"name": "other", "prefix": "/other", "upstream": UP},
        {"name": "deeper", "prefix": "/dv/dv2", "upstream": UP},
        rewrite_links=True,
    )
    with pytest.raises(BatchForbidden):
        resolve(target, place(configured))


def test_upstream_base_path_is_a_boundary() -> None:
    with pytest.raises(BatchForbidden, match="base path"):
        resolve(f"{UP}/api/data/v9.20/x", place(routes(upstream=UP + ROOT)))


@pytest.mark.parametrize(
    "target",
    [
        "http://user@localhost:8080/dv/x",
        "accounts/../systemusers",
        "accounts/%2e%2e/systemusers",
        "/dv/a%2Fb",
        "a\\b",
        "a#frag",
        "a\tb",
        "?x=1",
        "http://[::1/x",
        "http://localhost:80a/x",
    ],
)
def test_ambiguous_inner_urls_are_bad_batches(target: str) -> None:
    with pytest.raises(BadBatch):
        resolve(target, place())


def test_ipv6_and_default_ports() -> None:
    assert resolve("http://[::1]:8080/dv/x", place(host="[::1]:8080")).path == "/x"
    assert resolve("http://localhost/dv/x", place(host="localhost")).path == "/x"
    with pytest.raises(BatchForbidden):
        resolve("http://localhost:8080/dv/x", place(host="localhost"))


# --- the check -------------------------------------------------------------------------------


def run(data: bytes, configured: tuple[RouteConfig, ...] | None = None, **kw: Any) -> Any:
    configured = configured or routes(rewrite_links=True)
    return check(
        data, "multipart/mixed; boundary=b", place(configured), Policy(configured[0]), None, **kw
    )


def test_the_sdk_body_is_rewritten_only_in_its_request_lines() -> None:
    configured = routes(rewrite_links=True)
    checked = check(SDK_BODY, CT, place(configured), Policy(configured[0]), None)
    assert checked.body == SDK_BODY.replace(b"http://localhost:8080/dv", UP.encode())
    assert checked.summary.total == 6
    assert checked.summary.changesets == 1
    assert [r.path for r in checked.summary.requests] == [
        PATH,
        PATH,
        PATH,
        f"{PATH}($1)",
        f"{PATH}(00000000-0000-0000-0000-0000000000a1)",
        f"{PATH}(00000000-0000-0000-0000-0000000000a1)",
    ]


def test_a_reference_is_checked_as_the_record_it_names() -> None:
    configured = routes(deny_paths=["/api/data/v9.2/accounts(*)"])
    data = body(
        "Content-Type: multipart/mixed; boundary=cs\r\n\r\n"
        + "--cs\r\n"
        + op(f"POST {PATH}", "Content-ID: 1")
        + "\r\n"
        + "--cs\r\n"
        + op("DELETE $1", "Content-ID: 2")
        + "\r\n--cs--"
    )
    with pytest.raises(BatchForbidden) as refused:
        run(data, configured)
    assert refused.value.where == {
        "position": 2,
        "method": "DELETE",
        "path": f"{PATH}($1)",
        "changeset": 1,
        "content_id": "2",
        "reason": "path_not_allowed",
    }


@pytest.mark.parametrize(
    ("changeset", "why"),
    [
        ([op(f"POST {PATH}", "Content-ID: 1"), op("PATCH $2", "Content-ID: 2")], "earlier"),
        ([op(f"POST {PATH}", "Content-ID: 1"), op(f"PATCH {PATH}/$1", "Content-ID: 2")], "start"),
        ([op(f"POST {PATH}", "Content-ID: 1"), op(f"POST {PATH}", "Content-ID: 1")], "twice"),
        ([op(f"POST {PATH}", "Content-ID: 1"), op("PATCH $1x/../y", "Content-ID: 2")], "\\$1x"),
        ([op(f"POST {PATH}", "Content-ID: 1"), op("PATCH $1(", "Content-ID: 2")], "followed"),
        ([op(f"POST {PATH}", "Content-ID: a b")], "Content-ID"),
    ],
)
def test_references_must_be_unambiguous(changeset: list[str], why: str) -> None:
    inner = "".join(f"--cs\r\n{p}\r\n" for p in changeset) + "--cs--"
    with pytest.raises(BadBatch, match=why):
        run(body(f"Content-Type: multipart/mixed; boundary=cs\r\n\r\n{inner}"))


@pytest.mark.parametrize("name", ["X-HTTP-Method", "X-HTTP-Method-Override", "x-method-override"])
def test_method_overrides_are_refused_unless_allowed(name: str) -> None:
    data = body(op(f"POST {PATH}", f"{name}: DELETE"))
    with pytest.raises(MethodOverrideRefused):
        run(data)
    configured = routes(methods=["GET", "POST"])
    with pytest.raises(BatchForbidden, match="this route takes only"):  # the override is checked
        run(data, configured, allow_override=True)
    assert run(body(op(f"POST {PATH}", f"{name}: GET")), configured, allow_override=True)


def test_inner_method_overrides_that_disagree_or_name_trace_are_refused() -> None:
    """As outside a batch: with two override headers, both must name one method; an
    override to TRACE/TRACK/CONNECT is never taken."""
    configured = routes(methods=["GET", "POST"])
    both = op(f"POST {PATH}", "X-HTTP-Method: DELETE\r\nX-HTTP-Method-Override: GET")
    with pytest.raises(MethodOverrideRefused, match="different methods"):
        run(body(both), configured, allow_override=True)
    with pytest.raises(MethodOverrideRefused, match="TRACE"):
        run(body(op(f"POST {PATH}", "X-HTTP-Method: TRACE")), configured, allow_override=True)


def test_an_error_names_the_request_but_never_its_query() -> None:
    configured = routes(methods=["GET", "POST"])
    data = body(op(f"GET {PATH}"), op(f"DELETE {PATH}(1)?secret=s3cr3t"))
    with pytest.raises(BatchForbidden) as refused:
        run(data, configured)
    assert "s3cr3t" not in json.dumps(refused.value.body())
    assert refused.value.body()["message"].startswith(f"batch request 2 (DELETE {PATH}(1)): ")


@pytest.mark.parametrize(
    ("path", "batch"),
    [
        ("/dv/api/data/v9.2/$batch", True),
        ("/dv/$BATCH", True),
        ("/dv/$batch/", True),
        ("/dv/$batch;x=1", True),
        ("/dv/accounts", False),
        ("/dv/$batchx", False),
        ("/dv/$batch/x", False),
    ],
)
def test_what_counts_as_a_batch(path: str, batch: bool) -> None:
    assert is_batch("POST", path) is batch
    assert is_batch("GET", path) is False


# --- the answer ------------------------------------------------------------------------------

LISTED = f'{{"@odata.context":"{UP}{ROOT}/$metadata#accounts","value":[{{"name":"a"}}]}}'
ANSWER = (
    "--batchresponse_1\r\n"
    "Content-Type: multipart/mixed; boundary=changesetresponse_1\r\n"
    "\r\n"
    "--changesetresponse_1\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "Content-ID: 1\r\n"
    "\r\n"
    "HTTP/1.1 204 No Content\r\n"
    "OData-Version: 4.0\r\n"
    f"Location: {UP}{PATH}(1)\r\n"
    f"OData-EntityId: {UP}{PATH}(1)\r\n"
    "\r\n"
    "\r\n"
    "--changesetresponse_1--\r\n"
    "--batchresponse_1\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: application/json; odata.metadata=minimal\r\n"
    f"Content-Length: {len(LISTED)}\r\n"
    "\r\n"
    f"{LISTED}\r\n"
    "--batchresponse_1\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "HTTP/1.1 404 Not Found\r\n"
    "Content-Type: application/json\r\n"
    "\r\n"
    '{"error":{"code":"0x80060891","message":"not found"}}\r\n'
    "--batchresponse_1--\r\n"
).encode()
ANSWER_CT = "multipart/mixed; boundary=batchresponse_1"


def test_the_answer_is_rewritten_in_its_links_and_json_only() -> None:
    def url(value: str) -> str:
        return value.replace(UP, "http://localhost:8080/dv")

    def json_body(data: bytes) -> bytes:
        return data.replace(UP.encode(), b"http://localhost:8080/dv")

    rewritten = responses.rewrite(ANSWER, ANSWER_CT, url, json_body)
    mine = LISTED.replace(UP, "http://localhost:8080/dv")
    assert rewritten == ANSWER.replace(UP.encode(), b"http://localhost:8080/dv").replace(
        f"Content-Length: {len(LISTED)}".encode(), f"Content-Length: {len(mine)}".encode()
    )
    assert responses.rewrite(b"not a batch", ANSWER_CT, url, json_body) is None


def test_the_answer_is_summarized_even_when_cut() -> None:
    whole = responses.summarize(ANSWER, ANSWER_CT)
    assert whole is not None
    found, complete = whole
    assert complete
    assert [(a["status"], a["changeset"], a["content_id"]) for a in found] == [
        (204, 1, "1"),
        (200, None, None),
        (404, None, None),
    ]
    assert found[0]["OData-EntityId"] == f"{UP}{PATH}(1)"
    assert found[2]["error"] == {"code": "0x80060891", "message": "not found"}
    cut = responses.summarize(ANSWER[: ANSWER.index(b"HTTP/1.1 404")], ANSWER_CT)
    assert cut is not None
    assert ([a["status"] for a in cut[0]], cut[1]) == ([204, 200], False)


# --- properties ------------------------------------------------------------------------------

_LINES = st.sampled_from(
    [
        "GET accounts",
        "GET accounts?$filter=name eq 'a b'",
        "DELETE systemusers(1)",
        "PATCH $1",
        "POST http://localhost:8080/dv/api/data/v9.2/accounts",
        f"GET {UP}{ROOT}/accounts",
    ]
)
_HEADERS = st.lists(st.sampled_from(["Accept: x", "If-Match: *", "Content-ID: 1"]), max_size=2)
_BODIES = st.sampled_from(["", '{"name": "a"}', "--bx", "a\rb", "x\r\n\r\ny"])
_OPERATION = st.tuples(_LINES, _HEADERS, _BODIES)
# Bytes an attacker would slip in: line ends, delimiters, header lines.
_SLIPS = st.sampled_from(
    ["\r", "\n", "\r\n", "--b", "--b\r\n", "--b--", "--cs\r\n", "X-HTTP-Method: DELETE\r\n", " "]
)


@st.composite
def _bodies(draw: st.DrawFn) -> str:
    """A batch body, with or without change sets and in CRLF or LF, then maybe a few slips."""
    eol = draw(st.sampled_from(["\r\n", "\n"]))

    def operation(line: str, headers: list[str], content: str, cid: int | None) -> str:
        mime = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        mime += [f"Content-ID: {cid}"] if cid is not None else []
        inner = [f"{line} HTTP/1.1", *dict.fromkeys(headers)]
        return eol.join([*mime, "", *inner, "", content])

    out = []
    items = draw(
        st.lists(st.one_of(_OPERATION, st.lists(_OPERATION, min_size=1, max_size=3)), max_size=4)
    )
    for item in items:
        out.append("--b")
        if isinstance(item, tuple):
            out.append(operation(*item, None))
            continue
        out += ["Content-Type: multipart/mixed; boundary=cs", ""]
        for n, (line, headers, content) in enumerate(item, start=1):
            headers = [h for h in headers if not h.startswith("Content-ID")]
            out += ["--cs", operation(line, headers, content, n)]
        out += ["--cs--", ""]
    out += ["--b--", ""]
    text = eol.join(out)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(_SLIPS) + text[at:]
    return text


@settings(
    max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_bodies())
def test_any_body_is_checked_or_refused_and_read_as_another_reader_reads_it(text: str) -> None:
    """Whatever the bytes, the check answers with a ProxyError or passes; and a body it passes
    reads the same (methods and targets, in order) to the stand-in's independent reader,
    which, like Microsoft.OData, takes CR, LF and CRLF as line ends."""
    data = text.encode()
    configured = routes(rewrite_links=True)
    try:
        check(data, "multipart/mixed; boundary=b", place(configured), Policy(configured[0]), None)
    except ProxyError:
        return
    mine = [
        (r.method.upper(), r.target) for r in multipart.read(data, "multipart/mixed; boundary=b")
    ]
    theirs = []
    for part in reference_reader.split_parts(data, "b"):
        inner = reference_reader.boundary_of(part.header("Content-Type") or "")
        for p in reference_reader.split_parts(part.body, inner) if inner else [part]:
            parsed = reference_reader.parse_request(p.body)
            theirs.append((parsed.method, parsed.target))
    assert mine == theirs


# --- relative URLs, service resources, inner headers, echoed lines --------------------------


@pytest.mark.parametrize(
    ("upstream", "batch_path"),
    [
        (UP, f"{ROOT}/$batch/"),  # a trailing slash: RFC 3986 would resolve below "$batch/"
        (UP, f"{ROOT}/$batch;x=1"),
        (UP, f"{ROOT}/accounts/$batch"),  # below the service root
        (UP, "/other/$batch"),  # an origin upstream, not a Dataverse service root
        (UP + ROOT, f"{ROOT}/accounts/$batch"),  # not the route's upstream base
    ],
)
def test_relative_urls_under_any_other_batch_url_are_refused(
    upstream: str, batch_path: str
) -> None:
    """Relative inner URLs are read against the batch URL only where that is the service root
    the upstream reads them against; elsewhere they are refused, absolute ones still pass."""
    at = place(routes(upstream=upstream), batch_path=batch_path)
    with pytest.raises(BadBatch, match="could be read two ways"):
        resolve("systemusers(1)", at)
    assert resolve(f"{ROOT}/systemusers(1)", at).path.endswith("/systemusers(1)")


@pytest.mark.parametrize(
    ("upstream", "batch_path"),
    [(UP, f"{ROOT}/$batch"), (UP, "/API/data/v9.0/%24batch"), (UP + ROOT, f"{ROOT}/$batch")],
)
def test_relative_urls_under_the_service_root_batch_url_resolve(
    upstream: str, batch_path: str
) -> None:
    at = place(routes(upstream=upstream), batch_path=batch_path)
    folder = batch_path.rpartition("/")[0]
    assert resolve("accounts", at).path == resolve(f"{folder}/accounts", at).path


def test_the_reported_relative_bypass_under_batch_slash_is_closed() -> None:
    """The review's case: DELETE systemusers(1) under .../$batch/ passed a systemusers deny."""
    configured = routes(deny_paths=[f"{ROOT}/systemusers*"])
    data = body(op("DELETE systemusers(1)"))
    at = place(configured, batch_path=f"{ROOT}/$batch/")
    with pytest.raises(BadBatch):
        check(data, "multipart/mixed; boundary=b", at, Policy(configured[0]), None)


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("$metadata", f"{ROOT}/$metadata"),
        ("$metadata#accounts", None),  # a fragment: refused as ever
        ("$entity?$id=accounts(1)", f"{ROOT}/$entity"),
        ("$crossjoin(accounts,contacts)", f"{ROOT}/$crossjoin(accounts,contacts)"),
        ("$all", f"{ROOT}/$all"),
    ],
)
def test_service_resources_are_relative_urls_not_references(target: str, path: str | None) -> None:
    """GET $metadata (and $entity, $crossjoin, $all) is OData's own resource, checked as the
    path it names, not refused as a reference to no request."""
    data = body(op(f"GET {target}"))
    if path is None:
        with pytest.raises(BadBatch, match="fragment"):
            run(data)
        return
    assert [r.path for r in run(data).summary.requests] == [path]
    configured = routes(deny_paths=[f"{ROOT}/$*"])
    with pytest.raises(BatchForbidden):
        run(data, configured)


def test_a_content_id_may_not_take_a_service_resource_name() -> None:
    changeset = f"--cs\r\n{op(f'POST {PATH}', 'Content-ID: metadata')}\r\n--cs--"
    with pytest.raises(BadBatch, match="Content-ID metadata"):
        run(body(f"Content-Type: multipart/mixed; boundary=cs\r\n\r\n{changeset}"))


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer eyJhbGciOiJub25lIn0.eyJvaWQiOiJ4In0.",
        "authorization: Basic dXNlcjpwYXNz",
        "Proxy-Authorization: Basic dXNlcjpwYXNz",
        "Cookie: session=1",
        "X-Internal-Key: 1",  # the route's remove_request_headers
        "x-internal-key: 1",
    ],
)
def test_inner_headers_the_proxy_would_not_forward_are_forbidden(header: str) -> None:
    """Client credentials and the route's removed headers inside an inner request: 403 naming
    the request and the header, never its value."""
    configured = routes(rewrite_links=True, remove_request_headers=["X-Internal-Key"])
    data = body(op(f"GET {PATH}"), op(f"GET {PATH}?$top=1", header))
    with pytest.raises(BatchForbidden) as refused:
        run(data, configured)
    answer = refused.value.body()
    assert answer["error"] == "forbidden"
    assert answer["batch"] == {
        "position": 2,
        "method": "GET",
        "path": PATH,
        "reason": "header_not_allowed",
    }
    name, _, value = header.partition(":")
    assert name in answer["message"]
    assert value.strip() not in json.dumps(answer)


def test_other_inner_headers_pass() -> None:
    configured = routes(rewrite_links=True, remove_request_headers=["X-Internal-Key"])
    data = body(op(f"GET {PATH}", "Accept: application/json", "Prefer: odata.maxpagesize=2"))
    assert run(data, configured).summary.total == 1


TOKEN = "eyJhbGciOiJub25lIn0.eyJvaWQiOiJzM2NyM3QifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("part", "secret"),
    [
        (op(f"GET {PATH}?access_token={TOKEN}").replace(" HTTP/1.1", ""), TOKEN),
        (op(f"GET {PATH}/{TOKEN}").replace(" HTTP/1.1", " HTTP/9"), TOKEN),
        (op(f"GET {PATH}", f"Authorization Bearer {TOKEN}"), TOKEN),
        (op(f"GET {PATH}", "X-Api-Key ppk_s3cr3t-key-value"), "ppk_s3cr3t"),
        (op(f"GET {PATH}", "Bad Header: ppk_s3cr3t-key-value"), "ppk_s3cr3t"),
    ],
)
def test_malformed_lines_are_echoed_without_what_they_may_hold(part: str, secret: str) -> None:
    """A malformed request or header line is named in the error without its query, header
    value or anything shaped like a token, and cut short."""
    with pytest.raises(BadBatch, match="malformed") as refused:
        run(body(part))
    shown = json.dumps(refused.value.body())
    assert secret not in shown
    assert "eyJ" not in shown
    assert len(refused.value.message) < 250


def test_a_long_malformed_line_is_cut() -> None:
    with pytest.raises(BadBatch) as refused:
        run(body(op("GET /" + "a" * 5000).replace(" HTTP/1.1", "")))
    assert "a" * 81 not in refused.value.message
    assert "…" in refused.value.message


def test_inner_content_length_follows_the_rewritten_body() -> None:
    """An inner response's Content-Length is corrected to its rewritten JSON body (longer
    and shorter), and one without Content-Length gains none."""
    for mine in ("http://localhost:8080/dv", "http://a-much-longer-proxy-address.example:8080/dv"):
        rewritten = responses.rewrite(
            ANSWER,
            ANSWER_CT,
            lambda v, m=mine: v.replace(UP, m),
            lambda d, m=mine: d.replace(UP.encode(), m.encode()),
        )
        assert rewritten is not None
        parts = responses.summarize(rewritten, ANSWER_CT)
        assert parts is not None
        listed = rewritten.split(b"HTTP/1.1 200 OK\r\n", 1)[1]
        head, _, rest = listed.partition(b"\r\n\r\n")
        declared = int(dict(h.split(b": ", 1) for h in head.split(b"\r\n"))[b"Content-Length"])
        content = rest.split(b"\r\n--batchresponse_1", 1)[0]
        assert declared == len(content) == len(LISTED.replace(UP, mine))
        not_found = rewritten.split(b"HTTP/1.1 404 Not Found\r\n", 1)[1].partition(b"\r\n\r\n")[0]
        assert b"Content-Length" not in not_found


def test_the_batch_budget_bounds_bytes_held_across_batches() -> None:
    """Reservations add up to the budget; past it UpstreamBusy with Retry-After, unless the
    batch is alone; bytes come back on release, once."""
    budget = Budget()
    first, second = budget.reserve(), budget.reserve()
    first.take(900, 1000)
    first.take(300, 1000)  # alone: its route's limit bounds it, not the budget
    with pytest.raises(UpstreamBusy) as busy:
        second.take(1, 1000)
    assert busy.value.headers() == {"Retry-After": "1"}
    assert budget.held == 1200
    first.release()
    first.release()
    assert budget.held == 0
    second.take(600, 1000)
    third = budget.reserve()
    third.take(400, 1000)
    with pytest.raises(UpstreamBusy):
        third.take(1, 1000)
    second.release()
    third.release()
    assert budget.held == 0


@pytest.mark.parametrize(("value", "ok"), [(1, True), (0, False), (-5, False), ("x", False)])
def test_max_held_batch_bytes_setting(value: object, ok: bool) -> None:
    identities = {"i": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}}
    raw = {"identities": identities, "server": {"max_held_batch_bytes": value}}
    if ok:
        assert from_dict(raw, {}, base_dir=Path()).server.max_held_batch_bytes == value
        default = from_dict({"identities": identities}, {}, base_dir=Path()).server
        assert default.max_held_batch_bytes == 32 * 1024 * 1024
        return
    with pytest.raises(ConfigError, match=r"server\.max_held_batch_bytes"):
        from_dict(raw, {}, base_dir=Path())
