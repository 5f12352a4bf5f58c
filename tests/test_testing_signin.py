"""The local identity provider's support for validating users' tokens: signing keys and
their rotation, minted user tokens, and the on-behalf-of grant."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jwt
import msal  # type: ignore[import-untyped]  # msal ships no type information
import pytest
import requests

from proxy.testing import ClientCertificate, Federation, IdentityProvider, LocalCA, WorkloadIssuer

GATEWAY_URI = "api://ppproxy"
GATEWAY_ID = "5d4a3c2b-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
GATEWAY_SECRET = "gateway-secret"
POWERAPPS_SCOPE = "https://service.powerapps.com//.default"
OBO_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
async def idp(ca: LocalCA) -> AsyncIterator[IdentityProvider]:
    """A tenant where the gateway app (a confidential client) is known by its App ID URI."""
    async with IdentityProvider(
        ca, clients={GATEWAY_ID: GATEWAY_SECRET}, app_id_uris={GATEWAY_ID: [GATEWAY_URI]}
    ) as server:
        yield server


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
    version: Literal[1, 2],
    audience: str,
    issuer: str,
    expected: dict[str, str],
) -> None:
    oid = str(uuid.uuid4())
    token = idp.user_token(
        audience=audience, oid=oid, upn="ann@contoso.test", version=version, client_id="cli-app"
    )
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


# -- the on-behalf-of grant --


def _obo_form(assertion: str, scope: str = POWERAPPS_SCOPE, **overrides: str) -> dict[str, str]:
    form = {
        "grant_type": OBO_GRANT,
        "requested_token_use": "on_behalf_of",
        "assertion": assertion,
        "scope": f"{scope} openid profile offline_access",
        "client_id": GATEWAY_ID,
        "client_secret": GATEWAY_SECRET,
        **overrides,
    }
    return {k: v for k, v in form.items() if v}


async def _post_token(
    idp: IdentityProvider, ca: LocalCA, form: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{idp.authority}/oauth2/v2.0/token", data=form, ssl=ca.client_context())
        as response,
    ):  # fmt: skip
        return response.status, await response.json()


@pytest.mark.parametrize(("version", "audience"), [(1, GATEWAY_URI), (2, GATEWAY_ID)])
async def test_obo_trades_a_member_s_token_for_one_carrying_the_same_user(
    idp: IdentityProvider, ca: LocalCA, version: Literal[1, 2], audience: str
) -> None:
    oid = str(uuid.uuid4())
    user_token = idp.user_token(audience=audience, oid=oid, upn="ann@contoso.test", version=version)

    status, body = await _post_token(idp, ca, _obo_form(user_token))

    assert status == 200
    claims = idp.verify(body["access_token"])
    assert claims["aud"] == "https://service.powerapps.com/"
    assert (claims["oid"], claims["upn"], claims["tid"], claims["idtyp"], claims["scp"]) == (
        oid, "ann@contoso.test", idp.tenant_id, "user", "user_impersonation",
    )  # fmt: skip
    assert (claims["appid"], claims["azp"]) == (GATEWAY_ID, GATEWAY_ID)
    assert (body["expires_in"], body["scope"]) == (3600, POWERAPPS_SCOPE)
    [request] = idp.requests
    assert (request.grant_type, request.client_id, request.user_oid) == (OBO_GRANT, GATEWAY_ID, oid)
    assert request.form["assertion"] == "<redacted>"
    assert user_token not in repr(idp.requests)


async def test_obo_tokens_take_their_own_lifetime(idp: IdentityProvider, ca: LocalCA) -> None:
    idp.obo_token_lifetime = 5

    _, obo = await _post_token(idp, ca, _obo_form(idp.user_token(audience=GATEWAY_URI)))
    app = await _post_token(
        idp,
        ca,
        {"grant_type": "client_credentials", "client_id": GATEWAY_ID,
         "client_secret": GATEWAY_SECRET, "scope": POWERAPPS_SCOPE},
    )  # fmt: skip

    claims = idp.verify(obo["access_token"])
    assert obo["expires_in"] == 5
    assert claims["exp"] - claims["iat"] in (5, 6)
    assert app[1]["expires_in"] == 3600


def _member(idp: IdentityProvider, **kwargs: Any) -> str:
    return idp.user_token(audience=kwargs.pop("audience", GATEWAY_URI), **kwargs)


def _tampered(idp: IdentityProvider) -> str:
    """A member's token whose claims were changed after signing."""
    token = _member(idp)
    head, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False}) | {"oid": str(uuid.uuid4())}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{signature}"


