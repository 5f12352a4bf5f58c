"""The tap: the forwarder's capture hooks, the ring buffer, and the live subscribers.

The forwarder calls the hooks only when the tap is on (``if self._tap is not None``). Each
hook finds its exchange on the request, so no signature in the forwarder has to change. A
hook only copies what it is given; it never awaits, so it can never delay the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import structlog
from aiohttp import StreamReader, web
from yarl import URL

from ..config.tap import TapConfig
from .capture import BodyCapture, Exchange, Record, claims_summary, headers_of, record, summary
from .recorder import Recorder

log = structlog.get_logger("proxy.tap")
_EXCHANGE = web.RequestKey("tap_exchange", Exchange)
_QUEUE_SIZE = 1000  # events a slow page may fall behind before it is cut off and reconnects


class Tap:
    """Prepared once at start from ``[tap]``; shared by the forwarder and the tap endpoints."""

    def __init__(self, config: TapConfig) -> None:
        self.config = config
        self._cap = config.max_body_bytes
        self._buffer: deque[Record] = deque(maxlen=config.keep)
        self._ids = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Record | None]] = set()
        self.recorder = Recorder(config) if config.file is not None else None
        self.closed = False

    # -- the forwarder's hooks -------------------------------------------------------------

    def begin(self, request: web.Request, request_id: str) -> None:
        request[_EXCHANGE] = Exchange(
            id=next(self._ids),
            started=time.time(),
            method=request.method,
            target=request.raw_path,
            request_id=request_id,
            client_headers=headers_of(request.headers.items()),
            request_body=BodyCapture(self._cap),
            response_body=BodyCapture(self._cap),
        )

    def request_body(self, request: web.Request, data: Any) -> Any:
        """``data`` (a prepared request body) as it should go upstream, captured on the way.

        Bytes are whole already: a slice is kept. A stream is wrapped so each chunk is copied
        (up to the cap) as the upstream connection pulls it, never read ahead."""
        exchange = request.get(_EXCHANGE)
        if exchange is None or data is None:
            return data
        if isinstance(data, bytes | bytearray):
            exchange.request_body.add(data)
            return data
        if isinstance(data, StreamReader):
            return _Tee(data.iter_any(), exchange.request_body)
        return _Tee(data, exchange.request_body)

    def sent(
        self, request: web.Request, url: URL, headers: Mapping[str, str], token_value: str
    ) -> None:
        """The request as it went upstream; only a claims summary is taken from the token."""
        exchange = request.get(_EXCHANGE)
        if exchange is None:
            return
        exchange.upstream_url = str(url)
        exchange.upstream_headers = headers_of(headers.items())
        exchange.claims = claims_summary(token_value)

    def response_start(
        self, request: web.Request, status: int, reason: str | None, headers: Iterable[Any]
    ) -> None:
        exchange = request.get(_EXCHANGE)
        if exchange is None:
            return
        exchange.status = status
        exchange.reason = reason or ""
        exchange.response_headers = headers_of(headers)
        exchange.response_body = BodyCapture(self._cap)  # a retried 401's first answer is gone

    def response_chunk(self, request: web.Request, chunk: bytes) -> None:
        exchange = request.get(_EXCHANGE)
        if exchange is not None:
            exchange.response_body.add(chunk)

    def response_chunks(
        self, request: web.Request, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        exchange = request.get(_EXCHANGE)
        return chunks if exchange is None else _Tee(chunks, exchange.response_body)

    def proxy_response(self, request: web.Request, response: web.Response) -> None:
        """An answer the proxy made itself (an error): its status, headers and JSON body."""
        self.response_start(request, response.status, response.reason, response.headers.items())
        if isinstance(response.body, bytes):
            self.response_chunk(request, response.body)

    def finish(self, request: web.Request, fields: Mapping[str, object]) -> None:
        """The exchange is over: redact it into a record, keep it, publish it, record it."""
        exchange = request.get(_EXCHANGE)
        if exchange is None:
            return
        rec = record(exchange, fields)
        self._buffer.append(rec)
        event = summary(rec)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)  # cut off; the page reconnects and catches up
                _end(queue)
        if self.recorder is not None:
            self.recorder.submit(rec)

    # -- what the endpoints read -----------------------------------------------------------

    def records(self) -> list[Record]:
        return list(self._buffer)

    def get(self, exchange_id: int) -> Record | None:
        return next((r for r in self._buffer if r["id"] == exchange_id), None)

    def summaries(self, after: int = 0) -> list[Record]:
        return [summary(r) for r in self._buffer if r["id"] > after]

    def subscribe(self) -> asyncio.Queue[Record | None]:
        queue: asyncio.Queue[Record | None] = asyncio.Queue(_QUEUE_SIZE)
        if self.closed:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Record | None]) -> None:
        self._subscribers.discard(queue)

    async def close(self, _app: web.Application | None = None) -> None:
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


class _Tee:
    """An async iterator of chunks that copies each into ``capture`` as it passes."""

    __slots__ = ("_capture", "_chunks")

    def __init__(self, chunks: AsyncIterator[bytes], capture: BodyCapture) -> None:
        self._chunks = chunks
        self._capture = capture

    def __aiter__(self) -> _Tee:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        self._capture.add(chunk)
        return chunk
