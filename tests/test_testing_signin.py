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
