"""A small HTTP CONNECT proxy on 127.0.0.1 that records the tunnels it opens (an outbound
proxy for tests), optionally sending a port elsewhere: ``ports={443: 8443}`` tunnels requests
for 127.0.0.1:443 to 127.0.0.1:8443. It tunnels only to loopback, whatever is asked; names
under ``ppproxy.test`` (which the local CA's server certificate covers) go to 127.0.0.1, the
way a corporate proxy reaches a real host, so a test can tell "went through the proxy to a
remote name" from "went direct to loopback"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from .ca import TEST_DOMAIN


class ConnectProxy:
    def __init__(self, *, ports: Mapping[int, int] | None = None) -> None:
        self.tunnels: list[str] = []  # the CONNECT targets, as asked
        self.requests: list[str] = []  # every request line it received, tunnels or not
        self._ports = dict(ports or {})
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            self.requests.append(line)
            method, target, _ = line.split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            if host.endswith("." + TEST_DOMAIN):  # as a corporate proxy reaches a real host
                host = "127.0.0.1"
            if host not in ("127.0.0.1", "localhost"):  # loopback only, whatever is asked
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            up_reader, up_writer = await asyncio.open_connection(
                host, self._ports.get(int(port), int(port))
            )
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()
