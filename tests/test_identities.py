"""Every identity kind gets a token from the local identity provider, and every wrong input
ends in a clear error naming the identity."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError, IdentityConfig, OutboundConfig, from_dict
from proxy.credential_files import literal_secret_warning
from proxy.identity import msal_provider
from proxy.presets import POWERAPPS_SCOPE
from proxy.testing import IdentityProvider, LocalCA
from proxy.testing._assertions import JWT_BEARER, Federation
from proxy.testing.credentials import ClientCertificate, WorkloadIssuer
from proxy.testing.msi import SYSTEM_ASSIGNED_CLIENT_ID, ManagedIdentityEndpoint
from proxy.tokens import TokenError

from .conftest import CLIENT, SECRET, StartProxy, events, idp_on_443

USER, PASSWORD = "admin@contoso.test", "correct horse battery staple"
PUBLIC_CLIENT = "public-client"


@pytest.fixture(scope="module")
def certificate() -> ClientCertificate:
    return ClientCertificate()


def identity(idp: IdentityProvider, ca_file: Path, **keys: Any) -> IdentityConfig:
    table = {"tenant_id": idp.tenant, "authority_host": idp.authority_host, **keys}
    config = from_dict(
        {
            "identities": {"x": {k: v for k, v in table.items() if v is not None}},
            "routes": [{"name": "r", "upstream": "https://example.com"}],
            "outbound": {"ca_file": str(ca_file)},
        },
        {},
        base_dir=ca_file.parent,
    )
    return config.identities["x"]


async def token(identity: IdentityConfig, ca_file: Path, scope: str = POWERAPPS_SCOPE) -> str:
    provider = msal_provider(identity, OutboundConfig(ca_file=ca_file))
    try:
        return (await provider.token(scope)).value
    finally:
        await provider.close()


async def refused(identity: IdentityConfig, ca_file: Path) -> TokenError:
    with pytest.raises(TokenError) as info:
        await token(identity, ca_file)
    return info.value


def config_errors(raw_identity: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(
            {
                "identities": {"x": raw_identity},
                "routes": [{"name": "r", "upstream": "https://e.x"}],
            },
            env or {},
            base_dir=Path.cwd(),
        )
    return list(info.value.problems)


# -- certificates --


@pytest.mark.parametrize(
    ("form", "password"), [("pem", None), ("pem", "pfx-pass"), ("pfx", None), ("pfx", "p@ss")]
)
async def test_certificate_gets_a_token(
    idp: IdentityProvider,
    ca_file: Path,
    certificate: ClientCertificate,
    tmp_path: Path,
    form: str,
    password: str | None,
) -> None:
    """PEM or PFX, encrypted or not: MSAL's signed assertion passes the provider's checks."""
    idp.certificates["cert-app"] = [certificate.cert_pem]
    write = certificate.write_pem if form == "pem" else certificate.write_pfx
    path = write(tmp_path / f"client.{form}", password)
    ident = identity(
        idp, ca_file, client_id="cert-app", certificate_path=str(path),
        certificate_password=password,
    )  # fmt: skip

    claims = idp.verify(await token(ident, ca_file))

    assert claims["appid"] == "cert-app"
    [request] = idp.requests
    assert request.form["client_assertion_type"] == JWT_BEARER
    assert "client_secret" not in request.form


async def test_certificate_chain_is_sent_for_subject_name_issuer(
    idp: IdentityProvider, ca_file: Path, certificate: ClientCertificate, tmp_path: Path
) -> None:
    """With only Subject Name/Issuer trust, the token needs send_certificate_chain (x5c)."""
    idp.trusted_subjects["sni-app"] = certificate.certificate.subject.rfc4514_string()
    path = certificate.write_pem(tmp_path / "client.pem")
    without = identity(idp, ca_file, client_id="sni-app", certificate_path=str(path))
    with_chain = identity(
        idp, ca_file, client_id="sni-app", certificate_path=str(path), send_certificate_chain=True
    )

    error = await refused(without, ca_file)
    claims = idp.verify(await token(with_chain, ca_file))

    assert (error.error, error.codes) == ("invalid_client", (700027,))
    assert claims["appid"] == "sni-app"


async def test_certificate_with_an_unregistered_key_is_refused(
    idp: IdentityProvider, ca_file: Path, certificate: ClientCertificate, tmp_path: Path
) -> None:
    idp.certificates["cert-app"] = [ClientCertificate().cert_pem]
    path = certificate.write_pem(tmp_path / "client.pem")

    error = await refused(
        identity(idp, ca_file, client_id="cert-app", certificate_path=str(path)), ca_file
    )

    assert (error.error, error.codes) == ("invalid_client", (700027,))
    assert "not registered on application" in error.description


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (None, "the private key is encrypted; give certificate_password"),
        ("wrong", "cannot read the private key (wrong certificate_password?)"),
    ],
)
def test_certificate_password_problems_are_config_errors(
    certificate: ClientCertificate, tmp_path: Path, password: str | None, message: str
) -> None:
    path = certificate.write_pem(tmp_path / "client.pem", "right")
    raw = {"tenant_id": "t", "client_id": "c", "certificate_path": str(path)}
    if password:
        raw["certificate_password"] = password

    [problem] = config_errors(raw)

    assert problem.startswith("identities.x.certificate_path: ")
    assert message in problem
    assert "right" not in problem


def test_wrong_pfx_password_is_a_config_error(
    certificate: ClientCertificate, tmp_path: Path
) -> None:
    path = certificate.write_pfx(tmp_path / "client.pfx", "right")
    raw = {"tenant_id": "t", "client_id": "c", "certificate_path": str(path)}

    [problem] = config_errors({**raw, "certificate_password": "wrong"})

    assert problem.startswith("identities.x.certificate_path: ")
    assert "wrong certificate_password" in problem


# -- client secret file --


async def test_client_secret_file_is_reread_for_every_token(
    idp: IdentityProvider, ca_file: Path, tmp_path: Path
) -> None:
    """Rotation on disk is picked up: first line only, trailing newline stripped."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("old-secret\n")
    ident = identity(idp, ca_file, client_id=CLIENT, client_secret_file=str(secret_file))
    provider = msal_provider(ident, OutboundConfig(ca_file=ca_file))
    try:
        with pytest.raises(TokenError) as info:
            await provider.token(POWERAPPS_SCOPE)
        secret_file.write_text(f"{SECRET}\nignored second line\n")
        claims = idp.verify((await provider.token(POWERAPPS_SCOPE)).value)
    finally:
        await provider.close()

    assert info.value.codes == (7000215,)
    assert claims["appid"] == CLIENT


