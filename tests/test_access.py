"""[access]: client keys for a team gateway, their grants, keygen and the audit trail."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.access import Presented, authenticate
from proxy.commands.keygen import keygen
from proxy.config import ConfigError, from_dict
from proxy.config.access import AccessClient, AccessConfig
from proxy.errors import Unauthenticated
from proxy.testing import EchoUpstream

from .conftest import StartProxy, events, raw_exchange
from .processes import free_port

CI_KEY = "ppk_ci-key-for-tests-0123456789abcdef"
OPS_KEY = "ppk_ops-key-for-tests-0123456789abcdef"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CLIENTS = [
    {"name": "ci", "key_sha256": sha(CI_KEY), "routes": ["echo"], "methods": ["GET", "HEAD"]},
    {"name": "ops", "key_sha256": sha(OPS_KEY).upper(), "admin": True},
]


def routes(echo: EchoUpstream) -> list[dict[str, Any]]:
    return [
        {"name": "echo", "prefix": "/echo", "upstream": echo.url},
        {"name": "other", "prefix": "/other", "upstream": echo.url},
    ]


@pytest.fixture
async def gateway(start_proxy: StartProxy, echo: EchoUpstream) -> str:
    proxy = await start_proxy(routes(echo), access={"clients": CLIENTS})
    return proxy.url


def basic(password: str, user: str = "anything") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- configuration ------------------------------------------------------------------------

_BASE: dict[str, Any] = {
    "identities": {"a": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
    "routes": [{"name": "echo", "upstream": "http://127.0.0.1:1"}],
}


def load_access(access: Any) -> Any:
    return from_dict({**_BASE, "access": access}, {}, base_dir=Path()).access


def test_access_parsed() -> None:
    access = load_access({"clients": [*CLIENTS[:1], {"name": "x", "key_sha256": sha("x")}]})
    ci, x = access.clients
    assert access.enabled
    assert (ci.name, ci.routes, ci.methods, ci.admin) == (
        "ci",
        frozenset({"echo"}),
        frozenset({"GET", "HEAD"}),
        False,
    )
    assert ci.key_sha256 == hashlib.sha256(CI_KEY.encode()).digest()
    assert (x.routes, x.methods) == (None, None)  # default: every route and method


def test_no_access_table_means_open() -> None:
    assert not from_dict(_BASE, {}, base_dir=Path()).access.enabled


def test_access_problems_listed_by_key_path() -> None:
    with pytest.raises(ConfigError) as e:
        load_access(
            {
                "clients": [
                    {"name": "a", "key_sha256": CI_KEY, "routes": ["nope"], "methods": ["G T"]},
                    {"name": "a", "key_sha256": sha("k"), "extra": 1, "methods": []},
                    {"name": "b", "key_sha256": sha("k"), "admin": "yes"},
                ],
                "other": 1,
            }
        )
    problems = e.value.problems
    expected = [
        "access.other: unknown key",
        "access.clients[0].key_sha256: must be 64 hex digits",
        "access.clients[0].routes: no route named 'nope'",
        "access.clients[0].methods: 'G T' is not an HTTP method",
        "access.clients[1].extra: unknown key",
        "access.clients[1].methods: must name at least one method",
        "access.clients[2].admin: must be true or false",
        "access.clients[2].key_sha256: the same key as access.clients[1]",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert CI_KEY not in str(e.value)  # a key pasted in place of its hash is not echoed


def test_empty_key_never_authenticates() -> None:
    """Not from the file (refused there), and not at run time either."""
    with pytest.raises(ConfigError, match="SHA-256 of an empty key"):
        load_access({"clients": [{"name": "e", "key_sha256": sha("")}]})
    empty = AccessConfig((AccessClient("e", hashlib.sha256(b"").digest()),))
    with pytest.raises(Unauthenticated):
        authenticate(empty, Presented("", "X-Api-Key"))


def test_client_repr_hides_digest() -> None:
    (client,) = load_access({"clients": CLIENTS[:1]}).clients
    assert sha(CI_KEY) not in repr(client)


# --- keygen ---------------------------------------------------------------------------------


def test_keygen_prints_key_and_its_sha256() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert keygen(out, err) == 0
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines()[:2])
    assert lines["key_sha256"] == sha(lines["key"])
    assert len(lines["key"]) >= 40
    out2 = io.StringIO()
    keygen(out2, io.StringIO())
    assert out2.getvalue() != out.getvalue()
    assert "[[access.clients]]" in err.getvalue()


def test_keygen_prints_a_block_that_pastes_into_the_configuration() -> None:
    """The printed [[access.clients]] block, pasted as it is, is a valid client."""
    out = io.StringIO()
    keygen(out, io.StringIO(), name="ci-pipeline")
    block = out.getvalue().split("\n\n", 1)[1]
    key = out.getvalue().splitlines()[0].removeprefix("key: ")
    (client,) = load_access(tomllib.loads(block)["access"]).clients
    assert client.name == "ci-pipeline"
    assert client.key_sha256 == hashlib.sha256(key.encode()).digest()


def test_keygen_output_loads_as_config() -> None:
    out = io.StringIO()
    keygen(out, io.StringIO())
    digest = out.getvalue().split("key_sha256: ")[1].split()[0]
    assert load_access({"clients": [{"name": "n", "key_sha256": digest}]}).enabled


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {"X-Api-Key": CI_KEY},
        {"Authorization": f"Bearer {CI_KEY}"},
        {"Authorization": f"bearer {CI_KEY}"},
        {"Authorization": basic(CI_KEY)},
        {"Authorization": basic(CI_KEY, user="")},
    ],
)
async def test_key_accepted_and_removed(
    gateway: str, echo: EchoUpstream, client: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    """Every accepted form works, and the key never reaches the upstream."""
    async with client.get(f"{gateway}/echo/x", headers=auth) as resp:
        assert resp.status == 200
        body = await resp.json()
    sent = echo.requests[-1].headers
    assert "x-api-key" not in [k.lower() for k, _ in sent]
    assert all(CI_KEY not in v for _, v in sent)
    assert CI_KEY not in json.dumps(body)
    assert all(CI_KEY not in v for v in resp.headers.values())
    assert body["token_claims"]["appid"] == "test-client"  # the route's token replaced the key


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"X-Api-Key": "wrong"},
        {"X-Api-Key": ""},
        {"X-Api-Key": CI_KEY + "x"},
        {"X-Api-Key": sha(CI_KEY)},  # the digest is not the key
        {"Authorization": f"Bearer {CI_KEY[:-1]}"},
        {"Authorization": basic("wrong")},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(CI_KEY.encode()).decode()},  # no colon
        {"Authorization": f"Digest {CI_KEY}"},
        {"X-Api-Key": "wrong", "Authorization": f"Bearer {CI_KEY}"},  # X-Api-Key decides
    ],
)
async def test_missing_or_wrong_key_is_401(
    gateway: str, echo: EchoUpstream, client: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    async with client.get(f"{gateway}/echo/x", headers=auth) as resp:
        assert resp.status == 401
        assert "Bearer" in resp.headers["WWW-Authenticate"]
        assert "Basic" in resp.headers["WWW-Authenticate"]
        assert (await resp.json())["error"] == "unauthenticated"
    assert echo.requests == []


async def test_unknown_path_needs_a_key_too(gateway: str, client: aiohttp.ClientSession) -> None:
    """No route list for strangers: 401 comes before 404."""
    async with client.get(f"{gateway}/nothing-here") as resp:
        assert resp.status == 401
    async with client.get(f"{gateway}/nothing-here", headers={"X-Api-Key": OPS_KEY}) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("key", "method", "path", "status"),
    [
        (CI_KEY, "GET", "/echo/x", 200),
        (CI_KEY, "HEAD", "/echo/x", 200),
        (CI_KEY, "POST", "/echo/x", 403),  # method not granted
        (CI_KEY, "GET", "/other/x", 403),  # route not granted
        (OPS_KEY, "POST", "/other/x", 200),  # no routes/methods: everything
        (OPS_KEY, "DELETE", "/echo/x", 200),
    ],
)
async def test_client_grants(
    gateway: str,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    key: str,
    method: str,
    path: str,
    status: int,
) -> None:
    async with client.request(method, f"{gateway}{path}", headers={"X-Api-Key": key}) as resp:
        assert resp.status == status
        if status == 403:
            assert (await resp.json())["error"] == "forbidden"
    assert len(echo.requests) == (1 if status == 200 else 0)


async def test_host_checked_before_key(gateway: str, client: aiohttp.ClientSession) -> None:
    headers = {"X-Api-Key": CI_KEY, "Host": "evil.example"}
    async with client.get(f"{gateway}/echo/x", headers=headers) as resp:
        assert resp.status == 403


async def test_key_over_raw_http_with_keep_alive(gateway: str, echo: EchoUpstream) -> None:
    """The key is stripped on the request the client actually sent, not on a copy."""
    raw = (
        f"GET /echo/a HTTP/1.1\r\nHost: localhost\r\nx-api-key: {OPS_KEY}\r\n"
        f"X-API-KEY: {OPS_KEY}\r\nConnection: close\r\n\r\n"
    ).encode()
    response = await raw_exchange(gateway, raw)
    assert response.startswith(b"HTTP/1.1 200")
    assert all(OPS_KEY not in v for _, v in echo.requests[-1].headers)


# --- probes ---------------------------------------------------------------------------------


async def test_livez_needs_no_key(gateway: str, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{gateway}/_proxy/livez") as resp:
        assert resp.status == 200


async def test_readyz_details_only_with_a_key(gateway: str, client: aiohttp.ClientSession) -> None:
    """Probes get the status without a key; identities, scopes and errors need one."""
    async with client.get(f"{gateway}/_proxy/readyz") as resp:
        anonymous = await resp.json()
    assert resp.status == 200
    assert anonymous == {"status": "ready"}
    async with client.get(f"{gateway}/_proxy/readyz", headers={"X-Api-Key": CI_KEY}) as resp:
        assert "tokens" in await resp.json()
    async with client.get(f"{gateway}/_proxy/readyz", headers={"X-Api-Key": "wrong"}) as resp:
        assert resp.status == 401


async def test_readyz_details_without_access(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    async with client.get(f"{proxy.url}/_proxy/readyz") as resp:
        assert "tokens" in await resp.json()


# --- audit trail ----------------------------------------------------------------------------


async def test_client_name_on_every_event_of_its_request(
    captured: io.StringIO, gateway: str, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{gateway}/echo/a?q=secret-query", headers={"X-Api-Key": CI_KEY}):
        pass
    async with client.post(f"{gateway}/echo/b", headers={"X-Api-Key": CI_KEY}):
        pass
    async with client.get(f"{gateway}/echo/c", headers={"X-Api-Key": "wrong-key-value"}):
        pass
    async with client.get(f"{gateway}/echo/d", headers={"X-Api-Key": OPS_KEY}):
        pass
    logged = events(captured)
    by_path = {e["path"]: e for e in logged if e["event"] in ("request", "request.rejected")}
    assert by_path["/echo/a"]["access_client"] == "ci"
    assert by_path["/echo/b"]["access_client"] == "ci"  # 403: still the client's
    assert by_path["/echo/b"]["error"] == "forbidden"
    assert "access_client" not in by_path["/echo/c"]  # 401: nobody, and not a stale binding
    assert by_path["/echo/d"]["access_client"] == "ops"
    text = captured.getvalue()
    for secret in (CI_KEY, OPS_KEY, "wrong-key-value", "secret-query"):
        assert secret not in text


async def test_route_own_port_uses_that_routes_grants_and_policy(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """On a route's own port every path goes to that route, whatever prefix it looks like."""
    port = free_port()
    own = {"name": "own", "prefix": "/own", "upstream": echo.url, "port": port}
    own["deny_paths"] = ["/secret"]
    await start_proxy([*routes(echo), own], access={"clients": CLIENTS})
    url = f"http://127.0.0.1:{port}"
    async with client.get(f"{url}/echo/x", headers={"X-Api-Key": CI_KEY}) as resp:
        assert resp.status == 403  # "ci" may use the echo route, not "own"
    async with client.get(f"{url}/secret", headers={"X-Api-Key": OPS_KEY}) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "path_not_allowed"
    async with client.get(f"{url}/echo/x", headers={"X-Api-Key": OPS_KEY}) as resp:
        assert resp.status == 200
    assert [r.raw_path for r in echo.requests] == ["/echo/x"]
