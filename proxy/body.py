"""The request body on its way upstream: streamed, size-capped, and kept when small enough to
send again (one retry after an upstream 401 needs the body twice).

Every wait for the client's next bytes is bounded by ``server.body_timeout``: a client that
pauses longer gets ``408 body_timeout``, and a request already under way upstream is cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import StreamReader, web

from .errors import BadRequest, BodyTimeout, PayloadTooLarge, ProxyError
from .exchange import BodyCapture

BodyData = bytes | AsyncIterator[bytes] | None


@dataclass(slots=True)
class RequestBody:
    data: BodyData
    replayable: bool  # whole in memory (or absent): can be sent a second time
    content_length: str | None  # what goes upstream as Content-Length (None: chunked)
    # Why a streamed body stopped (too large, the client paused too long), for send() to
    # answer with instead of the upstream call's own error.
    failure: ProxyError | None = None


_NO_BODY = RequestBody(None, True, None)  # never changed: nothing to wrap or cap


async def prepare(
    request: web.Request,
    *,
    replay_limit: int,
    max_bytes: int | None,
    pause: float,
    capture: BodyCapture | None = None,
) -> RequestBody:
    """Read at most ``replay_limit`` bytes ahead; stream the rest, enforcing ``max_bytes``;
    never wait longer than ``pause`` seconds for the client's next bytes.

    ``capture``, when given, gets a bounded copy of the body as it passes upstream."""
    if not request.body_exists:
        return _NO_BODY
    body = await _prepare(request.content, request.content_length, replay_limit, max_bytes, pause)
    if capture is not None and body.data is not None:
        if isinstance(body.data, bytes):
            capture.add(body.data)
        else:
            body.data = _copied(body.data, capture)
    return body


def held(data: bytes, capture: BodyCapture | None = None) -> RequestBody:
    """A body already read whole (a checked ``$batch``): sent as is, and again after a 401."""
    if capture is not None:
        capture.add(data)
    return RequestBody(data, True, str(len(data)))


async def _prepare(
    content: StreamReader,
    declared: int | None,
    replay_limit: int,
    max_bytes: int | None,
    pause: float,
) -> RequestBody:
    if declared is not None:
        if max_bytes is not None and declared > max_bytes:
            raise PayloadTooLarge(f"the body is {declared} bytes; this route takes {max_bytes}")
        if declared <= replay_limit:
            data = await _read_exactly(content, declared, pause)
            return RequestBody(data, True, str(declared))
        body = RequestBody(None, False, str(declared))
        body.data = _rest(b"", content, None, pause, body)
        return body
    # Chunked: no length up front. Keep what fits in the replay buffer, stream the rest.
    buffered = bytearray()
    while len(buffered) <= replay_limit:
        chunk = await _next(content, pause)
        if not chunk:
            if max_bytes is not None and len(buffered) > max_bytes:
                raise PayloadTooLarge(f"the body is over {max_bytes} bytes, this route's limit")
            return RequestBody(bytes(buffered), True, str(len(buffered)))
        buffered += chunk
    body = RequestBody(None, False, None)
    body.data = _rest(bytes(buffered), content, max_bytes, pause, body)
    return body


async def _next(content: StreamReader, pause: float, limit: int = -1) -> bytes:
    """What the client has sent so far (at most ``limit`` bytes), waiting at most ``pause``
    seconds when it has sent nothing yet; ``b""`` at the end of the body."""
    data = content.read_nowait(limit)  # no timer at all when the bytes are already here
    if data or content.at_eof():
        return data
    try:
        async with asyncio.timeout(pause):
            return await (content.readany() if limit < 0 else content.read(limit))
    except TimeoutError:
        raise BodyTimeout(f"the request body paused for more than {pause:g} s") from None


async def _read_exactly(content: StreamReader, size: int, pause: float) -> bytes:
    if size == 0:
        return b""
    data = await _next(content, pause, size)
    while len(data) < size:
        more = await _next(content, pause, size - len(data))
        if not more:  # the client sent less than it declared
            raise BadRequest("the body is shorter than its Content-Length")
        data += more
    return data


async def _rest(
    first: bytes,
    content: StreamReader,
    max_bytes: int | None,
    pause: float,
    body: RequestBody,
) -> AsyncIterator[bytes]:
    sent = len(first)
    try:
        if max_bytes is not None and sent > max_bytes:
            raise PayloadTooLarge(f"the body is over {max_bytes} bytes, this route's limit")
        if first:
            yield first
        while chunk := await _next(content, pause):
            sent += len(chunk)
            if max_bytes is not None and sent > max_bytes:
                raise PayloadTooLarge(f"the body is over {max_bytes} bytes, this route's limit")
            yield chunk
    except ProxyError as e:
        body.failure = e  # the upstream call fails with it; send() answers with this instead
        raise


async def _copied(chunks: AsyncIterator[bytes], capture: BodyCapture) -> AsyncIterator[bytes]:
    """``chunks`` as they are pulled upstream, each copied into ``capture`` on the way."""
    async for chunk in chunks:
        capture.add(chunk)
        yield chunk
