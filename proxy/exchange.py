"""One typed record per request, filled in by each stage, and the observers that read it.

The guard creates the :class:`Exchange` when a request arrives; the forwarder's stages fill in
their own fields (route, token source, upstream, status, bytes, timings). Observers (the access
log, metrics, the tap) are registered at start and called at three fixed points:

- ``received``: the request arrived and was admitted (or is about to be refused);
- ``response_started``: the status and headers for the client are known;
- ``finished``: the exchange is over, whatever happened.

Observers only read; they never steer the request. Adding one touches nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from yarl import URL

from . import request_id

if TYPE_CHECKING:
    from .batch.summary import BatchSummary
    from .state import State

log = structlog.get_logger("proxy")


class BodyCapture:
    """A bounded copy of a body: its first ``cap`` bytes and its full size.

    An observer that wants bodies attaches captures at ``received``; the stages feed each
    chunk as it passes and never hold one back.
    """

    __slots__ = ("_cap", "data", "size")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self.data = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self._cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


@dataclass(slots=True, eq=False)
class Exchange:
    """A request and its answer as the proxy handled them. Never holds a token or a key."""

    # As the client sent them, less its access key. Not the request itself: the request holds
    # its exchange, and a cycle would keep both (and their buffers) alive until a GC pass.
    client_headers: Mapping[str, str] = field(repr=False)
    request_id: str
    method: str
    path: str  # decoded, without the query: what the access log shows
    target: str  # the raw path and query as received
    state: State | None = field(default=None, repr=False)  # the configuration serving it
    started: float = field(default_factory=time.perf_counter)
    peer: str | None = None  # the client's address (IP), as the listener saw it
    client: str | None = None  # the [access] client's name
    caller: str | None = None  # the signed-in member (UPN, else object id); never their token
    refused: bool = False  # answered by the guard: never reached a route
    method_override: str | None = None  # X-HTTP-Method and friends, on a route that takes them
    route: str | None = None
    upstream_url: URL | None = None
    # As sent upstream; Authorization holds the token, so only redacting observers read this.
    upstream_headers: Iterable[tuple[str, str]] | None = field(default=None, repr=False)
    token_source: str | None = None  # "cache", or "entra" when this request waited for it
    token_claims: Any = None  # a few claims of the token used (never the token)
    token_wait_ms: float | None = None
    upstream_ms: float | None = None  # until the upstream's response headers
    retried_401: bool = False
    # Throttling (proxy.throttle): time spent waiting for a cool-down, a Retry-After or the
    # route's pace, and how often the request was sent again after a 429/503.
    throttle_wait_ms: float | None = None
    throttle_retries: int = 0
    status: int = 0  # 499 when the client went away first
    reason: str = ""
    # The upstream's response headers as received, or the proxy's own answer's.
    response_headers: Iterable[tuple[str, str]] = field(default=(), repr=False)
    error: str | None = None  # the proxy's error code, when it answered or broke off
    bytes_in: int = 0
    bytes_out: int | None = None
    duration_ms: float = 0.0
    request_capture: BodyCapture | None = None
    response_capture: BodyCapture | None = None
    batch: BatchSummary | None = None  # a $batch's inner requests, as checked (bounded)

    @classmethod
    def of(cls, request: web.Request) -> Exchange:
        """A new exchange for ``request``, with the client's request id or a new one."""
        headers = request.headers
        return cls(
            headers,
            request_id.of(headers),
            request.method,
            request.path,
            request.raw_path,
            peer=request.remote,
        )

    def respond(self, status: int, reason: str | None, headers: Iterable[tuple[str, str]]) -> None:
        """Record the answer's status line and headers (before its body is sent)."""
        self.status = status
        self.reason = reason or ""
        self.response_headers = headers  # not copied: only an observer that keeps them does

    def close(self, bytes_in: int) -> None:
        """Stamp the totals once the exchange is over."""
        self.duration_ms = round((time.perf_counter() - self.started) * 1000, 2)
        self.bytes_in = bytes_in


class Observer:
    """Called at the three fixed points of every exchange; override what you need.

    Methods run on the event loop in the request's task: keep them quick and never await.
    """

    def received(self, exchange: Exchange) -> None:
        return None

    def response_started(self, exchange: Exchange) -> None:
        return None

    def finished(self, exchange: Exchange) -> None:
        return None


class Observers:
    """The observers registered at start; only the hooks an observer overrides are called."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._received = _hooks(observers, "received")
        self._started = _hooks(observers, "response_started")
        self._finished = _hooks(observers, "finished")

    # The three loops are written out, not shared through a helper: they run for every request.
    def received(self, exchange: Exchange) -> None:
        for hook in self._received:
            try:
                hook(exchange)
            except Exception as e:  # an observer's bug must not break the request it watches
                _failed(hook, e)

    def response_started(self, exchange: Exchange) -> None:
        for hook in self._started:
            try:
                hook(exchange)
            except Exception as e:
                _failed(hook, e)

    def finished(self, exchange: Exchange) -> None:
        for hook in self._finished:
            try:
                hook(exchange)
            except Exception as e:
                _failed(hook, e)


def _hooks(observers: Sequence[Observer], name: str) -> tuple[Any, ...]:
    base = getattr(Observer, name)
    return tuple(getattr(o, name) for o in observers if getattr(type(o), name, base) is not base)


def _failed(hook: Any, error: Exception) -> None:
    log.error("observer.failed", observer=type(hook.__self__).__name__, error=type(error).__name__)


KEY = web.RequestKey("exchange", Exchange)
