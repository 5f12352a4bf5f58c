"""The command line, run as a user would: a real process, real signals."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy import __version__
from proxy.commands.check import check
from proxy.config import from_dict
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import SECRET, config_dict
from .processes import free_port, read_until, serve_echo, spawn, write_config


async def test_version() -> None:
    proc = await spawn("--version")
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().strip() == f"ppproxy {__version__}"


async def test_bad_config_fails_before_binding(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "bad.toml"
    path.write_text(
        f'[server]\nport = {port}\n[identities.a]\ntenant_id = "t"\nclient_id = 1\n'
        f'client_secret = "{SECRET}"\n[[routes]]\nname = "x"\nupstream = "http://example.com"\n'
    )
    proc = await spawn("serve", "--config", str(path))
    _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert "identities.a.client_id: must be a string" in text
    assert "routes[0].upstream: http:// only for a loopback host" in text
    assert "Traceback" not in text
    assert SECRET not in text


async def test_serve_logs_address_and_stops_on_sigterm(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    served = await serve_echo(tmp_path, idp, echo, ca_file)
    proc, port = served.proc, served.port
    assert f"http://127.0.0.1:{port}" in served.started
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/echo/hi") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["token_claims"]["appid"] == "test-client"
    if sys.platform == "win32":
        pytest.skip("SIGTERM is POSIX-only")
    proc.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert "server.stopping" in rest.decode()


@pytest.mark.parametrize(("event_loop", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_serve_runs_on_uvloop_when_installed(
    tmp_path: Path,
    idp: IdentityProvider,
    echo: EchoUpstream,
    ca_file: Path,
    event_loop: str,
    expected: str,
) -> None:
    """The test extra installs ppproxy[speed]: "auto" picks uvloop, "asyncio" opts out."""
    served = await serve_echo(tmp_path, idp, echo, ca_file, event_loop=event_loop)
    try:
        assert f'"event_loop":"{expected}"' in served.started
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{served.base}/echo/hi") as resp,
        ):
            assert resp.status == 200
    finally:
        served.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(served.proc.communicate(), 20)
    assert served.proc.returncode == 0


async def test_check_prints_table(idp: IdentityProvider, echo: EchoUpstream, ca_file: Path) -> None:
    routes = [
        {"name": "good", "prefix": "/good", "upstream": echo.url, "scope": "https://a/.default"},
        {"name": "also", "prefix": "/also", "upstream": echo.url, "scope": "bad-scope"},
    ]
    config = from_dict(config_dict(idp, ca_file, routes), {}, base_dir=Path.cwd())
    out = io.StringIO()
    assert await check(config, out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ROUTE", "UPSTREAM", "SCOPE", "IDENTITY", "TOKEN"]
    assert "ok, expires in 3600 s" in lines[1]
    assert "ERROR invalid_scope" in lines[2]
    out = io.StringIO()
    config = from_dict(config_dict(idp, ca_file, routes[:1]), {}, base_dir=Path.cwd())
    assert await check(config, out) == 0


async def test_check_exit_status_from_process(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path
) -> None:
    idp.fail_with("invalid_client")
    routes = [{"name": "x", "prefix": "/x", "upstream": "https://x.example"}]
    path = write_config(tmp_path, config_dict(idp, ca_file, routes))
    proc = await spawn("check", "--config", str(path))
    out, _ = await proc.communicate()
    assert proc.returncode == 1
    assert "ERROR invalid_client: AADSTS7000215" in out.decode()
    assert SECRET not in out.decode()


async def test_demo_shows_injected_token() -> None:
    """`ppproxy demo`, then the printed curl command, shows the token the upstream received."""
    port = free_port()
    proc = await spawn("demo", "--port", str(port))
    assert proc.stdout is not None
    text = await read_until(proc.stdout, r"curl -s '\S+'")
    url = re.search(r"curl -s '(\S+)'", text).group(1)  # type: ignore[union-attr]
    try:
        curl = await asyncio.create_subprocess_exec(
            "curl", "-s", url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await curl.communicate()
        import json

        body = json.loads(out)
        assert body["token_claims"]["appid"] == "demo-client"
        assert body["path"] == "/hello?name=world"
        auth = dict((k.lower(), v) for k, v in body["headers"])["authorization"]
        assert auth.startswith("Bearer ")
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