def _signed_by_a_dropped_key(idp: IdentityProvider) -> str:
    token = _member(idp)
    idp.rotate_signing_key()
    return token


BAD_ASSERTIONS: dict[str, tuple[Callable[[IdentityProvider], str], int]] = {
    "expired": (lambda idp: _member(idp, issued_at=time.time() - 7200), 500133),
    "not yet valid": (lambda idp: _member(idp, not_before=time.time() + 3600), 500133),
    "no exp": (lambda idp: _member(idp, extra_claims={"exp": None}), 500133),
    "unknown key": (lambda idp: _member(idp, unknown_key=True), 50013),
    "dropped key": (_signed_by_a_dropped_key, 50013),
    "tampered": (_tampered, 50013),
    "another app's audience": (lambda idp: _member(idp, audience="api://other"), 500131),
    "another tenant": (lambda idp: _member(idp, tenant=str(uuid.uuid4())), 7000012),
    "another issuer": (lambda idp: _member(idp, extra_claims={"iss": "https://x/"}), 7000012),
    "not a JWT": (lambda idp: "not-a-jwt", 50027),
}


@pytest.mark.parametrize("case", BAD_ASSERTIONS)
async def test_obo_refuses_bad_assertions_as_entra_does(
    idp: IdentityProvider, ca: LocalCA, case: str
) -> None:
    make, code = BAD_ASSERTIONS[case]

    status, body = await _post_token(idp, ca, _obo_form(make(idp)))

    assert (status, body["error"], body["error_codes"]) == (400, "invalid_grant", [code])
    assert body["error_description"].startswith(f"AADSTS{code}: ")


async def test_obo_authenticates_the_client_first(idp: IdentityProvider, ca: LocalCA) -> None:
    expired = _member(idp, issued_at=time.time() - 7200)

    status, body = await _post_token(idp, ca, _obo_form(expired, client_secret="wrong"))

    assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [7000215])


def _certificate_client(idp: IdentityProvider) -> dict[str, str]:
    certificate = ClientCertificate()
    idp.certificates[GATEWAY_ID] = [certificate.cert_pem]
    now = int(time.time())
    claims = {"aud": f"{idp.authority}/oauth2/v2.0/token", "iss": GATEWAY_ID, "sub": GATEWAY_ID,
              "jti": "j", "iat": now, "exp": now + 600}  # fmt: skip
    headers = {"x5t": certificate.x5t}
    assertion = jwt.encode(claims, certificate.key_pem(), algorithm="RS256", headers=headers)
    return {"client_assertion_type": CLIENT_ASSERTION, "client_assertion": assertion}


def _federated_client(idp: IdentityProvider) -> dict[str, str]:
    issuer = WorkloadIssuer()
    idp.federations[GATEWAY_ID] = [Federation(issuer.issuer, "system:sa", issuer.public_key)]
    return {
        "client_assertion_type": CLIENT_ASSERTION,
        "client_assertion": issuer.token("system:sa"),
    }


@pytest.mark.parametrize("credential", [_certificate_client, _federated_client])
async def test_obo_accepts_the_client_s_certificate_or_federated_credential(
    idp: IdentityProvider, ca: LocalCA, credential: Callable[[IdentityProvider], dict[str, str]]
) -> None:
    form = _obo_form(idp.user_token(audience=GATEWAY_URI), client_secret="", **credential(idp))

    status, body = await _post_token(idp, ca, form)

    assert status == 200
    assert idp.verify(body["access_token"])["appid"] == GATEWAY_ID


