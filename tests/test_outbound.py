"""Every outbound call of every command goes through the same outbound settings: the proxy
(``outbound.proxy``), one TLS trust (the system's store, or ``outbound.ca_file``), and errors
that say what failed for which host. Commands run as real processes."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from urllib3 import exceptions as u3

from proxy import reach
from proxy.commands.register_app import DEVICE_CODE_CLIENT_ID
from proxy.testing import AdminApplications, ConnectProxy, EchoUpstream, IdentityProvider, LocalCA
from proxy.testing.ca import TEST_DOMAIN

from .conftest import CLIENT, SECRET, config_dict
from .processes import free_port, read_until, spawn, write_config

APP_ID = "11111111-2222-3333-4444-555555555555"
USER, PASSWORD = "admin@contoso.test", "admin-password"


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1].rstrip("/")


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await spawn(*args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _remote(url: str, name: str) -> str:
    """``url`` under a name the CONNECT proxy takes to 127.0.0.1 (the local CA's certificate
    covers it): loopback addresses never go through an outbound proxy, remote hosts do."""
    return url.replace("127.0.0.1", f"{name}.{TEST_DOMAIN}")


def _config(tmp_path: Path, idp: IdentityProvider, ca_file: Path | None, **outbound: Any) -> Path:
    routes = [{"name": "bap", "preset": "bap"}]
    raw = config_dict(idp, ca_file, routes, outbound=outbound)
    if "proxy" in outbound:  # through the proxy: the identity provider by a remote name
        raw["identities"]["default"]["authority_host"] = _remote(idp.authority_host, "login")
    return write_config(tmp_path, raw)


@pytest.fixture
async def tls_bap(ca: LocalCA) -> AsyncIterator[AdminApplications]:
    async with AdminApplications(ssl_context=ca.server_context()) as server:
        yield server


# -- item 1: one outbound proxy for every call of every command --


@pytest.mark.parametrize(
    "command",
    [["check"], ["token", "--route", "bap", "--output", "raw"]],
)
async def test_token_commands_go_through_outbound_proxy(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path, command: list[str]
) -> None:
    async with ConnectProxy() as corp:
        path = _config(tmp_path, idp, ca_file, proxy=corp.url)
        code, out, err = await _run(*command, "--config", str(path))
    assert code == 0, out + err
    assert {_port(t) for t in corp.tunnels} == {_port(idp.authority_host)}


async def test_register_app_device_code_and_bap_go_through_outbound_proxy(
    tmp_path: Path, idp: IdentityProvider, tls_bap: AdminApplications, ca_file: Path
) -> None:
    """The device code, its token and the BAP PUT all tunnel through outbound.proxy."""
    idp.public_clients.add(DEVICE_CODE_CLIENT_ID)
    idp.device_sign_in = USER
    async with ConnectProxy() as corp:
        path = _config(tmp_path, idp, ca_file, proxy=corp.url)
        code, _, err = await _run(
            "register-app", "--config", str(path), "--client-id", APP_ID,
            "--bap-url", _remote(tls_bap.url, "bap"),
        )  # fmt: skip
    assert code == 0, err
    assert tls_bap.applications == [APP_ID]
    assert {_port(t) for t in corp.tunnels} == {_port(idp.authority_host), _port(tls_bap.url)}
    devicecode = [r for r in idp.requests if r.grant_type.endswith("device_code")]
    assert devicecode, "the device code token request was made"


async def test_register_app_password_flow_and_user_realm_lookup_go_through_outbound_proxy(
    tmp_path: Path, ca: LocalCA, tls_bap: AdminApplications, ca_file: Path
) -> None:
    """MSAL's user-realm lookup (always port 443 of the authority's host) tunnels too: the
    proxy takes port 443 to the identity provider, so nothing here listens on 443."""
    idp = IdentityProvider(ca)
    idp.public_clients.add("public-client")
    idp.users[USER] = PASSWORD
    async with idp, ConnectProxy(ports={443: int(_port(idp.authority_host))}) as corp:
        raw = config_dict(idp, ca_file, [{"name": "bap", "preset": "bap"}],
                          outbound={"proxy": corp.url})  # fmt: skip
        raw["identities"]["default"] = {
            "tenant_id": idp.tenant, "client_id": "public-client", "username": USER,
            "password": "${PP_PASSWORD}", "authority_host": _remote(idp.authority_host, "login"),
        }  # fmt: skip
        path = write_config(tmp_path, raw)
        code, _, err = await _run(
            "register-app", "--config", str(path), "--client-id", APP_ID,
            "--bap-url", _remote(tls_bap.url, "bap"), env={"PP_PASSWORD": PASSWORD},
        )  # fmt: skip
    assert code == 0, err
    assert idp.realm_lookups == [USER]
    assert f"login.{TEST_DOMAIN}:443" in corp.tunnels
    assert tls_bap.applications == [APP_ID]
    assert PASSWORD not in err


# -- item 6: one TLS trust decision --


@pytest.mark.skipif(sys.platform != "linux", reason="SSL_CERT_FILE is OpenSSL's system store")
async def test_system_store_is_trusted_for_tokens_and_upstreams_alike(
    tmp_path: Path, idp: IdentityProvider, tls_echo: EchoUpstream, ca_file: Path
) -> None:
    """Without outbound.ca_file both clients use the system's store (here SSL_CERT_FILE, as a
    corporate CA installed system-wide would be): one token and one upstream call succeed."""
    port = free_port()
    routes = [{"name": "t", "prefix": "/t", "upstream": tls_echo.url}]
    path = write_config(tmp_path, config_dict(idp, None, routes, server={"port": port}))
    proc = await spawn(
        "serve", "--config", str(path), env={"SSL_CERT_FILE": str(ca_file), "SSL_CERT_DIR": ""}
    )
    assert proc.stderr is not None
    try:
        await read_until(proc.stderr, "server.listening")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/t/x") as resp,
        ):
            assert resp.status == 200, await resp.text()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 20)
    assert tls_echo.requests[-1].raw_path == "/x"


async def test_requests_ca_bundle_does_not_decide_trust_and_the_error_says_what_to_do(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    """REQUESTS_CA_BUNDLE trusting the local CA changes nothing: token requests trust what the
    upstreams trust. The failure names the host and points at outbound.ca_file."""
    path = _config(tmp_path, idp, None)
    system = {"SSL_CERT_FILE": "/nonexistent/none.pem"}
    bundle = LocalCA().write_ca_file(tmp_path / "other-ca.pem")  # not the identity provider's
    code, out, _ = await _run(
        "check", "--config", str(path), env={**system, "REQUESTS_CA_BUNDLE": str(bundle)}
    )
    assert code == 1
    host = idp.authority_host.removeprefix("https://")
    assert f"ERROR authority_unreachable: TLS handshake with {host} failed: certificate not" in (
        out
    )
    assert "set outbound.ca_file to its CA bundle" in out


async def test_ca_file_replaces_the_system_store(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path
) -> None:
    """outbound.ca_file wins over SSL_CERT_FILE and REQUESTS_CA_BUNDLE naming other CAs."""
    other = LocalCA().write_ca_file(tmp_path / "other.pem")
    path = _config(tmp_path, idp, ca_file)
    env = {"SSL_CERT_FILE": str(other), "REQUESTS_CA_BUNDLE": str(other)}
    code, out, err = await _run("check", "--config", str(path), env=env)
    assert code == 0, out + err


# -- item 7: errors that say what failed, for which host --


async def test_refused_identity_provider_is_named(tmp_path: Path, ca_file: Path) -> None:
    port = free_port()
    raw = {
        "identities": {
            "d": {
                "tenant_id": "t",
                "client_id": CLIENT,
                "client_secret": SECRET,
                "authority_host": f"https://127.0.0.1:{port}",
            }
        },
        "routes": [{"name": "bap", "preset": "bap"}],
        "outbound": {"ca_file": str(ca_file), "connect_timeout": 2},
    }
    code, out, _ = await _run("check", "--config", str(write_config(tmp_path, raw)))
    assert code == 1
    assert f"connection to 127.0.0.1:{port} refused: nothing listens there" in out
    assert "MaxRetryError" not in out


async def test_silent_identity_provider_is_a_timeout(tmp_path: Path, ca_file: Path) -> None:
    """A server that accepts and never answers: a timeout naming the host and the setting."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered; closed at the end

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    raw = {
        "identities": {
            "d": {
                "tenant_id": "t",
                "client_id": CLIENT,
                "client_secret": SECRET,
                "authority_host": f"https://127.0.0.1:{port}",
            }
        },
        "routes": [{"name": "bap", "preset": "bap"}],
        "outbound": {"ca_file": str(ca_file), "connect_timeout": 2, "read_timeout": 0.5},
    }
    try:
        code, out, _ = await _run("check", "--config", str(write_config(tmp_path, raw)))
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert code == 1
    assert f"127.0.0.1:{port} did not answer in time (outbound.read_timeout)" in out


