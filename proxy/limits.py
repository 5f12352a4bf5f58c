"""Per-route concurrency caps with a bounded, timed queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .config.route_options import RouteLimits
from .errors import UpstreamBusy


class Limiter:
    """At most ``max_concurrency`` holders; up to ``max_queue`` more wait ``queue_timeout``."""

    def __init__(self, name: str, limits: RouteLimits) -> None:
        assert limits.max_concurrency is not None
        self._name = name
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self.in_flight = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        limits = self._limits
        if self._slots.locked():
            if self.waiting >= limits.max_queue:
                raise UpstreamBusy(
                    f"{self._name}: {self.in_flight} requests in flight and "
                    f"{self.waiting} waiting (max_queue)",
                    retry_after=limits.queue_timeout,
                )
            self.waiting += 1
            try:
                async with asyncio.timeout(limits.queue_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamBusy(
                    f"{self._name}: no free slot within {limits.queue_timeout:g} s",
                    retry_after=limits.queue_timeout,
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
