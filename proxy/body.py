"""The request body on its way upstream: streamed, size-capped, and kept when small enough to
send again (one retry after an upstream 401 needs the body twice)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import StreamReader, web

from .errors import BadRequest, PayloadTooLarge
from .exchange import BodyCapture

BodyData = bytes | AsyncIterator[bytes] | StreamReader | None


@dataclass(slots=True)
class RequestBody:
    data: BodyData
    replayable: bool  # whole in memory (or absent): can be sent a second time
    content_length: str | None  # what goes upstream as Content-Length (None: chunked)
    too_large: bool = False  # set when a streamed body went past max_body_bytes


_NO_BODY = RequestBody(None, True, None)  # never changed: nothing to wrap or cap


async def prepare(
    request: web.Request,
    *,
    replay_limit: int,
    max_bytes: int | None,
    capture: BodyCapture | None = None,
) -> RequestBody:
    """Read at most ``replay_limit`` bytes ahead; stream the rest, enforcing ``max_bytes``.

    ``capture``, when given, gets a bounded copy of the body as it passes upstream."""
    if not request.body_exists:
        return _NO_BODY
    body = await _prepare(request, replay_limit, max_bytes)
    if capture is not None and body.data is not None:
        if isinstance(body.data, bytes):
            capture.add(body.data)
        else:
            chunks = body.data.iter_any() if isinstance(body.data, StreamReader) else body.data
            body.data = _copied(chunks, capture)
    return body


def held(data: bytes, capture: BodyCapture | None = None) -> RequestBody:
    """A body already read whole (a checked ``$batch``): sent as is, and again after a 401."""
    if capture is not None:
        capture.add(data)
    return RequestBody(data, True, str(len(data)))


async def _prepare(request: web.Request, replay_limit: int, max_bytes: int | None) -> RequestBody:
    content = request.content
    declared = request.content_length
    if declared is not None:
        if max_bytes is not None and declared > max_bytes:
            raise PayloadTooLarge(f"the body is {declared} bytes; this route takes {max_bytes}")
        if declared <= replay_limit:
            try:
                data = await content.readexactly(declared)
            except Exception:  # IncompleteReadError: the client sent less than it declared
                raise BadRequest("the body is shorter than its Content-Length") from None
            return RequestBody(data, True, str(declared))
        return RequestBody(content, False, str(declared))
    # Chunked: no length up front. Keep what fits in the replay buffer, stream the rest.
    buffered = bytearray()
    while len(buffered) <= replay_limit:
        chunk = await content.readany()
        if not chunk:
            if max_bytes is not None and len(buffered) > max_bytes:
                raise PayloadTooLarge(f"the body is over {max_bytes} bytes, this route's limit")
            return RequestBody(bytes(buffered), True, str(len(buffered)))
        buffered += chunk
    body = RequestBody(None, False, None)
    body.data = _rest(bytes(buffered), content, max_bytes, body)
    return body


async def _rest(
    first: bytes, content: StreamReader, max_bytes: int | None, body: RequestBody
) -> AsyncIterator[bytes]:
    sent = len(first)
    if max_bytes is not None and sent > max_bytes:
        body.too_large = True
        raise PayloadTooLarge(f"the body is over {max_bytes} bytes, this route's limit")
    yield first
    async for chunk in content.iter_any():
        sent += len(chunk)
        if max_bytes is not None and sent > max_bytes:
            body.too_large = True
            raise PayloadTooLarge(f"the body is over {max_bytes} bytes, this route's limit")
        yield chunk


async def _copied(chunks: AsyncIterator[bytes], capture: BodyCapture) -> AsyncIterator[bytes]:
    """``chunks`` as they are pulled upstream, each copied into ``capture`` on the way."""
    async for chunk in chunks:
        capture.add(chunk)
        yield chunk
