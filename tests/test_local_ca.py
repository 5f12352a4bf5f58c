"""The local CA's folder shared by processes (workers reloading on SIGHUP, `ppproxy ca` while
serving), reloads that never make a new CA, the CA's own expiry, and the trust commands'
quoting for each shell."""

from __future__ import annotations

import asyncio
import datetime
import io
import multiprocessing
import signal
import ssl
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from cryptography import x509

from proxy import cli, localca, workers
from proxy.app import RUNTIME
from proxy.commands import ca as ca_command
from proxy.localca_certs import CA_DAYS
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import StartProxy, events
from .processes import read_until, serve_echo

POSIX = pytest.mark.skipif(not workers.supported(), reason="flock and workers: POSIX")


def local_trust(folder: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=folder / localca.CA_CERT)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


async def presented(port: int, context: ssl.SSLContext) -> x509.Certificate:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


def _ensure_together(folder: str, barrier: Barrier, results: multiprocessing.Queue[bool]) -> None:
    barrier.wait()
    results.put(localca.ensure(Path(folder)).created_ca)


@POSIX
def test_processes_sharing_the_folder_make_one_ca_between_them(tmp_path: Path) -> None:
    """Four processes released at once on an empty folder: one makes the CA and the
    certificate, the others find them; the key and the certificate belong together."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    folder = tmp_path / "tls"
    processes = [
        context.Process(target=_ensure_together, args=(str(folder), barrier, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    created = sorted(results.get(timeout=5) for _ in processes)
    assert created == [False, False, False, True]
    again = localca.ensure(folder)  # "is not the key of" if two CAs had been mixed
    assert not again.created_ca
    assert not again.issued


async def test_a_reload_never_makes_a_new_ca(start_proxy: StartProxy, tmp_path: Path) -> None:
    """A CA removed while serving (`ppproxy ca --uninstall`): the reload is refused, saying to
    restart, and the old certificate serves on; clients were never told to trust a new CA."""
    proxy = await start_proxy(server={"tls": "local", "state_dir": str(tmp_path)})
    folder, port = tmp_path / "tls", int(proxy.url.rsplit(":", 1)[1])
    trust = local_trust(folder)
    before = await presented(port, trust)
    localca.remove(folder)
    refused = await proxy.app[RUNTIME].reload(proxy.config)
    assert len(refused) == 1
    assert "is gone: restart ppproxy to make a new one" in refused[0]
    assert not (folder / localca.CA_CERT).exists()
    assert (await presented(port, trust)).serial_number == before.serial_number


@POSIX
async def test_workers_reloading_together_serve_one_renewed_certificate(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    """server.workers = 2 with tls = "local": SIGHUP after the certificate went missing; both
    workers reload, one issues it, and every connection gets that one (the file's)."""
    served = await serve_echo(
        tmp_path,
        idp,
        echo,
        ca_file,
        listening="server.listening.*\n(.|\n)*server.listening",
        workers=2,
        tls="local",
        state_dir="state",
    )
    proc, port, folder = served.proc, served.port, tmp_path / "state" / "tls"
    assert proc.stderr is not None
    try:
        trust = local_trust(folder)
        (folder / localca.SERVER_PEM).unlink()
        proc.send_signal(signal.SIGHUP)
        reloaded = await read_until(proc.stderr, "config.reloaded(.|\n)*config.reloaded")
        assert reloaded.count("tls.local_certificate_issued") == 1
        on_disk = x509.load_pem_x509_certificate((folder / localca.SERVER_PEM).read_bytes())
        serials = {(await presented(port, trust)).serial_number for _ in range(40)}
        assert serials == {on_disk.serial_number}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


def _ca_expiring_in(folder: Path, days: int) -> None:
    """A local CA made so long ago that ``days`` are left of it."""
    made = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=CA_DAYS - days)
    localca.ensure(folder, now=made)


async def test_a_local_ca_close_to_its_end_is_warned_about_and_caps_the_certificate(
    start_proxy: StartProxy, tmp_path: Path, captured: io.StringIO
) -> None:
    """Under 30 days left: tls.local_ca_expiring says how to renew; the certificate issued now
    ends with the CA, not after it (clients would refuse the chain anyway)."""
    folder = tmp_path / "tls"
    _ca_expiring_in(folder, 10)
    await start_proxy(server={"tls": "local", "state_dir": str(tmp_path)})
    [warning] = [e for e in events(captured) if e["event"] == "tls.local_ca_expiring"]
    assert warning["level"] == "warning"
    assert "ppproxy ca --uninstall" in warning["message"]
    ca = x509.load_pem_x509_certificate((folder / localca.CA_CERT).read_bytes())
    leaf = x509.load_pem_x509_certificate((folder / localca.SERVER_PEM).read_bytes())
    assert warning["not_after"] == ca.not_valid_after_utc.isoformat()
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc


async def test_a_local_ca_with_time_left_is_not_warned_about(
    start_proxy: StartProxy, tmp_path: Path, captured: io.StringIO
) -> None:
    _ca_expiring_in(tmp_path / "tls", 45)
    await start_proxy(server={"tls": "local", "state_dir": str(tmp_path)})
    assert "tls.local_ca_expiring" not in [e["event"] for e in events(captured)]


def test_ca_command_says_when_the_ca_expires_soon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('[server]\nstate_dir = "s"\n')
    _ca_expiring_in(tmp_path / "s" / "tls", 10)
    assert cli.main(["ca", "--path", "--config", str(config)], {}) == 0
    err = capsys.readouterr().err
    assert "the local CA expires on" in err
    assert "ppproxy ca --uninstall" in err


def test_trust_commands_quote_a_path_with_a_space_for_each_shell(tmp_path: Path) -> None:
    """A Windows user name with a space lands in %LOCALAPPDATA%: cmd.exe takes double quotes,
    POSIX shells single ones."""
    folder = tmp_path / "Jane Doe" / "tls"
    localca.ensure(folder)
    path = folder / localca.CA_CERT
    text = ca_command.trust_instructions(path)
    assert f'certutil -user -addstore Root "{path}"' in text
    assert f"-k /Library/Keychains/System.keychain '{path}'" in text
    assert f"export REQUESTS_CA_BUNDLE='{path}'" in text
    assert f'"{path}"' not in text.replace(f'Root "{path}"', "")  # double quotes: Windows only
