"""Lifecycle shared by the local test servers: bind to loopback, start, close."""

from __future__ import annotations

import ipaddress
import ssl
from typing import Self

from aiohttp import web

# In-flight handlers get this long to finish on close() before they are cancelled;
# test servers should shut down promptly even with a slow request pending.
_SHUTDOWN_TIMEOUT = 0.5


def require_loopback(host: str) -> None:
    """Raise ValueError unless host is a loopback IP literal (127.0.0.0/8 or ::1)."""
    # A name such as "localhost" could resolve to both 127.0.0.1 and ::1 and bind
    # two sockets on different ephemeral ports, so only literals are accepted.
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a loopback IP address, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback IP address, not {host!r}")


class LocalServer:
    """An aiohttp server on a loopback address; subclasses provide the runner."""

    def __init__(self, *, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        require_loopback(host)
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._runner: web.BaseRunner | None = None
        self._bound_port: int | None = None

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        raise NotImplementedError

    async def start(self) -> None:
        """Bind and start serving; the port is chosen by the OS when 0."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        runner = self._make_runner(_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving; pending handlers are cancelled after a short grace period."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def go_down(self) -> None:
        """Simulate an outage: stop serving and drop every connection (clients get
        "connection refused"); state such as recorded requests is kept."""
        await self.close()

    async def come_up(self) -> None:
        """End an outage: serve again on the same port."""
        if self._bound_port is not None:
            self._port = self._bound_port
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """scheme://host:port of the running server."""
        if self._bound_port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._bound_port}"
