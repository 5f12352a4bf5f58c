"""HTTPS on the listeners: [server] tls_cert/tls_key, reloads, and tls = "local" (the local CA,
its files and `ppproxy ca`). Clients verify certificates: a trustme CA, or the local CA."""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import signal
import ssl
import stat
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from proxy import cli, localca
from proxy.app import RUNTIME
from proxy.commands import ca as ca_command
from proxy.commands.base import load_config
from proxy.config import ConfigError, from_dict
from proxy.testing import EchoUpstream, IdentityProvider, LocalCA

from .conftest import StartProxy, config_dict, events
from .processes import free_port, read_until, spawn, write_config
from .upstreams import upstream

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes and SIGHUP")


async def presented(
    port: int, context: ssl.SSLContext, *, name: str = "localhost", alpn: list[str] | None = None
) -> tuple[x509.Certificate, str | None]:
    """The certificate the listener on ``port`` presents to a client that checks it against
    ``name``, and the protocol ALPN chose."""
    if alpn:
        context.set_alpn_protocols(alpn)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name)
    try:
        tls = writer.get_extra_info("ssl_object")
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)), (
            tls.selected_alpn_protocol()
        )
    finally:
        writer.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def tls_files(ca: LocalCA, tmp_path: Path) -> dict[str, str]:
    cert, key = ca.write_server_files(tmp_path)
    return {"tls_cert": str(cert), "tls_key": str(key)}


# --- tls_cert / tls_key -----------------------------------------------------------------------


async def test_listener_serves_https_to_a_client_that_verifies(
    start_proxy: StartProxy, ca: LocalCA, tls_files: dict[str, str], client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(server=tls_files)
    assert proxy.url.startswith("https://127.0.0.1:")
    async with client.get(f"{proxy.url}/echo/x?y=1", ssl=ca.client_context()) as resp:
        assert resp.status == 200
        assert (await resp.json())["path"] == "/x?y=1"
    # A client that does not trust the test CA refuses the certificate: it really is TLS.
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await client.get(f"{proxy.url}/echo/x", ssl=ssl.create_default_context())


async def test_alpn_says_http_1_1(
    start_proxy: StartProxy, ca: LocalCA, tls_files: dict[str, str]
) -> None:
    """A client offering HTTP/2 first is told HTTP/1.1, the only protocol served."""
    proxy = await start_proxy(server=tls_files)
    _, protocol = await presented(port_of(proxy.url), ca.client_context(), alpn=["h2", "http/1.1"])
    assert protocol == "http/1.1"


async def test_route_ports_serve_https_and_links_say_https(
    start_proxy: StartProxy, ca: LocalCA, tls_files: dict[str, str], client: aiohttp.ClientSession
) -> None:
    """Every listener is HTTPS, and the links handed back send the client to https://."""
    bases: list[str] = []

    async def lro(request: web.Request) -> web.Response:
        base = next(b for b in bases if b.endswith(f":{request.url.port}"))
        return web.json_response(
            {}, status=202, headers={"Location": f"{base}/operations/1?api-version=1"}
        )

    own = free_port()
    async with upstream(lro) as first, upstream(lro) as second:
        bases += [first, second]
        proxy = await start_proxy(
            [
                {"name": "bap", "prefix": "/bap", "upstream": first},
                {"name": "own", "prefix": "/own", "upstream": second, "port": own},
            ],
            server=tls_files,
        )
        verify = ca.client_context()
        async with client.post(f"{proxy.url}/bap/environments", ssl=verify) as resp:
            assert resp.headers["Location"] == f"{proxy.url}/bap/operations/1?api-version=1"
        async with client.post(f"https://127.0.0.1:{own}/environments", ssl=verify) as resp:
            assert resp.status == 202
            location = resp.headers["Location"]
            assert location == f"https://127.0.0.1:{own}/operations/1?api-version=1"


@pytest.mark.parametrize(("days", "warned"), [(7, True), (60, False)])
async def test_a_certificate_close_to_its_end_is_warned_about(
    start_proxy: StartProxy,
    ca: LocalCA,
    tmp_path: Path,
    captured: io.StringIO,
    days: int,
    warned: bool,
) -> None:
    """Less than 14 days left: tls.certificate_expiring at load, with the end date."""
    end = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=days)
    cert, key = ca.write_server_files(tmp_path, not_after=end)
    await start_proxy(server={"tls_cert": str(cert), "tls_key": str(key)})
    expiring = [e for e in events(captured) if e["event"] == "tls.certificate_expiring"]
    assert len(expiring) == int(warned)
    if warned:
        assert expiring[0]["not_after"] == end.isoformat()
        assert expiring[0]["expired"] is False
        assert expiring[0]["level"] == "warning"


