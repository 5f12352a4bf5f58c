"""Limiting a client: ``[[access.clients]] rate_limit = "COUNT/DURATION"``, called by the guard.

A sliding window: no span of ``DURATION`` holds more than ``COUNT`` of the client's requests (the
times of its last ``COUNT`` requests are kept; bursts are fine as long as the window allows
them). Beyond it, ``429 rate_limited`` with ``Retry-After`` (when the oldest of those leaves the
window) and the IETF ``RateLimit-Policy`` / ``RateLimit`` fields; the request is never
forwarded. Counted per process, by client name (every member an entry matches shares it); a
reload that changes a client's rate starts it afresh.
"""

from __future__ import annotations

import time
from collections import deque

from .config.access import AccessClient
from .config.rates import Rate
from .errors import RateLimited
from .metrics import LocalCounter


class ClientRates:
    """Each rate-limited client's recent request times, and the refusals counted."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[Rate, deque[float]]] = {}
        self.refused = LocalCounter(
            "ppproxy_rate_limited",
            "Requests refused by an [access] client's rate_limit, by route and client",
            ("route", "client"),
        )

    def take(self, client: AccessClient, route: str) -> None:
        """Count one request of ``client`` (which has a ``rate_limit``) to ``route``, or raise
        ``RateLimited`` without counting it."""
        rate, sent, now = self._window(client, route)
        sent.append(now)  # the deque holds COUNT times at most: the oldest falls out
        self._sent[client.name] = (rate, sent)

    def check(self, client: AccessClient, route: str) -> None:
        """Raise ``RateLimited`` if ``client``'s next request to ``route`` would be refused,
        counting nothing (``Expect: 100-continue``: the request itself is counted later)."""
        self._window(client, route)

    def _window(self, client: AccessClient, route: str) -> tuple[Rate, deque[float], float]:
        rate = client.rate_limit
        assert rate is not None
        now = time.monotonic()
        kept = self._sent.get(client.name)
        sent = kept[1] if kept is not None and kept[0] == rate else deque(maxlen=rate.count)
        if len(sent) == rate.count and now - sent[0] < rate.seconds:  # the window is full
            self.refused.inc((route, client.name))
            raise RateLimited(
                f"client {client.name!r} is over its rate_limit of {rate.text}",
                retry_after=sent[0] + rate.seconds - now,
                quota=rate.count,
                window=rate.seconds,
            )
        return rate, sent, now
