"""The local identity provider and echo upstream behave like the real services."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import jwt
import msal  # type: ignore[import-untyped]  # msal ships no type information
import pytest
import requests
from yarl import URL

from proxy.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    GZIP_BODY,
    EchoUpstream,
    IdentityProvider,
    LocalCA,
    pattern,
    pattern_sha256,
)

POWERAPPS_SCOPE = "https://service.powerapps.com//.default"


class _CAFileSession(requests.Session):
    """A requests session whose ``verify`` wins over REQUESTS_CA_BUNDLE in the environment."""

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: MutableMapping[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture
async def idp(ca: LocalCA) -> AsyncIterator[IdentityProvider]:
    async with IdentityProvider(ca) as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    async with EchoUpstream() as server:
        yield server


@pytest.fixture
def http(ca: LocalCA, tmp_path: Path) -> Iterator[requests.Session]:
    session = _CAFileSession()
    session.verify = str(ca.write_ca_file(tmp_path / "ca.pem"))
    with session:
        yield session


async def _msal_token(
    idp: IdentityProvider, http: requests.Session, secret: str = DEFAULT_CLIENT_SECRET
) -> dict[str, Any]:
    def acquire() -> dict[str, Any]:
        # Building the app already fetches the OIDC metadata, so it runs off the loop too.
        app = msal.ConfidentialClientApplication(
            DEFAULT_CLIENT_ID,
            client_credential=secret,
            authority=f"{idp.authority_host}/{idp.tenant}",
            instance_discovery=False,
            http_client=http,
        )
        result: dict[str, Any] = app.acquire_token_for_client([POWERAPPS_SCOPE])
        return result

    return await asyncio.to_thread(acquire)


async def _post_token(
    idp: IdentityProvider, ca: LocalCA, form: dict[str, str], **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    url = f"{idp.authority_host}/{idp.tenant}/oauth2/v2.0/token"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=form, ssl=ca.client_context(), **kwargs) as response,
    ):
        return response.status, await response.json()


def _form(**overrides: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "scope": POWERAPPS_SCOPE,
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v}


async def test_msal_gets_a_verifiable_token_for_the_powerapps_audience(
    idp: IdentityProvider, http: requests.Session
) -> None:
    result = await _msal_token(idp, http)

    claims = idp.verify(result["access_token"])
    assert claims["aud"] == "https://service.powerapps.com/"
    assert (claims["appid"], claims["tid"], claims["idtyp"]) == (
        DEFAULT_CLIENT_ID,
        idp.tenant,
        "app",
    )
    assert result["expires_in"] == 3600
    [request] = idp.token_requests(POWERAPPS_SCOPE)
    assert request.form["client_secret"] == "<redacted>"


async def test_metadata_is_served_for_any_tenant_name(idp: IdentityProvider, ca: LocalCA) -> None:
    url = f"{idp.authority_host}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=ca.client_context()) as response,
    ):
        metadata = await response.json()

    base = f"{idp.authority_host}/contoso.onmicrosoft.com"
    assert metadata["issuer"] == f"{base}/v2.0"
    assert metadata["token_endpoint"] == f"{base}/oauth2/v2.0/token"
    assert metadata["jwks_uri"] == f"{base}/discovery/v2.0/keys"


async def test_msal_with_a_wrong_secret_gets_invalid_client(
    idp: IdentityProvider, http: requests.Session
) -> None:
    result = await _msal_token(idp, http, secret="wrong")

    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret")
    assert result["error_codes"] == [7000215]
    assert len(idp.requests) == 1


@pytest.mark.parametrize(
    ("form", "status", "error", "code"),
    [
        (_form(client_id="nobody"), 400, "unauthorized_client", 700016),
        (_form(client_secret=""), 401, "invalid_client", 7000218),
        (_form(scope=""), 400, "invalid_scope", 70011),
        (
            _form(scope="https://service.powerapps.com/user_impersonation"),
            400,
            "invalid_scope",
            1002012,
        ),
        (_form(grant_type="password"), 400, "unsupported_grant_type", 70003),
    ],
)
async def test_invalid_token_requests_get_entra_errors(
    idp: IdentityProvider, ca: LocalCA, form: dict[str, str], status: int, error: str, code: int
) -> None:
    got_status, body = await _post_token(idp, ca, form)

    assert (got_status, body["error"], body["error_codes"]) == (status, error, [code])
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert f"\r\nTrace ID: {body['trace_id']}\r\n" in body["error_description"]
    assert len(idp.requests) == 1


async def test_fail_with_fails_the_given_number_of_requests(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    idp.fail_with("temporarily_unavailable", code=90033, status=503, times=1)

    failed = await _post_token(idp, ca, _form())
    succeeded = await _post_token(idp, ca, _form())

    assert (failed[0], failed[1]["error"], failed[1]["error_codes"]) == (
        503,
        "temporarily_unavailable",
        [90033],
    )
    assert succeeded[0] == 200
    assert len(idp.requests) == 2


async def test_basic_client_auth_is_accepted(ca: LocalCA) -> None:
    """RFC 6749 §2.3.1: form-urlencoded id and secret in an Authorization: Basic header."""
    secret = "s3cr:t+/ é"
    credentials = f"{quote_plus('app one')}:{quote_plus(secret)}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    async with IdentityProvider(ca, clients={"app one": secret}) as idp:
        status, body = await _post_token(
            idp, ca, _form(client_id="", client_secret=""), headers=headers
        )

    assert status == 200
    assert idp.verify(body["access_token"])["appid"] == "app one"


async def test_short_lifetimes_give_integer_expiry_and_distinct_tokens(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    idp.token_lifetime = 5

    _, first = await _post_token(idp, ca, _form())
    _, second = await _post_token(idp, ca, _form())

    assert first["expires_in"] == 5
    assert first["access_token"] != second["access_token"]


async def test_tokens_from_another_key_do_not_verify(idp: IdentityProvider, ca: LocalCA) -> None:
    async with IdentityProvider(ca) as other:
        _, body = await _post_token(other, ca, _form())

    with pytest.raises(jwt.InvalidSignatureError):
        idp.verify(body["access_token"])


async def test_echo_reports_the_raw_path_byte_for_byte(upstream: EchoUpstream) -> None:
    port = URL(upstream.url).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a%2Fb/../c?x=%20&y HTTP/1.1\r\nHost: h\r\nX-MiXed: 1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.startswith(b"Content-Length:"))[15:])
    echoed = json.loads(await reader.readexactly(length))
    writer.close()
    await writer.wait_closed()

    assert echoed["path"] == "/a%2Fb/../c?x=%20&y"
    assert echoed["headers"] == [["Host", "h"], ["X-MiXed", "1"]]
    assert upstream.requests[0].raw_path == "/a%2Fb/../c?x=%20&y"


@pytest.mark.parametrize("size", [0, 1, 65536, 3 * 65536 + 7])
async def test_echo_bytes_streams_the_pattern(upstream: EchoUpstream, size: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(URL(f"{upstream.url}/_echo/bytes/{size}", encoded=True)) as response,
    ):
        body = await response.read()

    assert response.content_length == size
    assert body == b"".join(pattern(size))
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)


async def test_echo_gzip_is_sent_unchanged(upstream: EchoUpstream) -> None:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"{upstream.url}/_echo/gzip") as response,
    ):
        body = await response.read()

    assert response.headers["Content-Encoding"] == "gzip"
    assert body == GZIP_BODY
    assert json.loads(gzip.decompress(body))["compressed"] is True


async def test_echo_counts_slow_handlers_cancelled_by_the_client(upstream: EchoUpstream) -> None:
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(f"{upstream.url}/_echo/slow?seconds=30")

    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.01)
    assert (upstream.cancelled, upstream.in_flight) == (1, 0)


# -- client assertions, checked the way Entra checks them --


def _assertion(idp: IdentityProvider, key_pem: bytes, x5t: str, **overrides: Any) -> dict[str, str]:
    import time as _time

    now = int(_time.time())
    claims = {
        "aud": f"{idp.authority_host}/{idp.tenant}/oauth2/v2.0/token",
        "iss": "cert-app",
        "sub": "cert-app",
        "jti": "j",
        "iat": now,
        "exp": now + 600,
        **overrides,
    }
    assertion = jwt.encode(claims, key_pem, algorithm="RS256", headers={"x5t": x5t})
    return {
        "grant_type": "client_credentials",
        "client_id": "cert-app",
        "scope": POWERAPPS_SCOPE,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


@pytest.mark.parametrize(
    ("overrides", "status", "error", "code"),
    [
        ({}, 200, None, None),
        ({"exp": 1000, "iat": 400}, 401, "invalid_client", 700024),
        ({"aud": "https://login.microsoftonline.com/x/oauth2/v2.0/token"}, 401, "invalid_client",
         700023),
        ({"iss": "other-app"}, 401, "invalid_client", 700021),
    ],
)  # fmt: skip
async def test_certificate_assertions_are_checked_like_entra(
    idp: IdentityProvider,
    ca: LocalCA,
    overrides: dict[str, Any],
    status: int,
    error: str | None,
    code: int | None,
) -> None:
    from proxy.testing.credentials import ClientCertificate

    cert = ClientCertificate()
    idp.certificates["cert-app"] = [cert.cert_pem]

    got, body = await _post_token(idp, ca, _assertion(idp, cert.key_pem(), cert.x5t, **overrides))

    assert got == status
    if error is None:
        assert idp.verify(body["access_token"])["appid"] == "cert-app"
    else:
        assert (body["error"], body["error_codes"]) == (error, [code])


async def test_assertion_signed_by_another_key_fails_signature_validation(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    from proxy.testing.credentials import ClientCertificate

    registered, other = ClientCertificate(), ClientCertificate()
    idp.certificates["cert-app"] = [registered.cert_pem]

    status, body = await _post_token(idp, ca, _assertion(idp, other.key_pem(), registered.x5t))

    assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [700027])
    assert "signature validation" in body["error_description"]


async def test_user_realm_lookup_answers_managed_for_known_domains(
    idp: IdentityProvider, ca: LocalCA
) -> None:
    idp.users["a@contoso.test"] = "pw"
    async with aiohttp.ClientSession() as session:
        known = await (
            await session.get(
                f"{idp.authority_host}/common/userrealm/b@contoso.test?api-version=1.0",
                ssl=ca.client_context(),
            )
        ).json()
        unknown = await (
            await session.get(
                f"{idp.authority_host}/common/userrealm/b@other.test?api-version=1.0",
                ssl=ca.client_context(),
            )
        ).json()

    assert (known["account_type"], unknown["account_type"]) == ("Managed", "Unknown")
    assert idp.realm_lookups == ["b@contoso.test", "b@other.test"]


async def test_managed_identity_endpoint_requires_its_header(idp: IdentityProvider) -> None:
    from proxy.testing.msi import ManagedIdentityEndpoint

    async with (
        ManagedIdentityEndpoint(idp) as msi,
        aiohttp.ClientSession() as session,
    ):
        params = {"api-version": "2019-08-01", "resource": "https://service.powerapps.com/"}
        async with session.get(msi.url, params=params) as refused:
            assert refused.status == 401
        headers = {"X-IDENTITY-HEADER": msi.header}
        async with session.get(msi.url, params=params, headers=headers) as response:
            body = await response.json()

    assert idp.verify(body["access_token"])["aud"] == "https://service.powerapps.com/"
    assert [r.header_ok for r in msi.requests] == [False, True]
