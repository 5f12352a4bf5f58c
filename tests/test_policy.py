"""Route policy that means what it says: the glob grammar, the forms a path is judged in, and
method overrides (issue 13, items 1 and 2)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.config import ConfigError, from_dict
from proxy.errors import ProxyError
from proxy.globs import compile_glob, forms
from proxy.policy import Policy
from proxy.testing import EchoUpstream

from .conftest import StartProxy, events

_IDENTITY = {"a": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}}


def route_config(**policy: Any) -> Any:
    raw = {
        "identities": _IDENTITY,
        "routes": [{"name": "r", "prefix": "/r", "upstream": "https://r.example", **policy}],
    }
    return from_dict(raw, {}, base_dir=Path()).routes[0]


def matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` matches ``path`` in its strict form."""
    return compile_glob(pattern).fullmatch(forms(path)[0]) is not None


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/apps", "/apps", True),
        ("/apps", "/apps/", True),  # a trailing slash is the same path
        ("/apps/", "/apps", True),
        ("/apps", "/apps/x", False),  # a plain pattern is one path, not a subtree
        ("/apps/*", "/apps/x", True),
        ("/apps/*", "/apps/x/y", False),
        ("/apps/*", "/apps", False),
        ("/apps/*", "/apps/", False),
        ("/apps/**", "/apps", True),  # ** is zero or more segments
        ("/apps/**", "/apps/", True),
        ("/apps/**", "/apps/x/y", True),
        ("/apps/**", "/appsx", False),
        ("/**", "/", True),
        ("/**", "/a/b/c", True),
        ("/", "/", True),
        ("/", "/a", False),
        ("/**/delete*", "/deleteAll", True),
        ("/**/delete*", "/DeleteAuditData", True),
        ("/**/delete*", "/a/b/delete", True),
        ("/**/delete*", "/a/undelete", False),
        ("/a/**/b", "/a/b", True),
        ("/a/**/b", "/a/x/y/b", True),
        ("/a/**/b", "/a/xb", False),
        ("/apps/?", "/apps/x", True),
        ("/apps/?", "/apps/xy", False),
        ("/apps/*/delete", "/apps/x/delete", True),
        ("apps/*", "/apps/x", True),  # relative to the prefix either way
        ("/a.b", "/aXb", False),  # only *, ** and ? are special
        ("/a+b(c)", "/a+b(c)", True),
        ("/Apps/*", "/aPPs/X", True),
        ("/apps", "//apps//", True),  # runs of slashes are one
        ("/apps/x", "/apps/%78", True),  # decoded before matching
    ],
)
def test_glob_grammar(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


@pytest.mark.parametrize("pattern", ["/a**", "/**b/c", "/a/***", "**x"])
def test_double_star_must_be_a_whole_segment(pattern: str) -> None:
    with pytest.raises(ConfigError) as e:
        route_config(deny_paths=[pattern])
    assert "routes[0].deny_paths" in e.value.render()
    assert "whole segment" in e.value.render()


DENY = "path_not_allowed"


def decide(policy: Policy, path: str) -> str | None:
    try:
        policy.check("GET", "/r" + path)
    except ProxyError as e:
        return e.code
    return None


# Every corner case of the issue, each to a decision: a deny of /roles holds whatever a lenient
# server makes of the path; an allow of /env admits only what is /env to every reading.
@pytest.mark.parametrize(
    ("path", "denied_by_roles", "allowed_by_env"),
    [
        ("/roles", True, False),
        ("/roles/", True, False),
        ("/ROLES", True, False),
        ("/roles.", True, False),  # trailing dot: stripped by Windows-based servers
        ("/roles..", True, False),
        ("/roles%2e", True, False),  # the same, encoded
        ("/roles%20", True, False),  # trailing space
        ("/%20roles", True, False),
        ("/roles%C2%A0", True, False),  # non-breaking space
        ("/roles;x=1", True, False),  # path parameter, dropped by some servers
        ("/roles%3Bx=1", True, False),
        ("/roles/x", False, False),  # /roles is one path: deny /roles/** for the subtree
        ("/rolesx", False, False),
        ("/env", False, True),
        ("/env/", False, True),
        ("/env.", False, False),  # an allow needs every reading to be /env
        ("/env%20", False, False),
        ("/env;x=1", False, False),
        ("/env%C2%A0", False, False),
    ],
)
def test_corner_cases(path: str, denied_by_roles: bool, allowed_by_env: bool) -> None:
    deny = Policy(route_config(deny_paths=["/roles"]))
    allow = Policy(route_config(allow_paths=["/env"]))
    assert (decide(deny, path) == DENY) is denied_by_roles
    assert (decide(allow, path) is None) is allowed_by_env


@pytest.fixture
async def gateway(start_proxy: StartProxy, echo: EchoUpstream) -> str:
    proxy = await start_proxy(
        [
            {
                "name": "bap",
                "prefix": "/bap",
                "upstream": echo.url,
                "deny_paths": ["/roles", "/admin/**", "/**/delete*"],
            }
        ]
    )
    return proxy.url


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/bap/roles", 403),
        ("/bap/roles/", 403),
        ("/bap/roles.", 403),
        ("/bap/roles%20", 403),
        ("/bap/roles;x=1", 403),
        ("/bap/admin", 403),
        ("/bap/admin/", 403),
        ("/bap/admin/users", 403),
        ("/bap/deleteAll", 403),
        ("/bap/DeleteAuditData", 403),
        ("/bap/environments/x/delete", 403),
        ("/bap/environments", 200),
        ("/bap/administrators", 200),
        ("/bap/undelete", 200),
    ],
)
async def test_deny_rules_end_to_end(
    gateway: str, echo: EchoUpstream, client: aiohttp.ClientSession, path: str, status: int
) -> None:
    async with client.get(URL(gateway + path, encoded=True)) as resp:
        assert resp.status == status, path
        if status == 403:
            assert (await resp.json())["error"] == DENY
    assert len(echo.requests) == (1 if status == 200 else 0)


