"""Per-client limits: an [access] client's requests in flight against its ``max_concurrency``.

One client must not be able to take every slot of a route (a route's own cap is in
``proxy.limits``): beyond its own cap a client is answered ``429 client_busy`` at once, never
queued. Counted per process, by client name, across configuration reloads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .config.access import AccessClient
from .errors import ClientBusy


class ClientSlots:
    """Requests in flight per client name; only clients with ``max_concurrency`` are counted."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    @contextmanager
    def hold(self, client: AccessClient) -> Iterator[None]:
        """One of ``client``'s slots for as long as the request lasts, or ``ClientBusy``."""
        limit = client.max_concurrency
        name = client.name
        held = self.in_flight.get(name, 0)
        if limit is not None and held >= limit:
            raise ClientBusy(f"client {name!r} has {held} requests in flight, its max_concurrency")
        self.in_flight[name] = held + 1
        try:
            yield
        finally:
            self.in_flight[name] -= 1
