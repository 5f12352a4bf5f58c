"""The tap as an observer: body captures attached to every exchange, the ring buffer of
finished records, and the live subscribers.

Capture copies only what passes (bounded); the record is built and redacted once, when the
exchange is over. Nothing here ever awaits, so the tap can never delay a stream.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque

import structlog

from ..config.tap import TapConfig
from ..exchange import BodyCapture, Exchange, Observer
from .capture import Record, headers_of, record, summary
from .export import export_body
from .har import Entry
from .kept import Captured
from .recorder import Recorder

log = structlog.get_logger("proxy.tap")
_QUEUE_SIZE = 1000  # events a slow page may fall behind before it is cut off and reconnects


REFUSED = 0  # told to a resend the guard refused (exchange ids start at 1)


class Tap(Observer):
    """Prepared once at start from ``[tap]``; shared by the observers and the tap endpoints."""

    def __init__(self, config: TapConfig) -> None:
        self.config = config
        self._cap = config.max_body_bytes
        # Two rings: exchanges a route took, and those none did (404 no_route), kept apart so
        # that requests to nowhere cannot push real traffic out. Together they stay under
        # tap.max_memory, every record counted whole (Captured.cost).
        self._routed: deque[Captured] = deque()
        self._unrouted: deque[Captured] = deque()
        self.memory = 0
        # Numbered as they finish, so the buffer's ids only grow and ?after=ID misses nothing.
        self._ids = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Record | None]] = set()
        self.recorder = Recorder(config) if config.file is not None else None
        self.closed = False
        # Resends in flight: their request id -> (the original's id, told the new one's id).
        self._resends: dict[str, tuple[int, asyncio.Future[int]]] = {}

    # -- the observer ----------------------------------------------------------------------

    def received(self, exchange: Exchange) -> None:
        if not exchange.refused:
            exchange.request_capture = BodyCapture(self._cap)
            exchange.response_capture = BodyCapture(self._cap)

    def finished(self, exchange: Exchange) -> None:
        """The exchange is over: keep it, publish its summary, queue it for the file. Nothing is
        rendered or redacted here unless a page is watching live (see capture.Captured)."""
        resend = self._resends.pop(exchange.request_id, None) if self._resends else None
        if exchange.refused:
            # Never kept; a resend the guard refused is told so at once (its answer says why).
            if resend is not None and not resend[1].done():
                resend[1].set_result(REFUSED)
            return
        captured = Captured(
            next(self._ids),
            exchange,
            resend[0] if resend else None,
            max_header_bytes=self.config.max_header_bytes,
        )
        if resend is not None and not resend[1].done():
            resend[1].set_result(captured.id)
        self._keep(captured)
        if self._subscribers:
            event = summary(captured)
            for queue in list(self._subscribers):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._subscribers.discard(queue)  # cut off; the page reconnects, catches up
                    _end(queue)
        if self.recorder is not None:
            self.recorder.submit(captured)

    def _keep(self, captured: Captured) -> None:
        routed = captured.exchange.route is not None
        ring = self._routed if routed else self._unrouted
        ring.append(captured)
        self.memory += captured.cost
        if len(ring) > (self.config.keep if routed else self.config.keep_unrouted):
            self.memory -= ring.popleft().cost
        # The newest record always stays (max_memory holds at least one: config.tap).
        while self.memory > self.config.max_memory and len(self._routed) + len(self._unrouted) > 1:
            oldest = min((r for r in (self._routed, self._unrouted) if r), key=lambda r: r[0].id)
            self.memory -= oldest.popleft().cost

    # -- what the endpoints read -----------------------------------------------------------

    def _all(self) -> list[Captured]:
        """Both rings, oldest first."""
        return list(heapq.merge(self._routed, self._unrouted, key=lambda c: c.id))

    def records(self) -> list[Record]:
        return [record(c) for c in self._all()]

    def entries(self) -> list[Entry]:
        """Every record with its bodies as exported (HAR)."""
        return [(record(c), *exported_bodies(c)) for c in self._all()]

    def captured(self, exchange_id: int) -> Captured | None:
        for ring in (self._routed, self._unrouted):
            found = next((c for c in ring if c.id == exchange_id), None)
            if found is not None:
                return found
        return None

    def get(self, exchange_id: int) -> Record | None:
        found = self.captured(exchange_id)
        return None if found is None else record(found)

    def expect_resend(self, request_id: str, original: int) -> asyncio.Future[int]:
        """A future told the id of the exchange with ``request_id`` when it is captured, which
        is then shown as resent from ``original`` (``REFUSED`` when the guard refused it)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._resends[request_id] = (original, future)
        return future

    def forget_resend(self, request_id: str) -> None:
        self._resends.pop(request_id, None)

    def summaries(self, after: int = 0) -> list[Record]:
        return [summary(c) for c in self._all() if c.id > after]

    def subscribe(self) -> asyncio.Queue[Record | None]:
        queue: asyncio.Queue[Record | None] = asyncio.Queue(_QUEUE_SIZE)
        if self.closed:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Record | None]) -> None:
        self._subscribers.discard(queue)

    async def close(self, _app: object = None) -> None:
        """End every live stream (so shutdown does not wait for open pages)."""
        self.closed = True
        for queue in self._subscribers:
            _end(queue)
        self._subscribers.clear()


def exported_bodies(captured: Captured) -> tuple[dict[str, object], dict[str, object]]:
    """The request's and the response's bodies as exported (see export.py)."""
    exchange = captured.exchange
    upstream = headers_of(exchange.upstream_headers)
    sent_headers = upstream if upstream is not None else headers_of(exchange.client_headers.items())
    return (
        export_body(exchange.request_capture, sent_headers or []),
        export_body(exchange.response_capture, headers_of(exchange.response_headers) or []),
    )


def _end(queue: asyncio.Queue[Record | None]) -> None:
    """Tell a live stream to stop, making room for the word if need be."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(None)