def test_unresolvable_host_is_a_dns_error() -> None:
    """The chain requests raises for a name that does not resolve (built here: a test sends
    no DNS query)."""
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    resolving = u3.NameResolutionError("login.example.invalid", None, gai)  # type: ignore[arg-type]
    wrapped = u3.MaxRetryError(None, "/x", reason=resolving)  # type: ignore[arg-type]
    error = requests.ConnectionError(wrapped)
    text = reach.describe(error, "https://login.example.invalid/t/v2.0")
    assert text == "cannot resolve login.example.invalid (DNS): check the host name and the network"


async def test_check_prints_certificate_thumbprints(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path
) -> None:
    from cryptography.hazmat.primitives import hashes

    from proxy.testing import ClientCertificate

    cert = ClientCertificate()
    idp.certificates["cert-app"] = [cert.cert_pem]
    pem = cert.write_pem(tmp_path / "client.pem")
    raw = config_dict(idp, ca_file, [{"name": "bap", "preset": "bap"}])
    raw["identities"]["default"] = {"tenant_id": idp.tenant, "client_id": "cert-app",
                                    "certificate_path": str(pem),
                                    "authority_host": idp.authority_host}  # fmt: skip
    code, out, err = await _run("check", "--config", str(write_config(tmp_path, raw)))
    assert code == 0, out + err
    sha1 = cert.certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    sha256 = cert.certificate.fingerprint(hashes.SHA256()).hex().upper()
    row = next(line for line in out.splitlines() if line.startswith("default "))
    assert row.split()[1:3] == [sha1, sha256]


async def test_check_prints_the_portal_step_for_an_aadsts_code(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path
) -> None:
    description = (
        "AADSTS7000218: The request body must contain the following parameter: "
        "'client_assertion'.\r\nTrace ID: 0\r\nCorrelation ID: 1"
    )
    idp.fail_with("invalid_client", code=7000218, status=401, description=description)
    code, out, _ = await _run("check", "--config", str(_config(tmp_path, idp, ca_file)))
    assert code == 1
    assert "fix (default): a public client needs public client flows: app registration -> " in out
    assert "Allow public client flows = Yes" in out
    assert "\\r\\n" not in out
    assert "Trace ID" not in out


def test_token_errors_read_as_one_line() -> None:
    from proxy.tokens import TokenError

    e = TokenError("invalid_client", "AADSTS7000215: Invalid.\r\nTrace ID: x\r\nTimestamp: y")
    assert e.description == "AADSTS7000215: Invalid. Trace ID: x Timestamp: y"
    assert e.summary == "AADSTS7000215: Invalid."
    assert (e.hint or "").startswith("wrong client secret")
