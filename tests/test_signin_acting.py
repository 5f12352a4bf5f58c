"""How the upstream sees a signed-in member: on-behalf-of tokens per member (act_as = "user"),
cached and refreshed, Entra's refusals; and Dataverse impersonation (CallerObjectId)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.commands.check import check
from proxy.config import from_dict
from proxy.identity import ConfidentialProvider
from proxy.identity.on_behalf_of import MemberTokens
from proxy.testing import EchoUpstream, IdentityProvider, LocalCA

from .conftest import CLIENT, SECRET, Proxy, StartProxy, config_dict
from .signin_helpers import ANN, BOB, CI_KEY, CLIENTS, GATEWAY_URI, OBO_GRANT, bearer, entra, routes


@pytest.fixture
async def idp(ca: LocalCA) -> AsyncIterator[IdentityProvider]:
    """The tenant, where the proxy's identity is the gateway app members get tokens for."""
    async with IdentityProvider(
        ca, clients={CLIENT: SECRET}, app_id_uris={CLIENT: [GATEWAY_URI]}
    ) as server:
        yield server


# Ann by her UPN, Bob by his object id: both may use the routes that act for them.
BOB_OID = str(uuid.uuid4())
ANN_OID = str(uuid.uuid4())
MEMBERS = [*CLIENTS, {"name": "bob", "users": [BOB_OID]}]


@pytest.fixture
async def gateway(start_proxy: StartProxy, echo: EchoUpstream, idp: IdentityProvider) -> Proxy:
    return await start_proxy(routes(echo), access={"entra": entra(idp), "clients": MEMBERS})


