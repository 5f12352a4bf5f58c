"""Pacing a route: ``rate_limit = "COUNT/DURATION"`` spreads its upstream requests evenly.

One request every ``DURATION / COUNT`` seconds (``"6000/5m"``: one every 50 ms), so no window
of ``DURATION`` ever holds more than ``COUNT`` of them, wherever the upstream's sliding window
starts. Each request is given the next free instant on arrival (virtual scheduling, as in
GCRA), so they go in the order they came; one whose instant is further away than the time it
may still wait is answered ``503 upstream_busy`` at once, with ``Retry-After``, instead of
waiting in vain. Waiting costs a timer, never an upstream connection.
"""

from __future__ import annotations

import asyncio
import time

from .config.rates import Rate
from .errors import UpstreamBusy


class Pacer:
    """The next free instant of one route (``time.monotonic()``)."""

    def __init__(self, name: str, rate: Rate, max_queue: int) -> None:
        self._name = name
        self.rate = rate
        self._interval = rate.interval
        self.max_queue = max_queue
        self._next = 0.0
        self.waiting = 0

    async def turn(self, budget: float) -> float:
        """Wait for this request's turn, at most ``budget`` seconds; the seconds waited."""
        now = time.monotonic()
        at = max(now, self._next)
        wait = at - now
        if wait > 0 and (wait > budget or self.waiting >= self.max_queue):
            raise UpstreamBusy(
                f"{self._name}: over its rate_limit {self.rate.text}; the next free turn "
                f"is {wait:.1f} s away",
                retry_after=wait,
            )
        self._next = at + self._interval
        if wait <= 0:
            return 0.0
        self.waiting += 1
        try:
            await asyncio.sleep(wait)
        except BaseException:
            if self._next == at + self._interval:
                self._next = at  # the last turn given out: the next request may have it
            raise
        finally:
            self.waiting -= 1
        return time.monotonic() - now
