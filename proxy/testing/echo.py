"""A local echo upstream: reports what it received and serves canned test responses.

It is a low-level aiohttp server (no router), so ``raw_path`` is exactly the request
target as sent. Paths below ``/_echo/`` are special (see ``EchoUpstream``); every other
path, with any method, answers 200 with JSON describing the request.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import json
import math
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from proxy.testing._server import LocalServer

CHUNK_SIZE = 64 * 1024
# A fixed random-looking block, repeated: cheap to stream even for gigabyte bodies.
_BLOCK = hashlib.shake_256(b"proxy.testing pattern").digest(CHUNK_SIZE)

GZIP_BODY: bytes = gzip.compress(
    json.dumps({"compressed": True, "text": "hello from the echo upstream " * 8}).encode(),
    mtime=0,
)
"""The exact bytes sent by ``GET /_echo/gzip`` (gzip of a small JSON object)."""

_PREFIX = "/_echo/"
_ELSEWHERE = "/_echo/elsewhere"  # the redirect target; echoes like any other path


def pattern(n: int) -> Iterator[bytes]:
    """n bytes of a deterministic pattern, as 64 KiB chunks (the last may be shorter)."""
    if n < 0:
        raise ValueError("n must not be negative")
    full, rest = divmod(n, CHUNK_SIZE)
    for _ in range(full):
        yield _BLOCK
    if rest:
        yield _BLOCK[:rest]


@functools.lru_cache(maxsize=32)
def pattern_sha256(n: int) -> str:
    """Hex SHA-256 of ``b"".join(pattern(n))``."""
    digest = hashlib.sha256()
    for chunk in pattern(n):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Received:
    """One request seen by the echo upstream; header names keep their case and order."""

    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body_bytes: int
    body_sha256: str


_Endpoint = Callable[["EchoUpstream", web.BaseRequest, str], Awaitable[web.StreamResponse]]


class EchoUpstream(LocalServer):
    """Echo server on loopback (HTTPS when given an ssl_context); use as ``async with``.

    Every request is recorded in ``requests`` after its body has been read. The body is
    hashed in chunks, never held whole. ``in_flight`` counts running handlers, and
    ``cancelled`` counts handlers cancelled because the client went away.

    Special paths (any method):

    - ``/_echo/bytes/{n}``: n bytes of ``pattern(n)`` with Content-Length.
    - ``/_echo/gzip``: ``GZIP_BODY`` with ``Content-Encoding: gzip``, sent as is.
    - ``/_echo/redirect``: 302 to ``/_echo/elsewhere`` (which echoes like any path).
    - ``/_echo/status/{code}``: that status (200-599) with a small JSON body
      (``?retry_after=N``: with ``Retry-After: N``).
    - ``/_echo/slow?seconds=X``: sleeps X seconds, then answers 200.
    - ``/_echo/stall?seconds=X``: sends headers and a first chunk, waits X seconds, then
      sends the rest.
    - ``/_echo/headers``: body "ok" with hop-by-hop headers ``Connection: close, X-Hop``,
      ``X-Hop: 1``, ``Keep-Alive: timeout=5``, ``Proxy-Authenticate: Basic``,
      ``Trailer: X-T`` and ``Upgrade: h2c``, plus end-to-end ``X-End-To-End: 1`` and
      ``Set-Cookie: a=b``. aiohttp sends all of them unchanged; the connection is then
      closed, as the Connection header says.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, ssl_context=ssl_context)
        self.requests: list[Received] = []
        self.in_flight = 0
        self.cancelled = 0

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        return web.ServerRunner(server, shutdown_timeout=shutdown_timeout)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` or ``https://...``; valid after start()."""
        return self.base_url

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.in_flight += 1
        try:
            received = await _receive(request)
            self.requests.append(received)
            path = request.raw_path.partition("?")[0]
            if not path.startswith(_PREFIX) or path == _ELSEWHERE:
                return _echo(request, received)
            name, _, argument = path.removeprefix(_PREFIX).partition("/")
            endpoint = _ENDPOINTS.get(name)
            if endpoint is None:
                return web.json_response({"error": f"no echo endpoint {name!r}"}, status=404)
            return await endpoint(self, request, argument)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _bytes(self, request: web.BaseRequest, argument: str) -> web.StreamResponse:
        if not argument.isdecimal():
            return _bad_request("expected /_echo/bytes/{n}")
        n = int(argument)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = n
        await response.prepare(request)
        # aiohttp writes whatever it is given, even for HEAD: a HEAD answer has no body.
        for chunk in pattern(n) if request.method != "HEAD" else ():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _gzip(self, request: web.BaseRequest, argument: str) -> web.StreamResponse:
        # Content-Encoding is set by hand and compression is never enabled, so aiohttp
        # sends the bytes untouched.
        return web.Response(
            body=GZIP_BODY,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def _redirect(self, request: web.BaseRequest, argument: str) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": _ELSEWHERE})

    async def _status(self, request: web.BaseRequest, argument: str) -> web.StreamResponse:
        if not argument.isdecimal() or not 200 <= int(argument) <= 599:
            return _bad_request("expected /_echo/status/{200..599}")
        code = int(argument)
        if code in (204, 304):
            return web.Response(status=code)
        retry = request.query.get("retry_after")  # a throttling answer: 429 or 503 + Retry-After
        headers = {"Retry-After": retry} if retry is not None and retry.isdecimal() else None
        return web.json_response({"status": code}, status=code, headers=headers)

    async def _slow(self, request: web.BaseRequest, argument: str) -> web.StreamResponse:
        seconds = _seconds(request)
        if seconds is None:
            return _bad_request("expected ?seconds=X with X >= 0")
        await asyncio.sleep(seconds)
        return web.json_response({"slept": seconds})

    async def _stall(self, request: web.BaseRequest, argument: str) -> web.StreamResponse:
        seconds = _seconds(request)
        if seconds is None:
            return _bad_request("expected ?seconds=X with X >= 0")
        first, rest = b"first chunk\n", b"rest after the stall\n"
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.content_length = len(first) + len(rest)
        await response.prepare(request)
        await response.write(first)
        await asyncio.sleep(seconds)
        await response.write(rest)
        await response.write_eof()
        return response

    async def _headers(self, request: web.BaseRequest, argument: str) -> web.StreamResponse:
        response = web.Response(text="ok")
        response.headers.update(
            {
                "Connection": "close, X-Hop",
                "X-Hop": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "Trailer": "X-T",
                "Upgrade": "h2c",
                "X-End-To-End": "1",
                "Set-Cookie": "a=b",
            }
        )
        response.force_close()
        return response


_ENDPOINTS: dict[str, _Endpoint] = {
    "bytes": EchoUpstream._bytes,
    "gzip": EchoUpstream._gzip,
    "redirect": EchoUpstream._redirect,
    "status": EchoUpstream._status,
    "slow": EchoUpstream._slow,
    "stall": EchoUpstream._stall,
    "headers": EchoUpstream._headers,
}


async def _receive(request: web.BaseRequest) -> Received:
    """Read and hash the body in chunks; decode header bytes as Latin-1 (lossless)."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
    return Received(request.method, request.raw_path, headers, size, digest.hexdigest())


def _echo(request: web.BaseRequest, received: Received) -> web.Response:
    return web.json_response(
        {
            "method": received.method,
            "path": received.raw_path,
            "headers": [[name, _shown(name, value)] for name, value in received.headers],
            "body_bytes": received.body_bytes,
            "body_sha256": received.body_sha256,
            "token_claims": _bearer_claims(request.headers.get("Authorization", "")),
        }
    )


def _shown(name: str, value: str) -> str:
    """A header value for the echo's answer: a bearer JWT keeps its header and claims but loses
    its signature, so what the echo shows can be read but never replayed."""
    if name.lower() != "authorization" or not value.lower().startswith("bearer "):
        return value
    parts = value[7:].strip().split(".")
    if len(parts) != 3:
        return "Bearer [redacted]"
    return f"Bearer {parts[0]}.{parts[1]}.[signature redacted]"


def _bearer_claims(header: str) -> dict[str, Any] | None:
    """Unverified claims of a ``Bearer`` JWT, or None."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        return jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None


def _seconds(request: web.BaseRequest) -> float | None:
    try:
        seconds = float(request.query.get("seconds", "0"))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