# -- username and password --


@pytest.fixture
async def idp443(ca: LocalCA) -> AsyncIterator[IdentityProvider]:
    async with idp_on_443(ca, public_client=PUBLIC_CLIENT, users={USER: PASSWORD}) as server:
        yield server


async def test_username_password_gets_a_user_token(
    idp443: IdentityProvider, ca_file: Path, captured: io.StringIO
) -> None:
    ident = identity(idp443, ca_file, client_id=PUBLIC_CLIENT, username=USER, password=PASSWORD)

    claims = idp443.verify(await token(ident, ca_file))

    assert (claims["upn"], claims["idtyp"], claims["aud"]) == (
        USER,
        "user",
        "https://service.powerapps.com/",
    )
    assert idp443.realm_lookups == [USER]
    [request] = idp443.requests
    assert (request.grant_type, request.form["password"]) == ("password", "<redacted>")
    [warning] = [e for e in events(captured) if e["event"] == "identity.password_flow_deprecated"]
    assert warning["level"] == "warning"
    assert "multi-factor" in warning["message"]
    assert PASSWORD not in captured.getvalue()


async def test_password_file_is_reread_and_a_wrong_one_is_refused(
    idp443: IdentityProvider, ca_file: Path, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("not the password\n")
    ident = identity(
        idp443, ca_file, client_id=PUBLIC_CLIENT, username=USER, password_file=str(password_file)
    )
    provider = msal_provider(ident, OutboundConfig(ca_file=ca_file))
    try:
        with pytest.raises(TokenError) as info:
            await provider.token(POWERAPPS_SCOPE)
        password_file.write_text(PASSWORD + "\n")
        claims = idp443.verify((await provider.token(POWERAPPS_SCOPE)).value)
    finally:
        await provider.close()

    assert (info.value.error, info.value.codes) == ("invalid_grant", (50126,))
    assert claims["upn"] == USER


# -- managed identity --


@pytest.fixture
async def msi(
    idp: IdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ManagedIdentityEndpoint]:
    user_assigned = {("client_id", "uami-client"): "uami-client", ("object_id", "oid-1"): "uami-2"}
    async with ManagedIdentityEndpoint(idp, user_assigned=user_assigned) as endpoint:
        # MSAL's ManagedIdentityClient finds App Service's endpoint in the process environment.
        monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
        monkeypatch.setenv("IDENTITY_HEADER", endpoint.header)
        for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        yield endpoint


@pytest.mark.parametrize(
    ("managed", "client_id", "selector"),
    [
        ("system", SYSTEM_ASSIGNED_CLIENT_ID, None),
        ({"client_id": "uami-client"}, "uami-client", ("client_id", "uami-client")),
        ({"object_id": "oid-1"}, "uami-2", ("object_id", "oid-1")),
    ],
)
@pytest.mark.parametrize(
    ("scope", "resource"),
    [
        (POWERAPPS_SCOPE, "https://service.powerapps.com/"),
        ("https://api.powerplatform.com/.default", "https://api.powerplatform.com"),
    ],
)
async def test_managed_identity_gets_a_token_for_the_resource(
    msi: ManagedIdentityEndpoint,
    idp: IdentityProvider,
    ca_file: Path,
    managed: Any,
    client_id: str,
    selector: tuple[str, str] | None,
    scope: str,
    resource: str,
) -> None:
    """The scope becomes a resource by dropping "/.default" only: the double slash's first
    slash is part of the Power Apps resource ID."""
    ident = identity(idp, ca_file, managed_identity=managed)

    claims = idp.verify(await token(ident, ca_file, scope))

    assert (claims["appid"], claims["aud"]) == (client_id, resource)
    [request] = msi.requests
    assert (request.resource, request.selector, request.header_ok) == (resource, selector, True)


async def test_unknown_user_assigned_identity_is_a_clear_error(
    msi: ManagedIdentityEndpoint, idp: IdentityProvider, ca_file: Path
) -> None:
    error = await refused(identity(idp, ca_file, managed_identity={"client_id": "nope"}), ca_file)

    assert "No User Assigned" in error.description


# -- workload identity federation --


@pytest.fixture
def issuer() -> WorkloadIssuer:
    return WorkloadIssuer()


async def test_federated_token_file_is_reread_for_every_token(
    idp: IdentityProvider, ca_file: Path, issuer: WorkloadIssuer, tmp_path: Path
) -> None:
    """An expired token in the file is refused (AADSTS700024); the rotated one works."""
    subject = "system:serviceaccount:ns:ppproxy"
    idp.federations["wi-app"] = [Federation(issuer.issuer, subject, issuer.public_key)]
    token_file = issuer.write_token(
        tmp_path / "token", subject, issued_at=0, lifetime=60
    )  # expired in 1970
    ident = identity(idp, ca_file, client_id="wi-app", federated_token_file=str(token_file))
    provider = msal_provider(ident, OutboundConfig(ca_file=ca_file))
    try:
        with pytest.raises(TokenError) as info:
            await provider.token(POWERAPPS_SCOPE)
        issuer.write_token(token_file, subject)
        claims = idp.verify((await provider.token(POWERAPPS_SCOPE)).value)
    finally:
        await provider.close()

    assert (info.value.error, info.value.codes) == ("invalid_client", (700024,))
    assert claims["appid"] == "wi-app"
    assert [r.form["client_assertion_type"] for r in idp.requests] == [JWT_BEARER] * 2


async def test_federated_token_for_another_subject_is_refused(
    idp: IdentityProvider, ca_file: Path, issuer: WorkloadIssuer, tmp_path: Path
) -> None:
    idp.federations["wi-app"] = [Federation(issuer.issuer, "expected", issuer.public_key)]
    token_file = issuer.write_token(tmp_path / "token", "someone-else")

    error = await refused(
        identity(idp, ca_file, client_id="wi-app", federated_token_file=str(token_file)), ca_file
    )

    assert (error.error, error.codes) == ("invalid_request", (70021,))


async def test_vanished_federated_token_file_is_a_clear_error(
    idp: IdentityProvider, ca_file: Path, issuer: WorkloadIssuer, tmp_path: Path
) -> None:
    token_file = issuer.write_token(tmp_path / "token", "s")
    ident = identity(idp, ca_file, client_id="wi-app", federated_token_file=str(token_file))
    token_file.unlink()

    error = await refused(ident, ca_file)

    assert error.error == "invalid_credential"
    assert str(token_file) in error.description


# -- through the proxy --


async def test_proxy_forwards_with_a_certificate_token(
    start_proxy: StartProxy,
    idp: IdentityProvider,
    ca_file: Path,
    certificate: ClientCertificate,
    tmp_path: Path,
    client: aiohttp.ClientSession,
) -> None:
    from proxy.testing import EchoUpstream

    idp.certificates["cert-app"] = [certificate.cert_pem]
    path = certificate.write_pfx(tmp_path / "client.pfx", "pw")
    async with EchoUpstream() as upstream:
        proxy = await start_proxy(
            raw={
                "identities": {
                    "c": {
                        "tenant_id": idp.tenant,
                        "client_id": "cert-app",
                        "certificate_path": str(path),
                        "certificate_password": "${PFX_PASSWORD}",
                        "authority_host": idp.authority_host,
                    }
                },
                "routes": [{"name": "echo", "prefix": "/echo", "upstream": upstream.url}],
                "outbound": {"ca_file": str(ca_file)},
                "tokens": {"prefetch": False},
            },
            env={"PFX_PASSWORD": "pw"},
        )
        async with client.get(f"{proxy.url}/echo/hello") as response:
            assert response.status == 200
        [received] = upstream.requests
    bearer = dict(received.headers)["Authorization"].removeprefix("Bearer ")
    assert idp.verify(bearer)["appid"] == "cert-app"


# -- configuration --


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"tenant_id": "t", "client_id": "c"}, "identities.x: no credential"),
        (
            {
                "tenant_id": "t",
                "client_id": "c",
                "client_secret": "s",
                "managed_identity": "system",
            },
            "identities.x: give exactly one credential form, found: client secret and managed "
            "identity",
        ),
        (
            {"tenant_id": "t", "client_id": "c", "client_secret": "s", "client_secret_file": "f"},
            "identities.x: give client_secret or client_secret_file, not both",
        ),
        (
            {"tenant_id": "t", "client_id": "c", "username": "u"},
            "identities.x.password: is required",
        ),
        (
            {"tenant_id": "t", "client_id": "c", "password": "p"},
            "identities.x.username: is required",
        ),
        (
            {"tenant_id": "t", "client_id": "c", "client_secret": "s", "certificate_password": "p"},
            "identities.x.certificate_password: is only used with certificate_path",
        ),
        ({"client_id": "c", "client_secret": "s"}, "identities.x.tenant_id: is required"),
        ({"managed_identity": "user"}, "identities.x.managed_identity: "),
        (
            {"managed_identity": {"client_id": "a", "object_id": "b"}},
            "identities.x.managed_identity: ",
        ),
        (
            {"tenant_id": "t", "client_id": "c", "federated_token_file": "/no/such/file"},
            "identities.x.federated_token_file: no such file",
        ),
        (
            {"tenant_id": "t", "client_id": "c", "client_secret": "s", "cloud": "mars"},
            "identities.x.cloud: must be one of public, gcc, gcc-high, dod, china",
        ),
    ],
)
def test_credential_form_problems_name_the_identity(raw: dict[str, Any], expected: str) -> None:
    found = config_errors(raw)
    assert any(p.startswith(expected) for p in found), found


