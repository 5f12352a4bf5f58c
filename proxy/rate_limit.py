"""Limiting a client: ``[[access.clients]] rate_limit = "COUNT/DURATION"``, called by the guard.

A token bucket in GCRA form (one number per client): up to ``COUNT`` requests at once, then one
more every ``DURATION / COUNT`` seconds, so no window of ``DURATION`` holds more than
``COUNT`` plus what refilled in it. Beyond it, ``429 rate_limited`` with ``Retry-After`` and the
IETF ``RateLimit-Policy`` / ``RateLimit`` fields; the request is never forwarded. Counted per
process, by client name; a reload that changes a client's rate starts it afresh.
"""

from __future__ import annotations

import time

from .config.access import AccessClient
from .config.rates import Rate
from .errors import RateLimited
from .metrics import LocalCounter


class ClientRates:
    """Each rate-limited client's theoretical arrival time, and the refusals counted."""

    def __init__(self) -> None:
        self._tat: dict[str, tuple[Rate, float]] = {}
        self.refused = LocalCounter(
            "ppproxy_rate_limited",
            "Requests refused by an [access] client's rate_limit, by route and client",
            ("route", "client"),
        )

    def take(self, client: AccessClient, route: str) -> None:
        """Count one request of ``client`` (which has a ``rate_limit``) to ``route``, or raise
        ``RateLimited`` without counting it."""
        rate, due = self._next(client, route)
        self._tat[client.name] = (rate, due)

    def check(self, client: AccessClient, route: str) -> None:
        """Raise ``RateLimited`` if ``client``'s next request to ``route`` would be refused,
        counting nothing (``Expect: 100-continue``: the request itself is counted later)."""
        self._next(client, route)

    def _next(self, client: AccessClient, route: str) -> tuple[Rate, float]:
        rate = client.rate_limit
        assert rate is not None
        now = time.monotonic()
        kept = self._tat.get(client.name)
        tat = kept[1] if kept is not None and kept[0] == rate else now
        due = max(tat, now) + rate.interval
        if due - now > rate.seconds:  # the bucket is empty
            self.refused.inc((route, client.name))
            raise RateLimited(
                f"client {client.name!r} is over its rate_limit of {rate.text}",
                retry_after=due - rate.seconds - now,
                quota=rate.count,
                window=rate.seconds,
            )
        return rate, due