@pytest.mark.parametrize(("listener_tls", "proto"), [(True, "http"), (False, "https")])
async def test_x_forwarded_proto_alone_from_a_trusted_proxy_sets_the_scheme_of_links(
    start_proxy: StartProxy,
    ca: LocalCA,
    tls_files: dict[str, str],
    client: aiohttp.ClientSession,
    listener_tls: bool,
    proto: str,
) -> None:
    """Only X-Forwarded-Proto: the scheme is the proxy's word, over HTTPS or not; the host and
    port stay the client's Host."""

    async def lro(request: web.Request) -> web.Response:
        return web.json_response({}, status=202, headers={"Location": f"{base[0]}/operations/1"})

    base: list[str] = []
    async with upstream(lro) as url:
        base.append(url)
        proxy = await start_proxy(
            [{"name": "bap", "prefix": "/bap", "upstream": url}],
            server={**(tls_files if listener_tls else {}), "trusted_proxies": ["127.0.0.1"]},
        )
        assert proxy.url.startswith("https://" if listener_tls else "http://")
        port = port_of(proxy.url)
        async with client.post(
            f"{proxy.url}/bap/environments",
            headers={"X-Forwarded-Proto": proto, "Host": f"localhost:{port}"},
            ssl=ca.client_context() if listener_tls else True,
        ) as resp:
            assert resp.status == 202
            assert resp.headers["Location"] == f"{proto}://localhost:{port}/bap/operations/1"


async def test_plain_http_to_an_https_listener_is_logged_once_per_listener(
    start_proxy: StartProxy, tls_files: dict[str, str], captured: io.StringIO
) -> None:
    """tls.plain_http names the listener and says to use https://; more within 10 s (on the
    same listener) add nothing. The other listener reports its own. A TLS client is unharmed."""
    own = free_port()
    proxy = await start_proxy(
        [{"name": "own", "prefix": "/own", "upstream": "http://127.0.0.1:9", "port": own}],
        server=tls_files,
    )
    main = port_of(proxy.url)
    requests = [b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"DELETE /x HTTP/1.1\r\n\r\n"]
    for port in (main, main, own):
        for request in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
            writer.close()
    plain = [e for e in events(captured) if e["event"] == "tls.plain_http"]
    assert [e["listener"] for e in plain] == [proxy.url, f"https://127.0.0.1:{own}"]
    assert plain[0]["reason"] == "HTTP_REQUEST"
    assert plain[0]["level"] == "warning"
    assert f"listener {proxy.url}: it must use https://" in plain[0]["message"]


@pytest.mark.parametrize("form", ["tls_key_password", "tls_key_password_file"])
async def test_encrypted_key(
    start_proxy: StartProxy,
    ca: LocalCA,
    tmp_path: Path,
    client: aiohttp.ClientSession,
    form: str,
) -> None:
    cert, key = ca.write_server_files(tmp_path, password=b"k3y-pass")
    server = {"tls_cert": str(cert), "tls_key": str(key)}
    if form == "tls_key_password":
        server[form] = "${KEY_PASSWORD}"
    else:
        (tmp_path / "password").write_text("k3y-pass\n")
        server[form] = str(tmp_path / "password")
    proxy = await start_proxy(server=server, env={"KEY_PASSWORD": "k3y-pass"})
    async with client.get(f"{proxy.url}/echo/x", ssl=ca.client_context()) as resp:
        assert resp.status == 200


