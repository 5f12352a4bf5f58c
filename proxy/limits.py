"""Per-route concurrency caps with a bounded, timed, first-come-first-served queue.

A route's effective cap is the smaller of its ``max_concurrency`` and the last
``x-ms-dop-hint`` its upstream sent (Dataverse's suggested degree of parallelism): every route
has a limiter, open until one of the two sets a cap, so a hint applies to a route without a
``max_concurrency`` too. A lower hint never interrupts requests already under way; it holds
new ones back until the count is below it.
"""

from __future__ import annotations

import asyncio
import collections
import time

from .config.route_options import RouteLimits
from .errors import UpstreamBusy


class Limiter:
    """At most ``limit`` holders (None: no cap); up to ``max_queue`` more wait, in order, for
    ``queue_timeout`` seconds. ``acquire`` then ``release``, or ``async with slot()``."""

    def __init__(self, name: str, limits: RouteLimits) -> None:
        self._name = name
        self._limits = limits
        self._configured = limits.max_concurrency
        self.hint: int | None = None
        self.limit: int | None = self._configured
        self.in_flight = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def set_hint(self, hint: int) -> None:
        """The upstream's ``x-ms-dop-hint``: the cap becomes min(max_concurrency, hint)."""
        if hint == self.hint:
            return
        self.hint = hint
        configured = self._configured
        self.limit = hint if configured is None else min(configured, hint)
        self._wake()

    def try_acquire(self) -> bool:
        """A slot at once, if one is free and nobody waits for it (no await on the usual path)."""
        limit = self.limit
        if limit is None or (self.in_flight < limit and not self._queue):
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> float:
        """A slot, or ``UpstreamBusy`` when the queue is full or none frees up within
        ``queue_timeout``; the seconds waited for it."""
        limit = self.limit
        if limit is None or (self.in_flight < limit and not self._queue):
            self.in_flight += 1
            return 0.0
        limits = self._limits
        if len(self._queue) >= limits.max_queue:
            raise UpstreamBusy(
                f"{self._name}: {self.in_flight} requests in flight and "
                f"{len(self._queue)} waiting (max_queue)",
                retry_after=limits.queue_timeout,
            )
        started = time.monotonic()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            async with asyncio.timeout(limits.queue_timeout):
                await turn  # release() counts the slot for us before it wakes us
        except BaseException as e:
            if turn.done() and not turn.cancelled():
                self.release()  # woken and stopped at the same moment: hand the slot on
            elif turn in self._queue:
                self._queue.remove(turn)
            if isinstance(e, TimeoutError):
                raise UpstreamBusy(
                    f"{self._name}: no free slot within {limits.queue_timeout:g} s",
                    retry_after=limits.queue_timeout,
                ) from None
            raise
        return time.monotonic() - started

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        limit, queue = self.limit, self._queue
        while queue and (limit is None or self.in_flight < limit):
            turn = queue.popleft()
            if not turn.done():
                self.in_flight += 1
                turn.set_result(None)
