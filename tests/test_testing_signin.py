"""The local identity provider's support for validating users' tokens: signing keys and
their rotation, minted user tokens, and the on-behalf-of grant."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import jwt
import pytest

from proxy.testing import IdentityProvider, LocalCA


async def _get_json(idp: IdentityProvider, ca: LocalCA, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{idp.authority_host}{path}", ssl=ca.client_context()) as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def _fetch_jwks(idp: IdentityProvider, ca: LocalCA) -> jwt.PyJWKSet:
    metadata = await _get_json(idp, ca, f"/{idp.tenant}/v2.0/.well-known/openid-configuration")
    path = metadata["jwks_uri"].removeprefix(idp.authority_host)
    return jwt.PyJWKSet.from_dict(await _get_json(idp, ca, path))


def _kid(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


# -- tenant, metadata and keys --


def test_the_tenant_is_a_guid_and_tokens_carry_it(idp: IdentityProvider) -> None:
    claims = idp.verify(idp.app_token("app", "https://service.powerapps.com//.default"))

    assert str(uuid.UUID(idp.tenant)) == idp.tenant == idp.tenant_id
    assert (claims["tid"], claims["iss"]) == (idp.tenant, f"https://sts.windows.net/{idp.tenant}/")


async def test_a_tenant_named_by_domain_puts_a_guid_in_tokens(ca: LocalCA) -> None:
    async with IdentityProvider(ca, tenant="contoso.onmicrosoft.com") as idp:
        claims = idp.verify(idp.app_token("app", "https://service.powerapps.com//.default"))

    assert claims["tid"] == idp.tenant_id == str(uuid.UUID(idp.tenant_id))
    assert idp.tenant_id != idp.tenant


async def test_metadata_names_the_v2_issuer_and_the_keys_endpoint(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    metadata = await _get_json(idp, ca, f"/{idp.tenant}/v2.0/.well-known/openid-configuration")

    assert metadata["issuer"] == f"{idp.authority_host}/{idp.tenant}/v2.0" == idp.issuer_v2
    assert metadata["jwks_uri"] == f"{idp.authority_host}/{idp.tenant}/discovery/v2.0/keys"


async def test_the_jwks_describes_each_key_and_verifies_issued_tokens(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    token = idp.app_token("app", "https://service.powerapps.com//.default")

    document = await _get_json(idp, ca, f"/{idp.tenant}/discovery/v2.0/keys")
    [key] = document["keys"]
    verified = jwt.decode(
        token, jwt.PyJWK(key).key, algorithms=["RS256"], options={"verify_aud": False}
    )

    assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")
    assert key["kid"] == key["x5t"] == _kid(token)
    assert key["e"] == "AQAB"
    assert verified["appid"] == "app"
    assert idp.jwks_requests == 1


@pytest.mark.parametrize("keep_old", [False, True])
async def test_rotation_signs_with_the_new_key_and_keeps_the_old_one_only_if_asked(
    idp: IdentityProvider, ca: LocalCA, keep_old: bool
) -> None:
    old_token = idp.app_token("app", "https://service.powerapps.com//.default")
    old_kid = _kid(old_token)

    new_kid = idp.rotate_signing_key(keep_old=keep_old)
    new_token = idp.app_token("app", "https://service.powerapps.com//.default")
    jwks = await _fetch_jwks(idp, ca)

    assert _kid(new_token) == new_kid != old_kid
    assert [k.key_id for k in jwks.keys] == ([new_kid, old_kid] if keep_old else [new_kid])
    assert idp.verify(new_token)["appid"] == "app"
    if keep_old:
        assert idp.verify(old_token)["appid"] == "app"
    else:
        with pytest.raises(jwt.InvalidSignatureError):
            idp.verify(old_token)
    assert idp.jwks_requests == 1


async def test_a_retired_key_leaves_the_jwks(idp: IdentityProvider, ca: LocalCA) -> None:
    old_kid = idp.public_jwk["kid"]
    new_kid = idp.rotate_signing_key(keep_old=True)

    idp.retire_signing_key(old_kid)

    assert [k.key_id for k in (await _fetch_jwks(idp, ca)).keys] == [new_kid]
    with pytest.raises(ValueError, match="current signing key"):
        idp.retire_signing_key(new_kid)


# -- users' tokens minted for tests --

GATEWAY_URI = "api://ppproxy"
GATEWAY_ID = "5d4a3c2b-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


@pytest.mark.parametrize(
    ("version", "audience", "issuer", "expected"),
    [
        (1, GATEWAY_URI, "https://sts.windows.net/{tid}/",
         {"ver": "1.0", "upn": "ann@contoso.test", "unique_name": "ann@contoso.test",
          "appid": "cli-app"}),
        (2, GATEWAY_ID, "{host}/{tid}/v2.0",
         {"ver": "2.0", "preferred_username": "ann@contoso.test", "azp": "cli-app"}),
    ],
)  # fmt: skip
async def test_user_tokens_look_like_entra_s_for_each_version(
    idp: IdentityProvider,
    ca: LocalCA,
    version: int,
    audience: str,
    issuer: str,
    expected: dict[str, str],
) -> None:
    oid = str(uuid.uuid4())
    token = idp.user_token(
        audience=audience, oid=oid, upn="ann@contoso.test", version=version,  # type: ignore[arg-type]
        client_id="cli-app",
    )  # fmt: skip
    jwks = await _fetch_jwks(idp, ca)
    header = jwt.get_unverified_header(token)

    claims = jwt.decode(
        token,
        jwks[header["kid"]].key,
        algorithms=["RS256"],
        audience=audience,
        issuer=issuer.format(tid=idp.tenant_id, host=idp.authority_host),
    )

    assert (header["alg"], header["typ"], header["kid"]) == ("RS256", "JWT", idp.public_jwk["kid"])
    assert claims.items() >= expected.items()
    assert (claims["oid"], claims["tid"], claims["idtyp"], claims["scp"]) == (
        oid, idp.tenant_id, "user", "user_impersonation",
    )  # fmt: skip
    assert claims["sub"] not in (oid, "")
    assert (claims["nbf"], claims["exp"]) == (claims["iat"], claims["iat"] + 3600)
    assert not claims.keys() & {"groups", "roles"}
    assert ("upn" in claims, "azp" in claims) == (version == 1, version == 2)


def test_user_tokens_carry_groups_roles_and_extra_claims(idp: IdentityProvider) -> None:
    token = idp.user_token(
        audience=GATEWAY_URI,
        groups=["g1", "g2"],
        roles=["Gateway.Admin"],
        scp="access_as_user",
        extra_claims={"wids": ["w"], "name": None},
    )

    claims = idp.verify(token)

    assert (claims["groups"], claims["roles"], claims["scp"]) == (
        ["g1", "g2"], ["Gateway.Admin"], "access_as_user",
    )  # fmt: skip
    assert claims["wids"] == ["w"]
    assert "name" not in claims


def test_a_user_s_default_oid_is_stable_per_upn(idp: IdentityProvider) -> None:
    first, again, other = (
        idp.verify(idp.user_token(audience=GATEWAY_URI, upn=u))["oid"]
        for u in ("ann@contoso.test", "ann@contoso.test", "bob@contoso.test")
    )

    assert first == again != other
    assert str(uuid.UUID(first)) == first


def test_user_token_times_follow_issued_at_not_before_and_lifetime(
    idp: IdentityProvider,
) -> None:
    past = idp.user_token(audience=GATEWAY_URI, issued_at=1_000_000, lifetime=60)
    early = idp.user_token(audience=GATEWAY_URI, not_before=4_000_000_000)

    claims = jwt.decode(past, options={"verify_signature": False})
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1_000_000, 1_000_000, 1_000_060)
    with pytest.raises(jwt.ExpiredSignatureError):
        idp.verify(past)
    with pytest.raises(jwt.ImmatureSignatureError):
        idp.verify(early)


def test_a_user_token_for_another_tenant_names_that_tenant(idp: IdentityProvider) -> None:
    other = str(uuid.uuid4())

    v1 = jwt.decode(
        idp.user_token(audience=GATEWAY_URI, tenant=other), options={"verify_signature": False}
    )
    v2 = jwt.decode(
        idp.user_token(audience=GATEWAY_ID, tenant=other, version=2),
        options={"verify_signature": False},
    )

    assert (v1["tid"], v1["iss"]) == (other, f"https://sts.windows.net/{other}/")
    assert (v2["tid"], v2["iss"]) == (other, f"{idp.authority_host}/{other}/v2.0")


async def test_an_unknown_key_signs_with_a_kid_the_jwks_lacks(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    token = idp.user_token(audience=GATEWAY_URI, unknown_key=True)
    kid = _kid(token)

    jwks = await _fetch_jwks(idp, ca)

    assert kid not in [k.key_id for k in jwks.keys]
    assert len(kid) == len(idp.public_jwk["kid"])
    with pytest.raises(jwt.InvalidSignatureError):
        idp.verify(token)


def test_a_user_token_can_be_signed_by_a_kept_old_key(idp: IdentityProvider) -> None:
    old_kid = idp.public_jwk["kid"]
    idp.rotate_signing_key(keep_old=True)

    token = idp.user_token(audience=GATEWAY_URI, kid=old_kid)

    assert _kid(token) == old_kid
    assert idp.verify(token)["aud"] == GATEWAY_URI
    with pytest.raises(KeyError):
        idp.user_token(audience=GATEWAY_URI, kid="not-a-kid")