async def get(client: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with client.get(url, headers=headers) as response:
        return response.status, await response.json()


def ann(idp: IdentityProvider, **kwargs: Any) -> str:
    return idp.user_token(audience=GATEWAY_URI, upn=ANN, **kwargs)


def bob(idp: IdentityProvider, **kwargs: Any) -> str:
    return idp.user_token(audience=GATEWAY_URI, upn=BOB, oid=BOB_OID, **kwargs)


# -- act_as = "user" --


async def test_act_as_user_sends_the_upstream_a_token_for_the_member(
    gateway: Proxy, idp: IdentityProvider, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    oid = str(uuid.uuid4())
    token = ann(idp, oid=oid)

    status, body = await get(client, f"{gateway.url}/user/x", **bearer(token))

    assert status == 200
    claims = body["token_claims"]
    assert (claims["oid"], claims["upn"], claims["idtyp"], claims["appid"]) == (
        oid, ANN, "user", CLIENT,
    )  # fmt: skip
    assert claims["aud"] == echo.url  # the route's scope's resource
    [obo] = idp.token_requests(grant_type=OBO_GRANT)
    assert (obo.client_id, obo.user_oid, obo.scope) == (CLIENT, oid, f"{echo.url}/.default")


async def test_on_behalf_of_tokens_are_cached_per_member(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    first, again = ann(idp), ann(idp, scp="user_impersonation")  # two tokens, one member

    results = await asyncio.gather(
        *(get(client, f"{gateway.url}/user/x", **bearer(t)) for t in (first, first, again)),
        get(client, f"{gateway.url}/user/x", **bearer(bob(idp))),
    )

    assert [status for status, _ in results] == [200] * 4
    ann_oid = results[0][1]["token_claims"]["oid"]
    assert len(idp.token_requests(grant_type=OBO_GRANT, user_oid=ann_oid)) == 1
    assert len(idp.token_requests(grant_type=OBO_GRANT, user_oid=BOB_OID)) == 1
    assert results[3][1]["token_claims"]["oid"] == BOB_OID
    assert {body["token_claims"]["oid"] for _, body in results[:3]} == {ann_oid}


@pytest.mark.parametrize(("max_members", "requests"), [(1, 3), (2, 2)])
async def test_on_behalf_of_cache_is_bounded_least_recently_used_first_out(
    idp: IdentityProvider, ca_file: Path, echo: EchoUpstream, max_members: int, requests: int
) -> None:
    """Ann, Bob, then Ann again: with room for one member Ann's token was pushed out by Bob's
    and is asked for again; with room for two it is not."""
    config = from_dict(config_dict(idp, ca_file, routes(echo)[:1]), {}, base_dir=Path())
    provider = ConfidentialProvider(config.identities["default"], config.outbound)
    tokens = MemberTokens(provider, max_members=max_members)
    scope = f"{echo.url}/.default"
    try:
        for oid, assertion in ((ANN_OID, ann(idp, oid=ANN_OID)), (BOB_OID, bob(idp))):
            await tokens.token(oid, assertion, scope)
        await tokens.token(ANN_OID, ann(idp, oid=ANN_OID), scope)
    finally:
        await tokens.close()

    assert len(idp.token_requests(grant_type=OBO_GRANT)) == requests


async def test_on_behalf_of_tokens_are_refreshed_before_they_expire(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    """Refreshed in the background by the member's request that finds the token in its last
    half (at most 15 minutes): that request does not wait, and the next one gets the new one."""
    idp.obo_token_lifetime = 6
    token = ann(idp)
    url = f"{gateway.url}/user/x"

    _, fresh = await get(client, url, **bearer(token))
    await asyncio.sleep(3.3)  # past half of its life, well before its safety margin (0.6 s)
    _, served_while_refreshing = await get(client, url, **bearer(token))
    await asyncio.sleep(0.3)
    _, after = await get(client, url, **bearer(token))

    oid = fresh["token_claims"]["oid"]
    assert len(idp.token_requests(grant_type=OBO_GRANT, user_oid=oid)) == 2
    assert served_while_refreshing["token_claims"]["uti"] == fresh["token_claims"]["uti"]
    assert after["token_claims"]["uti"] != fresh["token_claims"]["uti"]
    assert after["token_claims"]["exp"] > fresh["token_claims"]["exp"]


async def test_an_upstream_401_gets_the_member_a_new_token_once(
    gateway: Proxy, idp: IdentityProvider, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    token = ann(idp)

    status, _ = await get(client, f"{gateway.url}/user/_echo/status/401", **bearer(token))

    assert status == 401
    assert len(idp.token_requests(grant_type=OBO_GRANT)) == 2
    sent = [v for r in echo.requests for k, v in r.headers if k.lower() == "authorization"]
    assert len(sent) == 2
    assert sent[0] != sent[1]


async def test_missing_consent_is_403_with_entra_s_code_and_what_to_do(
    gateway: Proxy, idp: IdentityProvider, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    idp.require_consent(CLIENT, f"{echo.url}/.default")

    status, body = await get(client, f"{gateway.url}/user/x", **bearer(ann(idp)))

    assert (status, body["error"], body["entra_error"]) == (
        403,
        "consent_required",
        "invalid_grant",
    )
    assert body["entra_error_codes"] == [65001]
    assert "AADSTS65001" in body["message"]
    assert "Grant admin consent" in body["message"]
    assert echo.requests == []


async def test_the_identity_s_own_failure_stays_503(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    idp.fail_with("invalid_client", code=7000215)

    status, body = await get(client, f"{gateway.url}/user/x", **bearer(ann(idp)))

    assert (status, body["error"], body["entra_error_codes"]) == (
        503, "token_unavailable", [7000215],
    )  # fmt: skip


async def test_a_refusal_for_this_member_is_403_on_behalf_of_refused(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession
) -> None:
    idp.fail_with("interaction_required", code=50076, status=400)

    status, body = await get(client, f"{gateway.url}/user/x", **bearer(ann(idp)))

    assert (status, body["error"], body["entra_error_codes"]) == (
        403, "on_behalf_of_refused", [50076],
    )  # fmt: skip
    assert "sign in again" in body["message"]


@pytest.mark.parametrize(
    ("fault", "then"),
    [
        ({"error": "interaction_required", "code": 50076, "status": 400, "retry_after": "30"}, 200),
        ({"error": "invalid_client", "code": 7000215, "retry_after": "30"}, 503),
    ],
    ids=["the member's fault", "the gateway's own fault"],
)
async def test_a_member_refused_by_entra_is_asked_for_again_with_a_new_token_only(
    gateway: Proxy, idp: IdentityProvider, client: aiohttp.ClientSession, fault: Any, then: int
) -> None:
    """After "sign in again" the member's new token is tried at once; the same token waits
    out the backoff, and so does everyone while the gateway's own credential is at fault."""
    url = f"{gateway.url}/user/x"
    first = ann(idp, oid=ANN_OID)
    idp.fail_with(**fault)
    status, _ = await get(client, url, **bearer(first))
    assert status in (403, 503)
    idp.clear_failure()

    same, _ = await get(client, url, **bearer(first))
    new, _ = await get(client, url, **bearer(ann(idp, oid=ANN_OID, scp="user_impersonation x")))

    assert (same, new) == (status, then)
    assert len(idp.token_requests(grant_type=OBO_GRANT)) == (2 if then == 200 else 1)


async def test_a_client_key_cannot_use_routes_that_act_for_a_member(
    gateway: Proxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    for path in ("/user/x", "/dv/x"):
        status, body = await get(client, f"{gateway.url}{path}", **{"X-Api-Key": CI_KEY})
        assert (status, body["error"]) == (403, "forbidden"), path
        assert "sign in with an Entra ID token" in body["message"]
    assert echo.requests == []


# -- impersonate = true --


async def test_impersonation_sends_the_service_token_naming_the_member(
    gateway: Proxy, idp: IdentityProvider, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    oid = str(uuid.uuid4())
    forged = {"CallerObjectId": str(uuid.uuid4()), "MSCRMCallerID": str(uuid.uuid4())}

    status, body = await get(client, f"{gateway.url}/dv/x", **bearer(ann(idp, oid=oid)), **forged)

    assert status == 200
    assert (body["token_claims"]["appid"], body["token_claims"]["idtyp"]) == (CLIENT, "app")
    sent = [(k.lower(), v) for k, v in echo.requests[-1].headers]
    assert [v for k, v in sent if k == "callerobjectid"] == [oid]
    assert not [v for k, v in sent if k == "mscrmcallerid"]
    assert idp.token_requests(grant_type=OBO_GRANT) == []


FORGED = {"CallerObjectId": "11111111-2222-3333-4444-555555555555", "MSCRMCallerID": "someone"}


async def test_a_sibling_service_route_of_an_impersonating_identity_drops_caller_headers(
    gateway: Proxy, idp: IdentityProvider, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """/other has act_as = "service" but the identity of the impersonate route /dv: a member
    or a key client must not name someone else through it (the privilege is the principal's)."""
    for credential in (bearer(ann(idp)), {"X-Api-Key": CI_KEY}):
        status, _ = await get(client, f"{gateway.url}/other/x", **credential, **FORGED)

        assert status == 200
        sent = {k.lower() for k, _ in echo.requests[-1].headers}
        assert not sent & {"callerobjectid", "mscrmcallerid"}, credential.keys()


async def test_an_identity_that_impersonates_nowhere_passes_caller_headers_through(
    start_proxy: StartProxy,
    idp: IdentityProvider,
    echo: EchoUpstream,
    client: aiohttp.ClientSession,
) -> None:
    """Unchanged from before sign-in: a route whose identity no impersonate route uses leaves
    the client's CallerObjectId to the upstream (see docs/security.md)."""
    other_identity = {"tenant_id": idp.tenant, "client_id": CLIENT, "client_secret": SECRET,
                      "authority_host": idp.authority_host}  # fmt: skip
    separate = [
        {**r, "identity": "plain" if r["name"] == "other" else "default"} for r in routes(echo)
    ]
    proxy = await start_proxy(
        separate,
        identities={"plain": other_identity},
        access={"entra": entra(idp), "clients": MEMBERS},
    )

    status, _ = await get(client, f"{proxy.url}/other/x", **bearer(ann(idp)), **FORGED)

    assert status == 200
    headers = echo.requests[-1].headers
    assert ("CallerObjectId", FORGED["CallerObjectId"]) in headers
    assert ("MSCRMCallerID", "someone") in headers


async def test_check_gets_no_service_token_for_routes_that_act_as_the_member(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    members = [{"name": "m", "roles": ["R"]}]
    raw = config_dict(
        idp, ca_file, routes(echo)[2:3], access={"entra": entra(idp), "clients": members}
    )
    out = io.StringIO()

    assert await check(from_dict(raw, {}, base_dir=Path()), out) == 0

    assert "per member (act_as = user)" in out.getvalue()
    assert idp.requests == []


async def test_a_members_throttling_holds_that_member_only(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    """On a route that acts as the member, Power Platform counts each member as a user of
    their own: one member's 429 starts a cool-down for that member, not for the others."""
    route = {"name": "as-user", "prefix": "/user", "upstream": echo.url, "act_as": "user",
             "max_throttle_wait": 1}  # fmt: skip
    members = [{"name": "ann", "users": [ANN]}, {"name": "bob", "users": [BOB_OID]}]
    gateway = await start_proxy([route], access={"entra": entra(idp), "clients": members})
    ann_token, bob_token = ann(idp), bob(idp)
    url = f"{gateway.url}/user/_echo/status/429?retry_after=30"
    async with client.get(url, headers=bearer(ann_token)) as resp:
        assert resp.status == 429  # longer than max_throttle_wait: passed on, cool-down begins
    status, _ = await get(client, f"{gateway.url}/user/x", **bearer(bob_token))
    assert status == 200
    status, body = await get(client, f"{gateway.url}/user/x", **bearer(ann_token))
    assert (status, body["error"]) == (429, "upstream_throttled")
