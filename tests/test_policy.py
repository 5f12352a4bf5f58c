"""Route policy that means what it says: the glob grammar, the forms a path is judged in, and
method overrides (issue 13, items 1 and 2)."""

from __future__ import annotations

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

from .conftest import StartProxy

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
