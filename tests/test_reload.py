"""SIGHUP reloads the configuration of a running `ppproxy serve` without dropping requests."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import config_dict
from .processes import free_port, read_until, serve_echo, write_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP is POSIX-only")


async def test_sighup_reloads_and_rejects_bad_config(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    served = await serve_echo(tmp_path, idp, echo, ca_file)
    proc, port, path, base = served.proc, served.port, served.config, served.base
    assert proc.stderr is not None
    routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/new/x") as resp:
            assert resp.status == 404
        slow = asyncio.ensure_future(session.get(f"{base}/echo/_echo/slow?seconds=2"))
        for _ in range(100):
            if echo.in_flight:
                break
            await asyncio.sleep(0.05)
        more = [*routes, {"name": "new", "prefix": "/new", "upstream": echo.url}]
        write_config(tmp_path, config_dict(idp, ca_file, more, server={"port": port}))
        proc.send_signal(signal.SIGHUP)
        await read_until(proc.stderr, "config.reloaded")
        async with session.get(f"{base}/new/x") as resp:
            assert resp.status == 200
        resp = await slow  # started before the reload, finished after it
        assert resp.status == 200
        resp.release()
        assert len(idp.requests) == 1  # the unchanged identity kept its token

        path.write_text(path.read_text().replace("[[routes]]", "[[routes]]\nbogus = 1", 1))
        proc.send_signal(signal.SIGHUP)
        seen = await read_until(proc.stderr, "config.reload_rejected")
        assert "routes[0].bogus: unknown key" in seen
        async with session.get(f"{base}/new/x") as resp:
            assert resp.status == 200  # the previous configuration serves on

        other = free_port()
        write_config(tmp_path, config_dict(idp, ca_file, more, server={"port": other}))
        proc.send_signal(signal.SIGHUP)
        seen = await read_until(proc.stderr, "config.reload_rejected")
        assert "restart the proxy" in seen
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