def test_managed_identity_needs_no_tenant_or_client() -> None:
    config = from_dict(
        {"identities": {"mi": {"managed_identity": {"resource_id": "/subscriptions/x"}}}},
        {},
        base_dir=Path.cwd(),
    )
    assert config.identities["mi"].managed_identity == ("resource_id", "/subscriptions/x")
    assert config.identities["mi"].kind == "managed_identity"


def test_missing_password_variable_is_named() -> None:
    raw = {"tenant_id": "t", "client_id": "c", "username": "u", "password": "${PW}"}
    assert config_errors(raw) == ["identities.x.password: environment variable PW is not set"]


def test_secrets_never_show_in_errors_or_reprs(tmp_path: Path) -> None:
    raw = {"tenant_id": "t", "client_id": "c", "username": "u", "password": 1234567}
    [problem] = config_errors(raw)
    assert problem == "identities.x.password: must be a string"
    config = from_dict(
        {
            "identities": {
                "a": {"tenant_id": "t", "client_id": "c", "username": "u", "password": "pw-hidden"},
                "b": {"tenant_id": "t", "client_id": "c", "client_secret": "secret-hidden"},
            },
            "routes": [{"name": "r", "upstream": "https://e.x", "identity": "a"}],
        },
        {},
        base_dir=tmp_path,
    )
    shown = (
        repr(config) + str(config) + repr(msal_provider(config.identities["a"], OutboundConfig()))
    )
    assert "pw-hidden" not in shown
    assert "secret-hidden" not in shown


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"AZURE_CLIENT_SECRET": "s", "AZURE_USERNAME": "u", "AZURE_PASSWORD": "p"},
         "client_secret"),
        ({"AZURE_CLIENT_CERTIFICATE_PATH": "CERT", "AZURE_USERNAME": "u", "AZURE_PASSWORD": "p"},
         "certificate"),
        ({"AZURE_USERNAME": "u", "AZURE_PASSWORD": "p", "AZURE_FEDERATED_TOKEN_FILE": "TOKEN"},
         "username_password"),
        ({"AZURE_USERNAME": "u", "AZURE_FEDERATED_TOKEN_FILE": "TOKEN"}, "workload_identity"),
    ],
)  # fmt: skip
def test_environment_chooses_the_kind_as_azure_identity_does(
    certificate: ClientCertificate, tmp_path: Path, env: dict[str, str], kind: str
) -> None:
    files = {
        "CERT": str(certificate.write_pem(tmp_path / "c.pem")),
        "TOKEN": str(WorkloadIssuer().write_token(tmp_path / "t", "s")),
    }
    env = {k: files.get(v, v) for k, v in env.items()}
    env.update(AZURE_TENANT_ID="t", AZURE_CLIENT_ID="c")

    identity = from_dict({}, env, base_dir=tmp_path).identities["default"]

    assert identity.kind == kind
    assert identity.literal_secrets == ()


