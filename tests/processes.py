"""Running ppproxy as a user does: a real `python -m proxy` process, its output, its config
file. Shared by the command-line, reload, shutdown, workers, guard and tap tests."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import config_dict

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
