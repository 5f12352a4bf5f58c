"""Service protection: treating the upstream's 429 (and 503) the way Microsoft asks clients to.

- **Cool-down.** A ``429`` with ``Retry-After`` stops every request to that upstream origin with
  that identity until the time has passed (Power Platform's limits are per identity, and
  sending while throttled extends the penalty). New requests wait, up to the route's
  ``max_throttle_wait``; a longer rest is answered ``429 upstream_throttled`` at once, without
  contacting the upstream.
- **Wait and resend.** A ``429``/``503`` whose ``Retry-After`` is within ``max_throttle_wait`` is
  waited out and the request sent again (``throttle_retries`` times at most, a token from the
  cache each time) when its body can be sent again; the client sees only the last answer.
- **Pacing** (``proxy.pacing``) and the ``x-ms-dop-hint`` (``proxy.limits``) are applied here,
  before every upstream call, resends included.

Cool-downs are kept per process (see docs/operations.md for several workers) and survive a
reload. Nothing here is awaited on the request path unless a cool-down or a pace is active.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import structlog
from yarl import URL

from .config import RouteConfig
from .errors import UpstreamThrottled
from .exchange import Exchange, Observer
from .limits import Limiter
from .metrics import LocalCounter, LocalHistogram
from .pacing import Pacer
from .rate_limit import ClientRates

log = structlog.get_logger("proxy")

THROTTLING = frozenset({429, 503})
_SECONDS = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)

# (upstream origin, identity name, member): Power Platform counts per user, and on a route that
# acts as the signed-in member (act_as = "user") each member is a user of their own ("" else).
CooldownKey = tuple[str, str, str]


def retry_after(value: str | None) -> float | None:
    """Seconds from ``Retry-After`` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date (a date
    already past is 0); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.match(value):  # RFC 9110 says whole seconds; a fraction is read, not refused
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means it said -0000
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True, slots=True)
class Cooldown:
    upstream: str
    identity: str
    member: str  # the signed-in member it holds, on act_as = "user" routes ("" otherwise)
    seconds_left: float


