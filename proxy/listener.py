"""Listening sockets with a ceiling: ``server.max_connections`` per process, and accept errors
logged once per interval.

aiohttp's ``TCPSite`` hands its socket to the event loop's own accept loop, which accepts as
long as the kernel has connections to give and cannot be paused. This site accepts with
``loop.sock_accept`` (public, and on every event loop: asyncio, uvloop, Windows' proactor) in
one task per socket, and waits while the process holds ``max_connections``: new connections
then wait in the kernel's backlog, as the issue asks, instead of being accepted and dropped.
An accept that fails for lack of descriptors or memory (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
``ENOMEM``) pauses accepting for a second and is logged at most once per ``_LOG_INTERVAL``
with a count, so a descriptor limit cannot turn into a log flood.

With TLS, the handshake is done before the protocol sees the connection and must end within
``server.header_timeout`` of the accept, like the head after it.

Every accepted socket gets a :class:`~proxy.connection.Connection` as its protocol, registered
with aiohttp's server like any other, so shutdown and draining work as they do for ``TCPSite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from yarl import URL

from .config import ServerConfig
from .connection import Connection, Ticket

log = structlog.get_logger("proxy")

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_DELAY = 1.0  # seconds without accepting after a resource error (asyncio's own choice)
_LOG_INTERVAL = 10.0  # seconds between two log lines about accept errors
_BATCH = 100  # connections accepted at most per wake-up, so that requests are served between


class Gate:
    """Connections open in this process against ``server.max_connections``, shared by every
    listener; and the throttled log of accept errors."""

    def __init__(self, max_connections: int) -> None:
        self.limit = max_connections
        self.open = 0
        self._room: asyncio.Event | None = None  # set while below the limit
        self._failures = 0  # accept errors since the last log line
        self._logged_at = -_LOG_INTERVAL

    def ticket(self, accepted_at: float) -> Ticket:
        self.open += 1
        return Ticket(self._released, accepted_at)

    def _released(self) -> None:
        self.open -= 1
        if self._room is not None and self.open < self.limit:
            self._room.set()

    async def room(self) -> None:
        """Return once this process may hold one more connection."""
        while self.open >= self.limit:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def accept_failed(self, error: OSError) -> None:
        self._failures += 1
        now = time.monotonic()
        if now - self._logged_at < _LOG_INTERVAL:
            return
        log.error(
            "server.accept_failed",
            error=errno.errorcode.get(error.errno or 0, str(error.errno)),
            failures=self._failures,
            open_connections=self.open,
            interval_s=_LOG_INTERVAL,
        )
        self._failures = 0
        self._logged_at = now


ConnectionFactory = Callable[[Ticket], Connection]


def connection_factory(server: web.Server, config: ServerConfig) -> ConnectionFactory:
    """Protocols for accepted sockets: aiohttp's, registered with ``server`` (the runner's),
    with ``config``'s idle and head timeouts. The proxy writes its own access log."""

    def make(ticket: Ticket) -> Connection:
        return Connection(
            server,
            ticket=ticket,
            header_timeout=config.header_timeout,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=config.idle_timeout,
            access_log=None,
            # A compressed upload is forwarded as it came, with its Content-Encoding: decoding
            # it here would send the upstream plain bytes labelled gzip.
            auto_decompress=False,
        )

    return make


class GatedSite(web.BaseSite):
    """A TCP listener on ``host:port`` (every address the name has) behind a :class:`Gate`;
    HTTPS when ``ssl_context`` is given, its handshake within ``handshake_timeout``."""

    __slots__ = ("_factory", "_gate", "_handshake_timeout", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        gate: Gate,
        factory: ConnectionFactory,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        reuse_port: bool = False,
    ) -> None:
        # A deep backlog: connections beyond max_connections wait there.
        super().__init__(runner, backlog=socket.SOMAXCONN, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._gate = gate
        self._factory = factory
        self._handshake_timeout = handshake_timeout
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return str(URL.build(scheme=scheme, host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        sockets = _bind(self._host, self._port, self._backlog, reuse_port=self._reuse_port)
        self._server = _Listening(
            sockets, self._gate, self._factory, self._ssl_context, self._handshake_timeout
        )


class _Listening(asyncio.AbstractServer):
    """The accept loops of one site's sockets; what aiohttp's runner sees as its server."""

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        gate: Gate,
        factory: ConnectionFactory,
        tls: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        self._sockets = list(sockets)
        self._gate = gate
        self._factory = factory
        self._tls = tls
        self._handshake_timeout = handshake_timeout if tls is not None else None
        self._loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task[None]] = set()
        self._accepting = [self._loop.create_task(self._accept(s)) for s in self._sockets]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    async def _accept(self, listening: socket.socket) -> None:
        loop, gate = self._loop, self._gate
        while True:
            await gate.room()
            try:
                conn, _ = await loop.sock_accept(listening)
                self._start(conn)
                # Then whatever else the kernel holds, without a trip through the event loop
                # for each (as asyncio's own accept loop does): half the cost of a connection
                # per request on uvloop, measured.
                for _ in range(_BATCH):
                    if gate.open >= gate.limit:
                        break
                    try:
                        conn, _ = listening.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    self._start(conn)
            except OSError as e:
                if e.errno in _RESOURCE_ERRORS:
                    gate.accept_failed(e)
                    await asyncio.sleep(_RETRY_DELAY)
                elif e.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    gate.accept_failed(e)

    def _start(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn, self._gate.ticket(self._loop.time())))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, ticket: Ticket) -> None:
        """Hand ``conn`` to a new protocol (after the TLS handshake, with TLS). A connection
        that fails before its protocol saw it (a failed or late handshake, a reset) gives its
        place back here: the protocol's ``connection_lost`` is never called for it."""
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(ticket),
                conn,
                ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except BaseException as e:
            conn.close()
            ticket.release()
            if not isinstance(e, Exception):
                raise  # cancelled: shutting down

    # -- asyncio.AbstractServer ----------------------------------------------------------------

    def close(self) -> None:
        # Handshakes still under way too: their connections would arrive after shutdown.
        for task in (*self._accepting, *self._connecting):
            task.cancel()
        for listening in self._sockets:
            listening.close()
        self._sockets = []

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return bool(self._sockets)

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await asyncio.gather(*self._accepting, return_exceptions=True)

    async def wait_closed(self) -> None:
        for task in self._accepting:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _bind(host: str, port: int, backlog: int, *, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for every address of ``host``, as ``loop.create_server`` makes them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix":  # on Windows this would let others steal the port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio does: each family on its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                raise OSError(
                    e.errno, f"error while attempting to bind on address {address!r}: {e.strerror}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