def test_environment_username_defaults_to_organizations() -> None:
    env = {"AZURE_CLIENT_ID": "c", "AZURE_USERNAME": "u", "AZURE_PASSWORD": "p"}
    identity = from_dict({}, env, base_dir=Path.cwd()).identities["default"]
    assert (identity.kind, identity.tenant_id, identity.username) == (
        "username_password",
        "organizations",
        "u",
    )


def test_environment_certificate_options(certificate: ClientCertificate, tmp_path: Path) -> None:
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_CLIENT_CERTIFICATE_PATH": str(certificate.write_pfx(tmp_path / "c.pfx", "pw")),
        "AZURE_CLIENT_CERTIFICATE_PASSWORD": "pw",
        "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": "True",
    }
    identity = from_dict({}, env, base_dir=tmp_path).identities["default"]
    assert identity.send_certificate_chain
    assert identity.certificate_password is not None
    assert identity.certificate_password.reveal() == "pw"


def test_environment_missing_certificate_tenant_is_named(tmp_path: Path) -> None:
    env = {"AZURE_CLIENT_ID": "c", "AZURE_CLIENT_CERTIFICATE_PATH": "x.pem"}
    with pytest.raises(ConfigError) as info:
        from_dict({}, env, base_dir=tmp_path)
    assert list(info.value.problems) == [
        "identities: no [identities] table, and AZURE_TENANT_ID not set"
    ]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_literal_secret_in_a_readable_file_gets_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("")
    raw = {
        "identities": {
            "lit": {"tenant_id": "t", "client_id": "c", "client_secret": "hunter2-value"},
            "env": {"tenant_id": "t", "client_id": "c", "client_secret": "${S}"},
        },
        "routes": [{"name": "r", "upstream": "https://e.x", "identity": "env"}],
    }
    config = from_dict(raw, {"S": "from-env"}, base_dir=tmp_path)
    keys = [k for i in config.identities.values() for k in i.literal_secrets]

    path.chmod(0o644)
    readable = literal_secret_warning(path, keys)
    path.chmod(0o600)
    private = literal_secret_warning(path, keys)

    assert keys == ["identities.lit.client_secret"]
    assert readable is not None
    assert "identities.lit.client_secret" in readable
    assert "hunter2" not in readable
    assert private is None
