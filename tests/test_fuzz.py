"""Property and fuzz tests for the guard: bounded in examples and time, loopback only.

- For every path the hygiene rules accept, the URL sent upstream has the route's scheme, host
  and port, and stays under the upstream's base path.
- No decoration of a denied path (case, trailing slash or dot, spaces, ``;params``, their
  percent-encodings, doubled slashes) gets past the deny rule (issue 13, item 1).
- Never an outbound proxy for a loopback or plain-http destination (item 3).
- Raw request bytes thrown at running proxies never crash them: no 500, no unhandled exception
  logged, and every answer is a well-formed HTTP response or a clean close. The inputs include
  method-override headers, header values that are not UTF-8, ``//`` after a prefix, odd path
  endings and loopback ``Origin``s sent to a gateway (items 2, 7, 10), against proxies with
  per-client concurrency caps, short head and body timeouts and a route taking overrides
  (items 4, 5).
- Any three-part string checked as a member's token is refused with ``InvalidToken`` (401),
  never another exception (a 500).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import posixpath
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from proxy.config import OutboundConfig, from_dict
from proxy.config.signin import EntraConfig
from proxy.errors import InvalidToken, PathNotAllowed, ProxyError
from proxy.hygiene import check_request, check_stripped_path
from proxy.policy import Policy
from proxy.routing import RouteTable
from proxy.signin.validate import validate
from proxy.testing import EchoUpstream

from .conftest import Proxy, StartProxy

# --- property: accepted paths stay on the route's upstream ----------------------------------

ROUTES = [
    {"name": "a", "prefix": "/a", "upstream": "https://a.example"},
    {"name": "b", "prefix": "/b/c", "upstream": "https://b.example:8443/base/v1"},
    {"name": "k", "prefix": "/k", "upstream": "https://k.example/api", "strip_prefix": False},
    {"name": "root", "prefix": "/", "upstream": "http://127.0.0.1:9/root"},
]
TABLE = RouteTable(
    from_dict(
        {
            "identities": {"i": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
            "routes": ROUTES,
        },
        {},
        base_dir=Path(),
    ).routes
)
HOST = CIMultiDict(Host="localhost")

# Pieces an attacker would reach for: separators, dots, escapes of them, authority markers.
_PIECES = st.sampled_from(
    [
        *("/", "//", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "@", ":", "?", "#", ";", "%"),
        *("%25", "%40", "%3a", "%3f", "a", "b", "c", "k", "evil.example", "%00", "%zz", "%c0%ae"),
    ]
)
_PATHS = st.tuples(
    st.sampled_from(["", "/a", "/b/c", "/k", "/b", "/a/", "/b/c/"]),
    st.lists(_PIECES | st.text(max_size=3), max_size=12).map("".join),
).map("".join)


@settings(max_examples=2000, deadline=None, database=None)
@given(target=_PATHS)
def test_accepted_paths_stay_on_the_route_upstream(target: str) -> None:
    try:
        check_request("GET", target, HOST)
    except ProxyError:
        return
    matched = TABLE.match(target)
    assert matched is not None  # the "/" route takes everything
    if matched.route.strip_prefix:
        try:  # as the guard does once the route is known
            check_stripped_path(target, matched.route.prefix)
        except ProxyError:
            return
    upstream = URL(matched.route.upstream)
    url = matched.url
    assert (url.scheme, url.host, url.port) == (upstream.scheme, upstream.host, upstream.port)
    assert not url.user
    assert not url.password
    assert not url.raw_fragment
    # Also the base path: however the upstream resolves dot segments, it stays below it.
    base = upstream.raw_path.rstrip("/") + "/"
    assert (url.raw_path + "/").startswith(base)
    resolved = posixpath.normpath(unquote(url.raw_path)) + "/"
    assert resolved.replace("//", "/").startswith(base), (target, url)
    assert not url.raw_path.startswith("//")  # never a network-path reference upstream


# --- property: a denied path cannot be dressed up to pass (issue 13, item 1) --------------

DENY_ROUTE = from_dict(
    {
        "identities": {"i": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
        "routes": [
            {
                "name": "p",
                "prefix": "/p",
                "upstream": "https://p.example",
                "deny_paths": ["/roles", "/admin/**", "/**/delete*"],
            }
        ],
    },
    {},
    base_dir=Path(),
).routes[0]
DENY_POLICY = Policy(DENY_ROUTE)
DENIED = [["roles"], ["admin"], ["admin", "users", "1"], ["deleteAll"], ["e", "x", "DeleteAudit"]]
_BEFORE = st.sampled_from(["", "", "%20", "%C2%A0", " "])
_AFTER = st.sampled_from(["", "", ".", "..", "%2e", "%2E%2e", "%20", "%C2%A0", ";x=1", "%3Bx=1"])
_SEPARATOR = st.sampled_from(["/", "/", "//", "%2F"])


@st.composite
def dressed_up(draw: st.DrawFn) -> str:
    """A denied path with every segment decorated as some server would ignore."""
    segments = draw(st.sampled_from(DENIED))
    out = ""
    for segment in segments:
        flips = draw(st.lists(st.booleans(), min_size=len(segment), max_size=len(segment)))
        cased = "".join(c.upper() if f else c.lower() for c, f in zip(segment, flips, strict=True))
        out += draw(_SEPARATOR) + draw(_BEFORE) + cased + draw(_AFTER)
    return "/p" + out + draw(st.sampled_from(["", "/", "//", "?x=1", "/?q=/roles"]))


@settings(max_examples=1500, deadline=None, database=None)
@given(target=dressed_up())
def test_denied_paths_cannot_be_dressed_up(target: str) -> None:
    try:
        check_request("GET", target, HOST)
        check_stripped_path(target, "/p")
    except ProxyError:
        return  # refused before any rule: also not forwarded
    with pytest.raises(PathNotAllowed):
        DENY_POLICY.check("GET", target)


# --- property: no outbound proxy for loopback or plain http (issue 13, item 3) ------------

_HOSTS = st.sampled_from(
    [
        "localhost",
        "LOCALHOST",
        "127.0.0.1",
        "127.9.8.7",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "api.example",
        "10.0.0.1",
        "[fd00::1]",
        "org.crm.dynamics.com",
    ]
)
_LOOPBACK = {"localhost", "127.0.0.1", "127.9.8.7", "[::1]", "[::ffff:127.0.0.1]"}


@settings(max_examples=300, deadline=None, database=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTPS"]),
    host=_HOSTS,
    port=st.sampled_from(["", ":443", ":8080"]),
    configured=st.sampled_from(["outbound", "https_proxy", "all_proxy", "http_proxy"]),
)
def test_never_an_outbound_proxy_for_loopback_or_plain_http(
    scheme: str, host: str, port: str, configured: str
) -> None:
    proxy = "http://corp-proxy:3128"
    outbound = (
        OutboundConfig(proxy=proxy)
        if configured == "outbound"
        else OutboundConfig(proxy_env={configured: proxy})
    )
    chosen = outbound.proxy_for(f"{scheme}://{host}{port}/x")
    if scheme == "http" or host.lower() in _LOOPBACK or configured == "http_proxy":
        assert chosen is None
    else:
        assert chosen == proxy


# --- fuzz: raw bytes at a running proxy ---------------------------------------------------

KEY = "ppk_fuzz-key"
METHODS = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "CONNECT", "TRACE"]
TARGETS = [
    "/echo/x",
    "/ro/x",
    "/echo/%2e%2e/x",
    "*",
    "http://evil.example/",
    "evil.example:443",
    "//x",
    "/echo//x",
    "/ro//x",
    "/ro/x/",
    "/ro/X.",
    "/ro/x%20",
    "/ro/x;y=1",
    "/ro/x%2e",
    "/ro/x%C2%A0",
    "/mo/x",
    "/_proxy/readyz",
    "/_proxy/livez",
    "/_proxy/x",
    "/",
]
HEADER_NAMES = [
    "Host",
    "Origin",
    "Sec-Fetch-Site",
    "Upgrade",
    "Connection",
    "Content-Length",
    "Transfer-Encoding",
    "Expect",
    "X-Api-Key",
    "Authorization",
    "Cookie",
    "x-ms-client-request-id",
    "X-HTTP-Method",
    "X-HTTP-Method-Override",
    "X-Method-Override",
]
HEADER_VALUES = [
    "localhost",
    "evil.example",
    "[::1]:1",
    "null",
    "cross-site",
    "websocket",
    "upgrade",
    "close",
    "chunked",
    "0",
    "5",
    "-1",
    "100-continue",
    KEY,
    f"Bearer {KEY}",
    "Basic OmtleQ==",
    "Basic !!",
    "DELETE",
    "get",
    "TRACE",
    "http://localhost:3000",
    "https://gw.corp.example",
    "gw.corp.example",
    # Bytes that are not UTF-8 (written with surrogateescape), and UTF-8 that is not ASCII.
    "\udcff",
    "caf\udcc3",
    "\udcc0\udcae",
    "café",
    "\u00a0x",
]
_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


# Plausible paths: what the guard lets through, so the forwarder and the policy get fuzzed too.
_SAFE_PATHS = st.tuples(
    st.sampled_from(["/echo", "/ro", "/_proxy", "/"]),
    st.lists(
        st.sampled_from(["/", "a", "x", "%20", "%41", "%E2%82%AC", ";m=1", "..x", ".h", "+", "~"]),
        max_size=8,
    ).map("".join),
    st.sampled_from(["", "?", "?a=1&b=%2F", "?$filter=x%20eq%201"]),
).map("".join)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    """A request line and headers, mostly plausible, sometimes odd, now and then damaged."""
    plausible = draw(st.booleans())
    if plausible:
        method = draw(st.sampled_from(METHODS))
        target = draw(st.sampled_from(TARGETS) | _SAFE_PATHS)
        version = "HTTP/1.1"
    else:
        method = draw(st.sampled_from(METHODS) | _TEXT)
        target = draw(st.sampled_from(TARGETS) | _PATHS | _TEXT)
        version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]))
    names = st.sampled_from(HEADER_NAMES) | _TEXT
    values = st.sampled_from(HEADER_VALUES) | _TEXT
    headers = draw(st.lists(st.tuples(names, values), max_size=6))
    if plausible or draw(st.booleans()):
        headers.insert(0, ("Host", "localhost"))
    body = draw(st.binary(max_size=40))
    lines = [f"{method} {target} {version}", *(f"{n}: {v}" for n, v in headers)]
    if plausible or draw(st.booleans()):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    if plausible:
        return raw
    # Damage it: flip a byte, cut it short, or splice in raw noise.
    damage = draw(st.sampled_from(["none", "flip", "cut", "noise"]))
    if damage == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :]
    elif damage == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == "noise":
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(st.binary(min_size=1, max_size=8)) + raw[i:]
    return raw


# aiohttp answers in the version the request line named (HTTP/2.0 too): any X.Y is well-formed.
_STATUS_LINE = re.compile(rb"^HTTP/[0-9]\.[0-9] ([1-5][0-9][0-9]) [^\r\n]*\r\n", re.MULTILINE)


async def exchange(url: str, raw: bytes) -> bytes:
    """Send ``raw``; read until the proxy closes, or until it waits for more input."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    try:
        writer.write(raw)
        await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                break  # the proxy waits for the rest of a request: fine
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass  # a clean close as far as the protocol goes
    finally:
        writer.close()
    return received