def tls_problems(server: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    raw = {
        "server": server,
        "identities": {"d": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
    }
    with pytest.raises(ConfigError) as info:
        from_dict(raw, env or {}, base_dir=tmp_path)
    return "\n".join(info.value.problems)


def test_tls_settings_are_checked_before_the_port_is_bound(ca: LocalCA, tmp_path: Path) -> None:
    """Every TLS mistake is named by key path, and no password is shown."""
    cert, key = ca.write_server_files(tmp_path, password=b"right-pass")
    other = tmp_path / "other"
    other.mkdir()
    other_cert, other_key = ca.write_server_files(other)
    cases = [
        ({"tls_cert": str(cert)}, "server.tls_key: is required with tls_cert"),
        ({"tls_key": str(key)}, "server.tls_cert: is required with tls_key"),
        ({"tls_cert": "nope.pem", "tls_key": str(key)}, "server.tls_cert: no such file"),
        ({"tls_cert": str(cert), "tls_key": str(key)}, "server.tls_key_password: "),
        (
            {"tls_cert": str(cert), "tls_key": str(key), "tls_key_password": "wrong-pass"},
            "server.tls_key_password: ",
        ),
        (
            {"tls_cert": str(other_cert), "tls_key": str(key), "tls_key_password": "right-pass"},
            "server.tls_key: ",
        ),
        ({"tls_cert": str(other_key), "tls_key": str(other_key)}, "holds no PEM certificate"),
        ({"tls": "on"}, 'server.tls: must be "local"'),
        (
            {"tls": "local", "tls_cert": str(cert)},
            'server.tls_cert: is not used with tls = "local"',
        ),
        ({"tls": "local"}, "server.state_dir: is needed"),
        ({"public_url": "https://gw.example/ppproxy"}, "server.public_url: must be an http"),
        ({"public_url": "ftp://gw.example"}, "server.public_url: must be an http"),
        ({"trusted_proxies": ["10.0.0.1/8"]}, "did you mean 10.0.0.0/8?"),
        ({"trusted_proxies": ["not-an-address"]}, "server.trusted_proxies[0]: must be an IP"),
    ]
    for server, expected in cases:
        found = tls_problems(server, tmp_path)
        assert expected in found, (server, found)
        assert "wrong-pass" not in found
        assert "right-pass" not in found


def test_default_state_dir_per_platform() -> None:
    from proxy.config.server import default_state_dir

    home = {"HOME": "/home/u"}
    assert default_state_dir(home, "linux") == Path("/home/u/.local/state/ppproxy")
    assert default_state_dir({**home, "XDG_STATE_HOME": "/s"}, "linux") == Path("/s/ppproxy")
    assert default_state_dir({**home, "XDG_STATE_HOME": "rel"}, "linux") == Path(
        "/home/u/.local/state/ppproxy"
    )
    assert default_state_dir(home, "darwin") == Path("/home/u/Library/Application Support/ppproxy")
    assert default_state_dir({"LOCALAPPDATA": "C:/Users/u/AppData/Local"}, "win32") == Path(
        "C:/Users/u/AppData/Local/ppproxy"
    )
    assert default_state_dir({}, "linux") is None


# --- reloading --------------------------------------------------------------------------------


async def test_reload_serves_the_new_certificate_to_new_connections(
    start_proxy: StartProxy, ca: LocalCA, tls_files: dict[str, str], client: aiohttp.ClientSession
) -> None:
    """Also from ECDSA to RSA, which load_cert_chain on the listening context would not do;
    connections already open go on."""
    proxy = await start_proxy(server=tls_files)
    port, verify = port_of(proxy.url), ca.client_context()
    before, _ = await presented(port, verify)
    assert isinstance(before.public_key(), ec.EllipticCurvePublicKey)
    async with client.get(f"{proxy.url}/echo/a", ssl=verify) as resp:  # keeps its connection
        assert resp.status == 200
    ca.write_server_files(Path(tls_files["tls_cert"]).parent, rsa=True)
    assert await proxy.app[RUNTIME].reload(proxy.config) == []
    after, protocol = await presented(port, verify, alpn=["h2", "http/1.1"])
    assert isinstance(after.public_key(), rsa.RSAPublicKey)
    assert after.serial_number != before.serial_number
    assert protocol == "http/1.1"  # the new context says HTTP/1.1 only, too
    async with client.get(f"{proxy.url}/echo/b", ssl=verify) as resp:
        assert resp.status == 200


async def test_reload_with_a_broken_certificate_keeps_the_old_one(
    start_proxy: StartProxy, ca: LocalCA, tls_files: dict[str, str]
) -> None:
    proxy = await start_proxy(server=tls_files)
    port, verify = port_of(proxy.url), ca.client_context()
    before, _ = await presented(port, verify)
    Path(tls_files["tls_key"]).write_text("not a key\n")  # noqa: ASYNC240  # a test's setup
    refused = await proxy.app[RUNTIME].reload(proxy.config)
    assert len(refused) == 1
    assert refused[0].startswith("server TLS: ")
    after, _ = await presented(port, verify)
    assert after.serial_number == before.serial_number


async def test_tls_cannot_be_turned_on_or_off_by_a_reload(
    start_proxy: StartProxy, tls_files: dict[str, str]
) -> None:
    proxy = await start_proxy(server=tls_files)
    plain = replace(proxy.config, server=replace(proxy.config.server, tls=None))
    refused = await proxy.app[RUNTIME].reload(plain)
    assert refused == [
        "TLS on or off (server.tls, server.tls_cert) changed: restart the proxy for that"
    ]


@POSIX
async def test_sighup_reloads_the_certificate(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca: LocalCA, ca_file: Path
) -> None:
    cert, key = ca.write_server_files(tmp_path)
    port = free_port()
    routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
    server = {"port": port, "tls_cert": str(cert), "tls_key": str(key)}
    config = write_config(tmp_path, config_dict(idp, ca_file, routes, server=server))
    proc = await spawn("serve", "--config", str(config))
    assert proc.stderr is not None
    try:
        started = await read_until(proc.stderr, "server.listening")
        assert f"https://127.0.0.1:{port}" in started
        before, _ = await presented(port, ca.client_context())
        ca.write_server_files(tmp_path, rsa=True)
        proc.send_signal(signal.SIGHUP)
        await read_until(proc.stderr, "config.reloaded")
        after, _ = await presented(port, ca.client_context())
        assert after.serial_number != before.serial_number
        assert isinstance(after.public_key(), rsa.RSAPublicKey)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0


# --- tls = "local" ----------------------------------------------------------------------------


def local_trust(folder: Path) -> ssl.SSLContext:
    """A client that trusts the local CA in ``folder`` and nothing else (strict checks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default for clients
    context.load_verify_locations(folder / localca.CA_CERT)
    return context


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@POSIX
async def test_local_tls_makes_a_ca_and_a_certificate_with_safe_modes(
    start_proxy: StartProxy, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    proxy = await start_proxy(server={"tls": "local", "state_dir": str(state)})
    folder = state / "tls"
    assert sorted(p.name for p in folder.iterdir()) == ["ca-key.pem", "ca.pem", "localhost.pem"]
    assert mode(folder) == 0o700
    assert {mode(p) for p in folder.iterdir()} == {0o600}
    trust = local_trust(folder)
    for name in ("localhost", "127.0.0.1"):
        leaf, _ = await presented(port_of(proxy.url), trust, name=name)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    async with client.get(f"{proxy.url}/echo/x", ssl=trust) as resp:
        assert resp.status == 200


def test_local_ca_is_reused_and_its_certificate_renewed_before_it_expires(tmp_path: Path) -> None:
    first = localca.ensure(tmp_path)
    assert (first.created_ca, first.issued) == (True, True)
    ca, pem = first.ca_cert.read_bytes(), first.server_pem.read_bytes()
    again = localca.ensure(tmp_path)
    assert (again.created_ca, again.issued) == (False, False)
    assert (first.ca_cert.read_bytes(), first.server_pem.read_bytes()) == (ca, pem)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=localca.SERVER_DAYS - 20)
    renewed = localca.ensure(tmp_path, now=later)
    assert (renewed.created_ca, renewed.issued) == (False, True)
    assert first.ca_cert.read_bytes() == ca
    assert first.server_pem.read_bytes() != pem


@POSIX
def test_local_ca_files_readable_by_others_are_tightened(tmp_path: Path) -> None:
    localca.ensure(tmp_path)
    (tmp_path / localca.CA_KEY).chmod(0o644)
    tmp_path.chmod(0o755)
    outcome = localca.ensure(tmp_path)
    assert set(outcome.modes_fixed) == {str(tmp_path), str(tmp_path / localca.CA_KEY)}
    assert (mode(tmp_path), mode(tmp_path / localca.CA_KEY)) == (0o700, 0o600)


def test_an_incomplete_local_ca_is_refused_not_replaced(tmp_path: Path) -> None:
    localca.ensure(tmp_path)
    (tmp_path / localca.CA_KEY).unlink()
    with pytest.raises(localca.LocalCAError, match="remove the folder"):
        localca.ensure(tmp_path)


async def test_local_ca_cannot_vouch_for_other_names(tmp_path: Path) -> None:
    """Name constraints: a certificate for another site, signed with the CA's own key, is
    refused by a client that trusts the CA."""
    localca.ensure(tmp_path)
    ca_cert = x509.load_pem_x509_certificate((tmp_path / localca.CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((tmp_path / localca.CA_KEY).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    evil = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "login.example.org")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("login.example.org")]), critical=False
        )
        .add_extension(  # otherwise right in every way a strict client checks
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = tmp_path / "evil.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + evil.public_bytes(serialization.Encoding.PEM)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"name constraint|permitted"):
            await presented(port, local_trust(tmp_path), name="login.example.org")
    finally:
        server.close()
        await server.wait_closed()


async def test_local_tls_reload_issues_a_missing_certificate_again(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = await start_proxy(server={"tls": "local", "state_dir": str(tmp_path)})
    folder, port = tmp_path / "tls", port_of(proxy.url)
    before, _ = await presented(port, local_trust(folder))
    (folder / localca.SERVER_PEM).unlink()
    assert await proxy.app[RUNTIME].reload(proxy.config) == []
    after, _ = await presented(port, local_trust(folder))  # the same CA
    assert after.serial_number != before.serial_number


@POSIX
async def test_serve_with_local_tls_says_how_to_trust_a_new_ca_once(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    """The first start makes the CA and prints how to trust it; SIGHUP re-reads the files;
    the next start reuses them and prints nothing about trust."""
    port = free_port()
    routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
    server = {"port": port, "tls": "local", "state_dir": "state"}
    config = write_config(tmp_path, config_dict(idp, ca_file, routes, server=server))
    folder = tmp_path / "state" / "tls"
    seen = []
    for _ in range(2):
        proc = await spawn("serve", "--config", str(config))
        assert proc.stderr is not None
        try:
            seen.append(await read_until(proc.stderr, "server.listening"))
            await presented(port, local_trust(folder))
            if len(seen) == 1:
                (folder / localca.SERVER_PEM).unlink()
                proc.send_signal(signal.SIGHUP)
                await read_until(proc.stderr, "config.reloaded")
                assert (folder / localca.SERVER_PEM).exists()
                await presented(port, local_trust(folder))
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0
    assert str(folder / "ca.pem") in seen[0]
    for words in ("update-ca-certificates", "security add-trusted-cert", "certutil -user"):
        assert words in seen[0]
    assert "update-ca-certificates" not in seen[1]
    assert {mode(p) for p in folder.iterdir()} == {0o600}


def test_ca_command_prints_the_path_the_instructions_and_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('[server]\nstate_dir = "s"\n')
    folder, env, args = tmp_path / "s" / "tls", {}, ["--config", str(config)]
    assert cli.main(["ca", "--path", *args], env) == 0
    assert capsys.readouterr().out == f"{folder / 'ca.pem'}\n"
    assert cli.main(["ca", *args], env) == 0
    text = capsys.readouterr().out
    thumbprint = localca.thumbprint(folder / "ca.pem")
    assert thumbprint in text
    assert "REQUESTS_CA_BUNDLE" in text
    assert "curl --cacert" in text
    assert cli.main(["ca", "--uninstall", *args], env) == 0
    text = capsys.readouterr().out
    assert f"certutil -user -delstore Root {thumbprint}" in text
    assert f"security delete-certificate -Z {thumbprint}" in text
    assert not folder.exists()
    assert cli.main(["ca", "--uninstall", *args], env) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_ca_command_reads_only_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rest of the file may be incomplete (no identity yet, unset variables)."""
    config = tmp_path / "proxy.toml"
    config.write_text('[server]\nstate_dir = "s"\n[identities.x]\nclient_secret = "${NOPE}"\n')
    assert cli.main(["ca", "--path", "--config", str(config)], {}) == 0
    assert capsys.readouterr().out == f"{tmp_path / 's' / 'tls' / 'ca.pem'}\n"


@POSIX
def test_a_literal_key_password_in_a_readable_file_gets_a_warning(
    ca: LocalCA, tmp_path: Path, captured: io.StringIO
) -> None:
    cert, key = ca.write_server_files(tmp_path, password=b"k3y-pass")
    path = tmp_path / "proxy.toml"
    identity = '[identities.d]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "${S}"\n'
    server = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    path.write_text(server + 'tls_key_password = "k3y-pass"\n' + identity)
    path.chmod(0o644)
    config = load_config(path, {"S": "s"})
    assert config.server.tls is not None
    assert config.server.tls.literal_secrets == ("server.tls_key_password",)
    [warning] = [e for e in events(captured) if e["event"] == "config.secrets_readable"]
    assert "server.tls_key_password" in warning["message"]
    assert "k3y-pass" not in captured.getvalue()
    path.write_text(server + 'tls_key_password = "${P}"\n' + identity)
    from_env = load_config(path, {"S": "s", "P": "k3y-pass"})
    assert from_env.server.tls is not None
    assert from_env.server.tls.literal_secrets == ()


def test_local_tls_on_a_non_loopback_address_warns(tmp_path: Path, captured: io.StringIO) -> None:
    """Clients elsewhere would not accept a certificate for localhost: say so at start."""
    raw = {
        "server": {"host": "0.0.0.0", "tls": "local", "state_dir": str(tmp_path)},  # noqa: S104
        "identities": {"d": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
    }
    err = io.StringIO()
    ca_command.prepare_serve(from_dict(raw, {}, base_dir=tmp_path), err)
    assert "ppproxy ca --uninstall" in err.getvalue()  # a new CA: how to trust it, and undo it
    assert "tls.local_not_for_remote" in [e["event"] for e in events(captured)]