# --- method overrides -----------------------------------------------------------------------

OVERRIDES = ["X-HTTP-Method", "X-HTTP-Method-Override", "X-Method-Override"]
CI_KEY = "ppk_override-test-key"


@pytest.fixture
async def override_gateway(start_proxy: StartProxy, echo: EchoUpstream) -> str:
    proxy = await start_proxy(
        [
            {"name": "plain", "prefix": "/plain", "upstream": echo.url},
            {
                "name": "odata",
                "prefix": "/odata",
                "upstream": echo.url,
                "allow_method_override": True,
                "methods": ["GET", "POST", "PATCH"],
                "deny_paths": ["/locked/**"],
            },
        ],
        access={
            "clients": [
                {
                    "name": "writer",
                    "key_sha256": hashlib.sha256(CI_KEY.encode()).hexdigest(),
                    "methods": ["GET", "POST", "DELETE"],
                }
            ]
        },
    )
    return proxy.url


@pytest.mark.parametrize("header", OVERRIDES)
async def test_override_refused_by_default(
    override_gateway: str, echo: EchoUpstream, client: aiohttp.ClientSession, header: str
) -> None:
    """A POST that an upstream would act on as a DELETE is never forwarded unasked."""
    headers = {"X-Api-Key": CI_KEY, header: "DELETE"}
    async with client.post(f"{override_gateway}/plain/x", data=b"{}", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "method_override_refused"
    assert echo.requests == []


@pytest.mark.parametrize(
    ("method", "override", "status", "error"),
    [
        ("POST", "GET", 200, None),  # both allowed: forwarded with its header
        ("POST", "patch", 403, "forbidden"),  # the client may not PATCH
        ("POST", "DELETE", 405, "method_not_allowed"),  # the route takes no DELETE
        ("PATCH", "GET", 403, "forbidden"),  # the request's own method is checked too
        ("POST", "TRACE", 400, "method_override_refused"),
        ("POST", "GET DELETE", 400, "method_override_refused"),
    ],
)
async def test_override_checked_when_allowed(
    override_gateway: str,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    method: str,
    override: str,
    status: int,
    error: str | None,
) -> None:
    headers = {"X-Api-Key": CI_KEY, "X-HTTP-Method": override}
    url = f"{override_gateway}/odata/accounts"
    async with client.request(method, url, data=b"{}", headers=headers) as resp:
        assert resp.status == status
        if error is not None:
            assert (await resp.json())["error"] == error
    if status == 200:
        sent = dict(echo.requests[-1].headers)
        assert sent["X-HTTP-Method"] == override
    else:
        assert echo.requests == []


async def test_conflicting_overrides_refused(
    override_gateway: str, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    headers = {"X-Api-Key": CI_KEY, "X-HTTP-Method": "GET", "X-Method-Override": "DELETE"}
    async with client.post(f"{override_gateway}/odata/x", data=b"{}", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "method_override_refused"
    assert echo.requests == []


async def test_override_refused_before_the_body_is_asked_for(override_gateway: str) -> None:
    """Expect: 100-continue gets the same verdict before any byte of the body is sent."""
    head = (
        f"POST /plain/x HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: {CI_KEY}\r\n"
        "X-HTTP-Method-Override: DELETE\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    host, port = override_gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400")


async def test_override_in_the_access_log(
    override_gateway: str, client: aiohttp.ClientSession, captured: io.StringIO
) -> None:
    headers = {"X-Api-Key": CI_KEY, "X-HTTP-Method": "get"}
    async with client.post(f"{override_gateway}/odata/x", data=b"{}", headers=headers) as resp:
        assert resp.status == 200
    (request,) = [e for e in events(captured) if e["event"] == "request"]
    assert (request["method"], request["method_override"]) == ("POST", "GET")
