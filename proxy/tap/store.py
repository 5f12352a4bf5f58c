"""The tap as an observer: body captures attached to every exchange, the ring buffer of
finished records, and the live subscribers.

Capture copies only what passes (bounded); the record is built and redacted once, when the
exchange is over. Nothing here ever awaits, so the tap can never delay a stream.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

import structlog

from ..config.tap import TapConfig
from ..exchange import BodyCapture, Exchange, Observer
from .capture import Captured, Record, record, summary
from .recorder import Recorder

log = structlog.get_logger("proxy.tap")
_QUEUE_SIZE = 1000  # events a slow page may fall behind before it is cut off and reconnects


class Tap(Observer):
    """Prepared once at start from ``[tap]``; shared by the observers and the tap endpoints."""

    def __init__(self, config: TapConfig) -> None:
        self.config = config
        self._cap = config.max_body_bytes
        self._buffer: deque[Captured] = deque(maxlen=config.keep)
        # Numbered as they finish, so the buffer's ids only grow and ?after=ID misses nothing.
        self._ids = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Record | None]] = set()
        self.recorder = Recorder(config) if config.file is not None else None
        self.closed = False

    # -- the observer ----------------------------------------------------------------------

    def received(self, exchange: Exchange) -> None:
        if not exchange.refused:
            exchange.request_capture = BodyCapture(self._cap)
            exchange.response_capture = BodyCapture(self._cap)

    def finished(self, exchange: Exchange) -> None:
        """The exchange is over: keep it, publish its summary, queue it for the file. Nothing is
        rendered or redacted here unless a page is watching live (see capture.Captured)."""
        if exchange.refused:
            return
        captured = Captured(next(self._ids), exchange)
        self._buffer.append(captured)
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

    # -- what the endpoints read -----------------------------------------------------------

    def records(self) -> list[Record]:
        return [record(c) for c in list(self._buffer)]

    def get(self, exchange_id: int) -> Record | None:
        found = next((c for c in self._buffer if c.id == exchange_id), None)
        return None if found is None else record(found)

    def summaries(self, after: int = 0) -> list[Record]:
        return [summary(c) for c in list(self._buffer) if c.id > after]

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


def _end(queue: asyncio.Queue[Record | None]) -> None:
    """Tell a live stream to stop, making room for the word if need be."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(None)
