"""One client connection: aiohttp's HTTP/1.1 protocol with a deadline for each request head and
parser errors answered without echoing the request.

aiohttp has public knobs for the idle keep-alive time (``keepalive_timeout``, used here as
``server.idle_timeout``) but none for the time a client may take to send a request head, and
none for the text of its own 400 answer, which quotes the offending header line (an
``X-Api-Key`` included). Both are done by subclassing its ``RequestHandler``, the protocol
:mod:`proxy.listener` creates for every accepted connection:

- **head deadline** (``server.header_timeout``): armed when the connection is accepted (a TLS
  handshake counts against it), and
  again by the first bytes after a finished exchange; disarmed when aiohttp has parsed a whole
  head (it then builds the request: the one place that says so, aiohttp's request factory, is
  wrapped). When it fires, the connection is closed. Idle keep-alive time between requests is
  ``server.idle_timeout``, aiohttp's own timer.
- **parser errors**: :meth:`handle_error` answers them with the proxy's JSON ``400
  bad_request``, never the request's bytes; aiohttp still logs them (quietly, see
  ``proxy.observe``).

Tests pin both behaviours against aiohttp's internals (``tests/test_connections.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import BadRequest, to_response


class Ticket:
    """One accepted connection's place under ``server.max_connections`` (released once), and
    when it was accepted (the event loop's clock)."""

    __slots__ = ("_release", "accepted_at")

    def __init__(self, release: Callable[[], None], accepted_at: float) -> None:
        self._release: Callable[[], None] | None = release
        self.accepted_at = accepted_at

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class Connection(web.RequestHandler):
    """aiohttp's protocol for one connection, with a head deadline and quiet parser errors."""

    __slots__ = ("_awaiting_head", "_build_request", "_head_timeout", "_head_timer", "_ticket")

    def __init__(
        self,
        manager: web.Server,
        *,
        ticket: Ticket,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._ticket = ticket
        self._head_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        # aiohttp calls its request factory once per parsed head; wrap it to learn of each.
        # (connection_lost sets the attribute to None, which also breaks this bound-method
        # reference cycle.)
        self._build_request = self._request_factory
        self._request_factory = self._head_arrived

    # -- the head deadline ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The first head is due header_timeout after the connection was accepted: with TLS,
        # this is called after the handshake, which counts against the same deadline.
        loop = asyncio.get_running_loop()
        due = self._ticket.accepted_at + self._head_timeout
        self._head_timer = loop.call_at(due, self._head_late)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head and self._head_timer is None and data:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def _head_arrived(self, *args: Any) -> Any:
        self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        assert self._build_request is not None
        return self._build_request(*args)

    def log_access(self, request: Any, response: Any, time: float | None) -> None:
        # Called by aiohttp once an answer has been written (whether or not anything is
        # logged): what arrives from now on is the next request's head.
        self._awaiting_head = True
        super().log_access(request, response, time)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._awaiting_head:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._ticket.release()
        self._build_request = None
        super().connection_lost(exc)

    # -- parser errors -------------------------------------------------------------------------

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own answer logs the error (and raises if a response was already started);
        # its text quotes the bad line of the request, so it is replaced.
        answer = super().handle_error(request, status, exc, message)
        if not isinstance(exc, HttpProcessingError):
            return answer  # a handler's failure: aiohttp's text is generic
        response = to_response(BadRequest("the request is not valid HTTP/1.1"))
        response.force_close()
        return response