async def test_consent_can_be_required_per_client_and_resource(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    user_token = idp.user_token(audience=GATEWAY_URI)
    idp.require_consent(GATEWAY_ID, "https://service.powerapps.com//user_impersonation")

    refused = await _post_token(idp, ca, _obo_form(user_token))
    other = await _post_token(
        idp, ca, _obo_form(user_token, "https://org.crm.dynamics.com/.default")
    )
    idp.grant_consent(GATEWAY_ID, POWERAPPS_SCOPE)
    granted = await _post_token(idp, ca, _obo_form(user_token))

    status, body = refused
    assert (status, body["error"], body["error_codes"]) == (400, "invalid_grant", [65001])
    assert body["suberror"] == "consent_required"
    assert body["error_description"].startswith(
        f"AADSTS65001: The user or administrator has not consented to use the application "
        f"with ID '{GATEWAY_ID}'"
    )
    assert (other[0], granted[0]) == (200, 200)


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    [
        ({"requested_token_use": ""}, "invalid_request", 900144),
        ({"assertion": ""}, "invalid_request", 900144),
        ({"scope": "https://service.powerapps.com//.default https://org.crm.dynamics.com/.default"},
         "invalid_scope", 28000),
        ({"scope": "openid profile"}, "invalid_scope", 70011),
    ],
)  # fmt: skip
async def test_obo_requests_missing_parts_get_entra_errors(
    idp: IdentityProvider, ca: LocalCA, overrides: dict[str, str], error: str, code: int
) -> None:
    form = {**_obo_form(idp.user_token(audience=GATEWAY_URI)), **overrides}

    status, body = await _post_token(idp, ca, {k: v for k, v in form.items() if v})

    assert (status, body["error"], body["error_codes"]) == (400, error, [code])


async def test_obo_exchanges_can_be_counted_per_user(idp: IdentityProvider, ca: LocalCA) -> None:
    ann, bob = str(uuid.uuid4()), str(uuid.uuid4())
    for oid in (ann, bob, ann):
        await _post_token(idp, ca, _obo_form(idp.user_token(audience=GATEWAY_URI, oid=oid)))

    assert len(idp.token_requests(grant_type=OBO_GRANT, user_oid=ann)) == 2
    assert len(idp.token_requests(POWERAPPS_SCOPE, client_id=GATEWAY_ID, user_oid=bob)) == 1


async def test_msal_acquires_a_token_on_behalf_of_a_member(
    idp: IdentityProvider, ca_file: Path
) -> None:
    oid = str(uuid.uuid4())
    user_token = idp.user_token(audience=GATEWAY_URI, oid=oid, upn="ann@contoso.test")

    def acquire() -> dict[str, Any]:
        with requests.Session() as http:
            http.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
            http.verify = str(ca_file)
            # Building the app already fetches the OIDC metadata, so it runs off the loop too.
            app = msal.ConfidentialClientApplication(
                GATEWAY_ID,
                client_credential=GATEWAY_SECRET,
                authority=f"{idp.authority_host}/{idp.tenant}",
                instance_discovery=False,
                http_client=http,
            )
            result: dict[str, Any] = app.acquire_token_on_behalf_of(user_token, [POWERAPPS_SCOPE])
            return result

    result = await asyncio.to_thread(acquire)

    assert "error" not in result, result.get("error_description")
    claims = idp.verify(result["access_token"])
    assert (claims["oid"], claims["upn"], claims["aud"]) == (
        oid, "ann@contoso.test", "https://service.powerapps.com/",
    )  # fmt: skip
    assert [r.user_oid for r in idp.token_requests(grant_type=OBO_GRANT)] == [oid]