class Throttling(Observer):
    """The process-wide side: cool-downs, client rates, route pacers and their metrics.

    An observer too: it records how long each request waited for throttling."""

    def __init__(self) -> None:
        self._until: dict[CooldownKey, float] = {}  # time.monotonic() when each one ends
        self._pacers: dict[str, Pacer] = {}
        self.clients = ClientRates()
        self.throttled = LocalCounter(
            "ppproxy_upstream_throttled",
            "Upstream answers of 429, or 503 with Retry-After, by route",
            ("route",),
        )
        self.waited = LocalHistogram(
            "ppproxy_throttle_wait_seconds",
            "Time a request waited for a cool-down, a Retry-After or its route's rate_limit",
            ("route",),
            _WAIT_BUCKETS,
        )

    def metrics(self) -> list[LocalCounter | LocalHistogram]:
        return [self.throttled, self.waited, self.clients.refused]

    def finished(self, exchange: Exchange) -> None:
        if exchange.throttle_wait_ms:
            self.waited.observe((exchange.route or "",), exchange.throttle_wait_ms / 1000)

    def gate(self, route: RouteConfig, limiter: Limiter) -> Gate:
        """The route's gate, for a new configuration version (pacers kept when unchanged)."""
        settings = route.throttling
        pacer = None
        if settings.rate_limit is not None:
            pacer = self._pacers.get(route.name)
            if pacer is None or (pacer.rate, pacer.max_queue) != (
                settings.rate_limit,
                route.limits.max_queue,
            ):
                pacer = Pacer(route.name, settings.rate_limit, route.limits.max_queue)
                self._pacers[route.name] = pacer
        key = (str(URL(route.upstream).origin()), route.identity, "")
        return Gate(self, route, key, pacer, limiter)

    @property
    def any_cooling(self) -> bool:
        """Whether any cool-down may be in force (one that ended is dropped when next read)."""
        return bool(self._until)

    def cooling(self, key: CooldownKey) -> float:
        """Seconds left of ``key``'s cool-down (0: none)."""
        until = self._until.get(key)
        now = time.monotonic()
        if until is None or until <= now:
            # Drop every cool-down that ended (a handful at most), so that ``any_cooling``
            # turns False again and requests go back to the fast path.
            for ended in [k for k, t in self._until.items() if t <= now]:
                del self._until[ended]
            return 0.0
        return until - now

    def cool(self, key: CooldownKey, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self._until.get(key, 0.0):
            self._until[key] = until

    def cooldowns(self) -> Iterable[Cooldown]:
        """The cool-downs in force now."""
        for key in list(self._until):
            left = self.cooling(key)
            if left > 0:
                yield Cooldown(key[0], key[1], key[2], left)


class Gate:
    """One route's way through the throttling, prepared once per configuration version."""

    __slots__ = ("_hub", "_key", "_limiter", "_name", "_pacer", "_per_member", "settings")

    def __init__(
        self,
        hub: Throttling,
        route: RouteConfig,
        key: CooldownKey,
        pacer: Pacer | None,
        limiter: Limiter,
    ) -> None:
        self._hub = hub
        self._name = route.name
        self._key = key
        self._pacer = pacer
        self._limiter = limiter
        self._per_member = route.act_as == "user"  # the member's own token: their own budget
        self.settings = route.throttling

    def _key_for(self, exchange: Exchange) -> CooldownKey:
        if self._per_member and exchange.caller:
            return (self._key[0], self._key[1], exchange.caller)
        return self._key

    @property
    def idle(self) -> bool:
        """Nothing to wait for before a call: no cool-down anywhere, no pace. Read first, so
        that the usual request pays one attribute check, not a coroutine."""
        return self._pacer is None and not self._hub.any_cooling

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn under the route's ``rate_limit``."""
        return 0 if self._pacer is None else self._pacer.waiting

    async def admit(self, exchange: Exchange) -> None:
        """Wait out the identity's cool-down on this upstream, or ``UpstreamThrottled`` when
        it is longer than ``max_throttle_wait``."""
        hub = self._hub
        key = self._key_for(exchange)
        limit = self.settings.max_throttle_wait
        started = time.monotonic()
        while left := hub.cooling(key):
            waited = time.monotonic() - started
            if waited + left > limit:
                raise UpstreamThrottled(
                    f"{self._name}: the upstream throttled this identity; it may be called "
                    f"again in {math.ceil(left)} s (max_throttle_wait is {limit:g} s)",
                    retry_after=left,
                )
            try:
                await asyncio.sleep(left)
            finally:
                _add_wait(exchange, time.monotonic() - started - waited)

    async def before_call(self, exchange: Exchange, budget: float) -> None:
        """Right before an upstream call: the cool-down, then the route's pace (within
        ``budget`` seconds)."""
        await self.admit(exchange)
        if self._pacer is not None:
            _add_wait(exchange, await self._pacer.turn(budget))
            # A cool-down may have begun while this request waited for its turn: it must not
            # go out into it (sending while throttled extends the penalty).
            if self._hub.cooling(self._key_for(exchange)):
                await self.admit(exchange)

    def throttled(self, upstream: aiohttp.ClientResponse, exchange: Exchange) -> float | None:
        """For a throttling answer (429, or 503 with ``Retry-After``): the seconds it asks to
        wait (None: not one, or a 429 that says nothing). A 429 starts the cool-down."""
        if upstream.status not in THROTTLING:
            return None
        seconds = retry_after(upstream.headers.get("Retry-After"))
        if upstream.status == 503 and seconds is None:
            return None  # an outage, not throttling: nothing says how long
        self._hub.throttled.inc((self._name,))
        key = self._key_for(exchange)
        if upstream.status == 429 and seconds is not None:
            self._hub.cool(key, seconds)
        # One event per throttling answer (rare): which upstream and identity, and for how long.
        log.warning(
            "upstream.throttled",
            route=self._name,
            status=upstream.status,
            upstream=key[0],
            identity=key[1],
            retry_after=seconds,
            **({"caller": key[2]} if key[2] else {}),
        )
        return seconds

    def may_resend(self, seconds: float, resends: int, replayable: bool) -> bool:
        settings = self.settings
        return (
            settings.retry_throttled
            and replayable
            and resends < settings.throttle_retries
            and seconds <= settings.max_throttle_wait
        )

    async def wait(self, exchange: Exchange, seconds: float) -> None:
        """Wait ``seconds`` before resending (the client going away cancels it, and so the
        resend: aiohttp cancels the handler)."""
        started = time.monotonic()
        try:
            await asyncio.sleep(seconds)
        finally:
            _add_wait(exchange, time.monotonic() - started)

    def hint(self, upstream: aiohttp.ClientResponse) -> None:
        """Dataverse's ``x-ms-dop-hint`` lowers (or lifts back) the route's concurrency cap."""
        value = upstream.headers.get("x-ms-dop-hint")
        if value is not None and value.isdigit() and int(value) > 0:
            self._limiter.set_hint(min(int(value), 100_000))


def _add_wait(exchange: Exchange, seconds: float) -> None:
    if seconds > 0:
        exchange.throttle_wait_ms = round((exchange.throttle_wait_ms or 0) + seconds * 1000, 2)
