"""Team sign-in: members' Entra ID tokens are checked, matched to [[access.clients]] entries,
and never passed on; keys keep working beside them. Against the local identity provider."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from proxy.app import RUNTIME
from proxy.config import ConfigError, from_dict, loads
from proxy.testing import EchoUpstream, IdentityProvider, LocalCA

from .conftest import CLIENT, SECRET, Proxy, StartProxy, config_dict, events
from .signin_helpers import (
    ADMIN_ROLE,
    ANN,
    BOB,
    CI_KEY,
    CLIENTS,
    GATEWAY_URI,
    READERS,
    bearer,
    claims,
    entra,
    reshaped,
    routes,
    signature,
)
from .test_metrics import samples


@pytest.fixture
async def idp(ca: LocalCA) -> AsyncIterator[IdentityProvider]:
    """The tenant, where the proxy's identity is the gateway app members get tokens for."""
    async with IdentityProvider(
        ca, clients={CLIENT: SECRET}, app_id_uris={CLIENT: [GATEWAY_URI]}
    ) as server:
        yield server


@pytest.fixture
async def gateway(start_proxy: StartProxy, echo: EchoUpstream, idp: IdentityProvider) -> Proxy:
    return await start_proxy(
        routes(echo), access={"entra": entra(idp), "clients": CLIENTS}, tap={"enabled": True}
    )


def member(idp: IdentityProvider, **kwargs: Any) -> str:
    """A member's v1 token for the gateway app (the App ID URI as audience)."""
    return idp.user_token(audience=kwargs.pop("audience", GATEWAY_URI), **kwargs)


