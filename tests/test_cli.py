"""The command line, run as a user would: a real process, real signals."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from proxy import __version__, cli
from proxy.config import from_dict
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import SECRET, config_dict

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


async def read_until(stream: asyncio.StreamReader, pattern: str, wait: float = 20) -> str:
    seen = ""
    async with asyncio.timeout(wait):
        while not re.search(pattern, seen):
            line = await stream.readline()
            if not line:
                raise AssertionError(f"stream ended before {pattern!r}: {seen}")
            seen += line.decode()
    return seen


def write_config(tmp_path: Path, raw: dict[str, object]) -> Path:
    lines = []

    def emit(prefix: str, table: dict[str, object]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict | list)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml(v)}")
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(v, list):
                for item in v:
                    lines.append(f"[[{k}]]")
                    lines.extend(f"{ik} = {_toml(iv)}" for ik, iv in item.items())

    emit("", raw)
    path = tmp_path / "proxy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Served:
    """A `ppproxy serve` process with one route /echo to the echo upstream."""

    proc: asyncio.subprocess.Process
    port: int
    config: Path
    started: str  # what it logged until it listened

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def serve_echo(
    tmp_path: Path,
    idp: IdentityProvider,
    echo: EchoUpstream,
    ca_file: Path,
    *,
    listening: str = "server.listening",
    **server: object,
) -> Served:
    """Start `ppproxy serve` on a free port (``server`` adds [server] keys) and wait until
    its log matches ``listening``."""
    port = free_port()
    routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
    raw = config_dict(idp, ca_file, routes, server={"port": port, **server})
    path = write_config(tmp_path, raw)
    proc = await spawn("serve", "--config", str(path))
    assert proc.stderr is not None
    return Served(proc, port, path, await read_until(proc.stderr, listening))


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


async def test_check_prints_table(idp: IdentityProvider, echo: EchoUpstream, ca_file: Path) -> None:
    routes = [
        {"name": "good", "prefix": "/good", "upstream": echo.url, "scope": "https://a/.default"},
        {"name": "also", "prefix": "/also", "upstream": echo.url, "scope": "bad-scope"},
    ]
    config = from_dict(config_dict(idp, ca_file, routes), {}, base_dir=Path.cwd())
    out = io.StringIO()
    assert await cli.check(config, out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ROUTE", "UPSTREAM", "SCOPE", "IDENTITY", "TOKEN"]
    assert "ok, expires in 3600 s" in lines[1]
    assert "ERROR invalid_scope" in lines[2]
    out = io.StringIO()
    config = from_dict(config_dict(idp, ca_file, routes[:1]), {}, base_dir=Path.cwd())
    assert await cli.check(config, out) == 0


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
    text = await read_until(proc.stdout, r"curl -s \S+")
    url = re.search(r"curl -s (\S+)", text).group(1)  # type: ignore[union-attr]
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