@pytest.fixture
async def fuzz_proxies(start_proxy: StartProxy, echo: EchoUpstream) -> list[Proxy]:
    routes = [
        {"name": "echo", "prefix": "/echo", "upstream": echo.url},
        {
            "name": "ro",
            "prefix": "/ro",
            "upstream": echo.url,
            "methods": ["GET"],
            "deny_paths": ["/x*"],
            "max_body_bytes": 8,
        },
        {
            "name": "mo",
            "prefix": "/mo",
            "upstream": echo.url,
            "methods": ["GET", "POST"],
            "allow_method_override": True,
        },
    ]
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    client = {"name": "fuzz", "key_sha256": digest, "max_concurrency": 1}
    quick = {"header_timeout": 1, "body_timeout": 1, "idle_timeout": 2}
    gateway = {"host": "0.0.0.0", "allowed_hosts": ["gw.corp.example"]}  # noqa: S104  # config only: bound to 127.0.0.1
    return [
        await start_proxy(routes, server=quick),
        await start_proxy(routes, access={"clients": [client]}, server=quick),
        await start_proxy(routes, access={"clients": [client]}, server=gateway),
    ]


class _Errors(logging.Handler):
    """Unhandled exceptions logged by aiohttp; its parser's own 400s are not crashes."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.crashes: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            self.crashes.append(record)


@pytest.fixture
def crashes() -> object:
    handler = _Errors()
    logger = logging.getLogger("aiohttp")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@settings(
    max_examples=400,
    deadline=timedelta(seconds=5),
    database=None,
    # One pair of proxies serves every example: that is the point of the fixture.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=http_requests() | st.binary(max_size=200), which=st.integers(0, 2))
async def test_fuzz_raw_requests(
    fuzz_proxies: list[Proxy], crashes: _Errors, raw: bytes, which: int
) -> None:
    response = await exchange(fuzz_proxies[which].url, raw)
    if response:
        assert _STATUS_LINE.match(response), response[:200]
        statuses = [int(s) for s in _STATUS_LINE.findall(response)]
        assert 500 not in statuses, response[:500]
    assert not crashes.crashes, [r.getMessage() for r in crashes.crashes]


# --- property: a member's token, however hostile, is refused as invalid_token ---------------

_ENTRA = EntraConfig("0f3c2b1a-0000-4000-8000-0000000000aa", ("api://ppproxy",))
_SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
# Values an attacker would try in the claims the check reads.
_CLAIM = _JSON | st.sampled_from(
    [_ENTRA.tenant_id, _ENTRA.v1_issuer, "api://ppproxy", ["api://ppproxy"], 1e308, 2**70, "x"]
)
_HEADERS = st.fixed_dictionaries(
    {}, optional={"alg": st.sampled_from(["RS256", "none", "HS256"]) | _JSON, "kid": _JSON}
)
_CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        name: _CLAIM
        for name in ("exp", "nbf", "tid", "iss", "aud", "oid", "upn", "groups", "roles")
    },
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _json_part(value: object) -> str:
    return _b64(json.dumps(value).encode())


# A part: readable JSON (an object or not), nesting past the recursion limit, bytes that are
# not UTF-8 or not JSON, any text, or a lot of it.
_PART = st.one_of(
    _HEADERS.map(_json_part),
    _CLAIMS.map(_json_part),
    _JSON.map(_json_part),
    st.integers(1, 5000).map(lambda n: _b64(b"[" * n)),
    st.binary(max_size=40).map(_b64),
    st.text(max_size=40),
    st.integers(1, 20_000).map(lambda n: "A" * n),
)


@settings(max_examples=800, deadline=None, database=None)
@given(head=_PART, body=_PART, signature=_PART | st.binary(max_size=300).map(_b64))
async def test_only_invalid_token_comes_out_of_validating_any_three_part_string(
    head: str, body: str, signature: str
) -> None:
    async def issuer_v2() -> str | None:
        return "https://login.example/v2.0"

    async def key(kid: str) -> rsa.RSAPublicKey | None:
        return _SIGNING_KEY

    with pytest.raises(InvalidToken):
        await validate(f"{head}.{body}.{signature}", _ENTRA, issuer_v2=issuer_v2, key=key)
