"""The process-wide bound on memory held by ``$batch`` bodies being read and checked.

A batch is read whole before its route's concurrency slot is taken (the check needs all of
it, and a refusal must come before any token or slot), so the routes' limits do not bound how
many are held at once: this does. Each batch reserves its bytes as they arrive (its declared
Content-Length at once) and gives them back when its request is over. A batch that would take
the bytes held past ``server.max_held_batch_bytes`` is answered ``503 upstream_busy`` with
``Retry-After``, unless nothing else is held: one batch alone always proceeds (its route's
limit still bounds it), so a budget smaller than a route's limit slows, never blocks, it.
"""

from __future__ import annotations

from ..errors import UpstreamBusy

RETRY_AFTER = 1.0  # seconds: batches are short-lived, the bytes come back soon


class Budget:
    """Bytes of batch bodies held across the process; one per running proxy."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0

    def reserve(self) -> Reservation:
        return Reservation(self)


class Reservation:
    """One batch's share of a :class:`Budget`: grows as its body is read, given back once."""

    __slots__ = ("_budget", "taken")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self.taken = 0

    def take(self, size: int, most: int) -> None:
        """Hold ``size`` more bytes, or ``UpstreamBusy`` when that passes ``most`` while other
        batches hold bytes too."""
        budget = self._budget
        others = budget.held - self.taken
        if others and budget.held + size > most:
            raise UpstreamBusy(
                f"batches being checked hold {budget.held} bytes; this proxy holds at most "
                f"{most} at once (server.max_held_batch_bytes)",
                retry_after=RETRY_AFTER,
            )
        budget.held += size
        self.taken += size

    def release(self, *_: object) -> None:
        """Give the bytes back (idempotent; takes a finished task, to be its done callback)."""
        self._budget.held -= self.taken
        self.taken = 0