async def call(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    async with client.get(url, headers=headers) as response:
        return response.status, await response.json(), response.headers


# -- which tokens sign in --


@pytest.mark.parametrize(("version", "audience"), [(1, GATEWAY_URI), (2, CLIENT)])
async def test_v1_and_v2_tokens_sign_a_member_in(
    gateway: Proxy,
    idp: IdentityProvider,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    version: Literal[1, 2],
    audience: str,
) -> None:
    token = member(idp, audience=audience, version=version, groups=[READERS])

    status, body, _ = await call(client, f"{gateway.url}/echo/x", bearer(token))

    assert status == 200
    # The upstream got the route's identity's token, not the member's.
    assert (body["token_claims"]["appid"], body["token_claims"]["idtyp"]) == (CLIENT, "app")
    assert signature(token) not in json.dumps(echo.requests[-1].headers)


def _expired(idp: IdentityProvider) -> str:
    return member(idp, issued_at=time.time() - 3600 - 400, lifetime=3600)


NOT_UTF8 = b'{"a": "\xc3("}'


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


REFUSED: dict[str, tuple[Callable[[IdentityProvider], str], str]] = {
    "expired": (_expired, "the token has expired"),
    "not yet valid": (
        lambda idp: member(idp, not_before=time.time() + 900),
        "the token is not valid yet (nbf)",
    ),
    "another audience": (
        lambda idp: member(idp, audience="api://another-app"),
        "the token is for another audience",
    ),
    "another tenant": (
        lambda idp: member(idp, tenant=str(uuid.uuid4())),
        "the token is from another tenant",
    ),
    "another issuer": (
        lambda idp: member(idp, extra_claims={"iss": "https://sts.windows.net/evil/"}),
        "the token's issuer is not the tenant's",
    ),
    "unknown signing key": (
        lambda idp: member(idp, unknown_key=True),
        "the token is signed by an unknown key",
    ),
    "changed after signing": (
        lambda idp: reshaped(member(idp), oid=str(uuid.uuid4())),
        "the token's signature is not valid",
    ),
    "no signature algorithm": (
        lambda idp: reshaped(member(idp), header={"alg": "none", "typ": "JWT"}),
        "the token's signing algorithm is not RS256",
    ),
    "HMAC algorithm": (
        lambda idp: reshaped(member(idp), header={"alg": "HS256", "kid": idp.public_jwk["kid"]}),
        "the token's signing algorithm is not RS256",
    ),
    "no object id": (
        lambda idp: member(idp, extra_claims={"oid": None}),
        "the token names no object id (oid)",
    ),
    "not base64url": (lambda idp: "eyJ!.eyJ?.abc", "not a JWT"),
    # Hostile shapes (the nested one and the huge expiry once crashed the guard with a 500).
    "deeply nested": (lambda idp: f"{_b64(b'[' * 3000)}.e30.abc", "not a JWT"),
    "not UTF-8": (lambda idp: _b64(NOT_UTF8) + ".e30.abc", "not a JWT"),
    "a base64url part one character too long": (
        lambda idp: "eyJhbGciOiJSUzI1NiJ9a.e30.abc",
        "not a JWT",
    ),
    "an expiry too large for a float": (
        lambda idp: reshaped(member(idp), exp=10**400),
        "the token has no expiry (exp)",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_invalid_tokens_get_401_invalid_token_with_the_reason(
    gateway: Proxy,
    idp: IdentityProvider,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    case: str,
) -> None:
    make, reason = REFUSED[case]
    token = make(idp)

    status, body, headers = await call(client, f"{gateway.url}/echo/x", bearer(token))

    assert (status, body["error"], body["message"]) == (401, "invalid_token", reason)
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="ppproxy", error="invalid_token", error_description="{reason}"'
    )
    assert echo.requests == []


@pytest.mark.parametrize(("skew", "status"), [(300, 200), (0, 401)])
async def test_clock_skew_accepts_a_token_that_expired_moments_ago(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    skew: int,
    status: int,
) -> None:
    proxy = await start_proxy(
        routes(echo), access={"entra": entra(idp, clock_skew=skew), "clients": CLIENTS}
    )
    token = member(idp, groups=[READERS], issued_at=time.time() - 3660, lifetime=3600)

    got, _, _ = await call(client, f"{proxy.url}/echo/x", bearer(token))

    assert got == status


async def test_keys_keep_working_beside_sign_in(
    gateway: Proxy, client: aiohttp.ClientSession
) -> None:
    status, _, _ = await call(client, f"{gateway.url}/echo/x", {"X-Api-Key": CI_KEY})
    assert status == 200
    status, _, _ = await call(client, f"{gateway.url}/echo/x", bearer(CI_KEY))
    assert status == 200  # a key as a Bearer is still a key: it has no dots


async def test_without_a_credential_the_401_mentions_signing_in(
    gateway: Proxy, client: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(client, f"{gateway.url}/echo/x", {})

    assert (status, body["error"]) == (401, "unauthenticated")
    assert "Entra ID access token" in body["message"]


# -- grants --


async def test_a_valid_token_no_entry_matches_gets_403_naming_the_member(
    gateway: Proxy,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    captured: io.StringIO,
) -> None:
    token = member(idp, upn=BOB, groups=[str(uuid.uuid4())])

    status, body, _ = await call(client, f"{gateway.url}/echo/x", bearer(token))

    assert (status, body["error"]) == (403, "forbidden")
    assert BOB in body["message"]
    [rejected] = [e for e in events(captured) if e["event"] == "request.rejected"]
    assert (rejected["caller"], rejected["status"]) == (BOB, 403)


async def test_too_many_groups_says_to_grant_by_app_roles(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    overage = {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "x"}}}
    token = member(idp, upn=BOB, extra_claims=overage)

    status, body, _ = await call(client, f"{gateway.url}/echo/x", bearer(token))

    assert status == 403
    assert "grant by app roles" in body["message"]


GRANTS: dict[str, tuple[dict[str, Any], str, list[str], list[str]]] = {
    # token's membership, the entry it matches, routes allowed, routes refused
    "group": ({"groups": [READERS]}, "readers", ["/echo/x"], ["/other/x"]),
    "role": ({"roles": [ADMIN_ROLE]}, "admins", ["/echo/x", "/other/x"], []),
    "user by UPN": ({"upn": ANN}, "ann", ["/other/x"], ["/echo/x"]),
    "user by object id": ({"oid": "oid-of-carol"}, "carol", ["/echo/x"], ["/other/x"]),
    "first entry wins": ({"groups": [READERS], "roles": [ADMIN_ROLE]}, "readers", [], ["/other/x"]),
}


@pytest.mark.parametrize("case", GRANTS)
async def test_group_role_and_user_grants_are_limited_to_their_routes(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    captured: io.StringIO,
    case: str,
) -> None:
    membership, name, allowed, refused = GRANTS[case]
    carol = {"name": "carol", "users": ["OID-OF-CAROL"], "routes": ["echo"]}
    proxy = await start_proxy(
        routes(echo), access={"entra": entra(idp), "clients": [*CLIENTS, carol]}
    )
    token = member(idp, **{"upn": BOB, **membership})

    for path in allowed:
        assert (await call(client, f"{proxy.url}{path}", bearer(token)))[0] == 200, path
    for path in refused:
        status, body, _ = await call(client, f"{proxy.url}{path}", bearer(token))
        assert (status, body["error"]) == (403, "forbidden"), path
        assert f"client {name!r} may not use route" in body["message"]
    logged = [e for e in events(captured) if e["event"] in ("request", "request.rejected")]
    assert {(e["access_client"], e["caller"]) for e in logged} == {
        (name, membership.get("upn", BOB))
    }


async def test_a_grant_s_methods_hold_for_members(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    token = member(idp, groups=[READERS])

    async with client.post(f"{gateway.url}/echo/x", headers=bearer(token), data=b"x") as response:
        assert response.status == 403
        assert "may not send POST" in (await response.json())["message"]


async def test_the_tap_opens_to_signed_in_members_of_admin_entries_only(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    admin = member(idp, upn=BOB, roles=[ADMIN_ROLE])
    reader = member(idp, groups=[READERS])

    async with client.get(f"{gateway.url}/_proxy/tap/exchanges", headers=bearer(admin)) as ok:
        assert ok.status == 200
    async with client.get(f"{gateway.url}/_proxy/tap/exchanges", headers=bearer(reader)) as no:
        assert no.status == 403


# -- what is said about the member, and what never is --


async def test_the_log_and_the_tap_name_the_member_and_never_hold_their_token(
    gateway: Proxy,
    idp: IdentityProvider,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
    captured: io.StringIO,
) -> None:
    oid = str(uuid.uuid4())
    token = member(idp, upn=ANN, oid=oid)
    admin = member(idp, upn=BOB, roles=[ADMIN_ROLE])
    refused = member(idp, upn="eve@contoso.test", audience="api://other")

    for path in ("/other/x", "/user/x", "/dv/x"):
        assert (await call(client, f"{gateway.url}{path}?q=1", bearer(token)))[0] == 200
    assert (await call(client, f"{gateway.url}/other/x", bearer(refused)))[0] == 401
    async with client.get(f"{gateway.url}/_proxy/tap/exchanges", headers=bearer(admin)) as r:
        summaries = (await r.json())["exchanges"]
    records = []
    for item in summaries:
        url = f"{gateway.url}/_proxy/tap/exchanges/{item['id']}"
        async with client.get(url, headers=bearer(admin)) as r:
            records.append(await r.text())
    async with client.get(f"{gateway.url}/_proxy/tap.har", headers=bearer(admin)) as r:
        har = await r.text()

    served = [e for e in events(captured) if e["event"] == "request" and e.get("caller") == ANN]
    assert [(e["route"], e["access_client"]) for e in served] == [
        ("other", "ann"), ("as-user", "ann"), ("dataverse", "ann"),
    ]  # fmt: skip
    assert [(s["client"], s["caller"]) for s in summaries[:3]] == [("ann", ANN)] * 3
    everything = captured.getvalue() + "".join(records) + har
    for secret in (token, admin, refused):
        assert signature(secret) not in everything
    # Upstream, only the proxy's tokens: no header carries a member's token.
    assert all(signature(token) not in value for r in echo.requests for _, value in r.headers)


async def test_metrics_never_name_the_member(
    gateway: Proxy, idp: IdentityProvider, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    token = member(idp, upn=ANN)
    assert (await call(client, f"{gateway.url}/user/x", bearer(token)))[0] == 200

    async with client.get(f"{gateway.url}/_proxy/metrics", headers={"X-Api-Key": CI_KEY}) as r:
        metrics = await r.text()

    assert ANN not in metrics
    assert claims(token)["oid"] not in metrics
    # The member's on-behalf-of token was counted, under the identity and scope only.
    key = (("identity", "default"), ("result", "success"), ("scope", f"{echo.url}/.default"))
    assert samples(metrics)[("ppproxy_token_requests_total", key)] == 1


# -- the signing keys --


async def test_checked_tokens_are_remembered_and_keys_fetched_once(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    tokens = [member(idp, groups=[READERS], oid=str(uuid.uuid4())) for _ in range(3)]

    for token in [*tokens, *tokens]:
        assert (await call(client, f"{gateway.url}/echo/x", bearer(token)))[0] == 200

    assert idp.jwks_requests == 1


async def test_a_remembered_token_stays_valid_until_it_expires_even_after_a_key_change(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    token = member(idp, groups=[READERS])
    assert (await call(client, f"{gateway.url}/echo/x", bearer(token)))[0] == 200

    idp.rotate_signing_key()  # the key that signed it leaves the JWKS

    assert (await call(client, f"{gateway.url}/echo/x", bearer(token)))[0] == 200
    assert idp.jwks_requests == 1


async def test_keys_that_cannot_be_fetched_give_503_and_keys_still_work(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    nowhere = entra(idp, authority_host="https://127.0.0.1:9")
    proxy = await start_proxy(routes(echo), access={"entra": nowhere, "clients": CLIENTS})

    status, body, headers = await call(
        client, f"{proxy.url}/echo/x", bearer(member(idp, groups=[READERS]))
    )
    ready = await call(client, f"{proxy.url}/_proxy/readyz", {"X-Api-Key": CI_KEY})

    assert (status, body["error"], headers["Retry-After"]) == (503, "signin_unavailable", "5")
    assert (await call(client, f"{proxy.url}/echo/x", {"X-Api-Key": CI_KEY}))[0] == 200
    assert ready[0] == 503
    assert ready[1]["signin"]["ok"] is False
    assert "ClientConnectorError" in ready[1]["signin"]["last_error"]


async def test_readyz_shows_the_signing_keys(
    gateway: Proxy, client: aiohttp.ClientSession, idp: IdentityProvider
) -> None:
    status, body, _ = await call(client, f"{gateway.url}/_proxy/readyz", {"X-Api-Key": CI_KEY})

    assert status == 200
    assert (body["signin"]["ok"], body["signin"]["keys"], body["signin"]["tenant_id"]) == (
        True, 1, idp.tenant_id,
    )  # fmt: skip
    # Routes acting as the member need no service token of their own.
    assert {r for check in body["tokens"] for r in check["routes"]} == {
        "echo", "other", "dataverse",
    }  # fmt: skip


async def test_a_reload_keeps_the_keys_and_applies_new_grants_at_once(
    gateway: Proxy, idp: IdentityProvider, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    token = member(idp, groups=[READERS])
    assert (await call(client, f"{gateway.url}/echo/x", bearer(token)))[0] == 200
    readers_elsewhere = [{**CLIENTS[0], "routes": ["other"]}, *CLIENTS[1:]]
    raw = config_dict(
        idp, gateway.config.outbound.ca_file, routes(echo),
        access={"entra": entra(idp), "clients": readers_elsewhere}, tap={"enabled": True},
    )  # fmt: skip

    assert await gateway.app[RUNTIME].reload(from_dict(raw, {}, base_dir=Path())) == []

    assert (await call(client, f"{gateway.url}/echo/x", bearer(token)))[0] == 403
    assert (await call(client, f"{gateway.url}/other/x", bearer(token)))[0] == 200
    assert idp.jwks_requests == 1


# -- configuration --

_BASE: dict[str, Any] = {
    "identities": {
        "gw": {"tenant_id": "t", "client_id": "gw-app", "client_secret": "s"},
        "mi": {"managed_identity": "system"},
    },
    "routes": [{"name": "r", "upstream": "http://127.0.0.1:1", "identity": "gw"}],
}
TENANT = "69c6e46f-9c9f-4572-80fd-5051cce0e5ae"


def load(access: Any, routes: list[dict[str, Any]] | None = None) -> Any:
    raw = {**_BASE, "access": access}
    if routes is not None:
        raw["routes"] = routes
    return from_dict(raw, {}, base_dir=Path())


def test_entra_settings_are_read() -> None:
    config = load(
        {
            "entra": {"tenant_id": TENANT.upper(), "audience": "api://ppproxy", "cloud": "china"},
            "clients": [{"name": "m", "users": ["Ann@Contoso.test"], "roles": ["R"]}],
        }
    )
    entra_config, [m] = config.access.entra, config.access.clients

    assert entra_config.tenant_id == TENANT
    assert entra_config.audience == ("api://ppproxy",)
    assert entra_config.authority_host == "https://login.chinacloudapi.cn"
    assert entra_config.v1_issuer == f"https://sts.chinacloudapi.cn/{TENANT}/"
    assert entra_config.clock_skew == 300
    assert (m.key_sha256, m.users, m.roles) == (None, frozenset({"ann@contoso.test"}), {"R"})


def test_signin_problems_are_listed_by_key_path() -> None:
    with pytest.raises(ConfigError) as e:
        load(
            {
                "entra": {"tenant_id": "contoso.com", "clock_skew": -1, "extra": 1},
                "clients": [
                    {"name": "a"},
                    {"name": "b", "groups": []},
                    {"name": "c", "users": ["x"], "key_sha256": "nope"},
                ],
            },
            routes=[
                {"name": "a", "upstream": "http://127.0.0.1:1", "identity": "gw", "act_as": "me"},
                {"name": "b", "upstream": "http://127.0.0.1:1", "identity": "gw",
                 "act_as": "user", "impersonate": True},
                {"name": "c", "upstream": "http://127.0.0.1:1", "identity": "mi", "act_as": "user"},
            ],
        )  # fmt: skip
    expected = [
        'routes[0].act_as: must be "service" or "user", got \'me\'',
        'routes[1].impersonate: cannot go with act_as = "user"',
        "access.entra.extra: unknown key",
        "access.entra.tenant_id: is required: the tenant's ID, a GUID",
        "access.entra.audience: is required",
        "access.entra.clock_skew: must be between 0 and 3600 seconds",
        "access.clients[0].key_sha256: is required (ppproxy keygen), unless the entry matches",
        "access.clients[1].groups: must be a non-empty array",
        "access.clients[2].key_sha256: must be 64 hex digits",
        'routes[2].act_as: "user" needs a confidential client',
    ]
    for text in expected:
        assert any(p.startswith(text) for p in e.value.problems), (text, e.value.problems)


def test_a_member_route_s_identity_must_be_the_gateway_app() -> None:
    """On-behalf-of takes only tokens whose audience is the client asking."""
    entra_table = {"tenant_id": TENANT, "audience": ["api://ppproxy"]}
    user_route = {"name": "u", "upstream": "http://127.0.0.1:1", "identity": "gw", "act_as": "user"}
    clients = [{"name": "m", "roles": ["R"]}]

    with pytest.raises(ConfigError) as e:
        load({"entra": entra_table, "clients": clients}, routes=[user_route])
    load({"entra": {**entra_table, "audience": ["api://ppproxy", "gw-app"]}, "clients": clients},
         routes=[user_route])  # fmt: skip

    assert e.value.problems[0].startswith(
        'routes[0].act_as: "user" exchanges members\' tokens as identities.gw (client id gw-app)'
    )


def test_member_grants_and_member_routes_need_entra() -> None:
    with pytest.raises(ConfigError) as e:
        load(
            {"clients": [{"name": "a", "roles": ["R"]}]},
            routes=[
                {"name": "a", "upstream": "http://127.0.0.1:1", "identity": "gw", "act_as": "user"},
                {"name": "b", "upstream": "http://127.0.0.1:1", "identity": "gw",
                 "impersonate": True},
            ],
        )  # fmt: skip
    problems = e.value.problems
    assert (
        "access.clients[0].roles: needs [access.entra]: members sign in with Entra ID" in problems
    )
    assert any(p.startswith('routes[0].act_as: "user" needs [access.entra]') for p in problems)
    assert any(p.startswith("routes[1].impersonate: needs [access.entra]") for p in problems)


def test_entra_without_member_entries_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"access.entra: no .* entry has users, groups or roles"):
        load({"entra": {"tenant_id": TENANT, "audience": "api://x"}, "clients": []})


def test_the_readme_s_sign_in_example_loads() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Team sign-in with Entra ID", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]

    config = loads(example, {"PP_GATEWAY_SECRET": "s"})

    assert [c.name for c in config.access.clients] == ["makers", "gateway-admins", "ci-pipeline"]
    assert config.access.entra is not None
    assert config.routes[0].act_as == "user"
