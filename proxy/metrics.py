"""Prometheus metrics: request counters and histograms fed by an observer of every exchange,
and gauges read from the live state (in-flight requests, queues, tokens) at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .exchange import Exchange, Observer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "MERGE", "TRACE"}
)

# The live-state families, defined once for both the one-process collector and the
# multiprocess gauges: name -> (help, labels).
IN_FLIGHT = ("ppproxy_requests_in_flight", "Requests being served, by route", ("route",))
QUEUED = (
    "ppproxy_requests_queued",
    "Requests waiting for a max_concurrency slot, by route",
    ("route",),
)
TOKENS = (
    "ppproxy_token_requests",
    "Token requests to the identity provider by identity, scope and result",
    ("identity", "scope", "result"),
)
EXPIRY = (
    "ppproxy_token_expiry_seconds",
    "Seconds until the current token expires (negative: expired)",
    ("identity", "scope"),
)
ERRORS = ("ppproxy_identity_errors", "Identity provider errors by error code", ("code",))


@dataclass
class Snapshot:
    """The live state at one moment (see ``Runtime.snapshot``)."""

    in_flight: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)
    expiry: dict[tuple[str, str], float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class Metrics(Observer):
    """One registry per application (tests run several side by side).

    With several worker processes (``multiprocess_dir``), prometheus-client's multiprocess mode
    is used: every worker writes its counters and histograms to files in that folder and any
    worker's /_proxy/metrics sums them all, so a scrape that reaches one worker sees the whole.
    The live gauges are then copied into multiprocess gauges once a second (see ``sync``).
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir is not None:
            # prometheus-client's multiprocess module carries no type hints.
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        # In multiprocess mode metric objects belong to no registry: the files are the registry.
        r = None if multiprocess_dir is not None else self.registry
        self.requests = Counter(
            "ppproxy_requests", "Requests by route, method and status class",
            ["route", "method", "status_class"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "ppproxy_request_duration_seconds", "Time from request to the last byte sent",
            ["route"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream = Histogram(
            "ppproxy_upstream_duration_seconds", "Time until the upstream's response headers",
            ["route"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.bytes_in = Counter(
            "ppproxy_request_bytes", "Request body bytes received from clients", ["route"],
            registry=r,
        )  # fmt: skip
        self.bytes_out = Counter(
            "ppproxy_response_bytes", "Response body bytes sent to clients", ["route"],
            registry=r,
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._route_children: dict[str, tuple[Any, Any, Any, Any]] = {}
        self._snapshot: Callable[[], Snapshot] | None = None
        self._shared: _SharedState | None = None

    def finished(self, exchange: Exchange) -> None:
        """Count one exchange the forwarder handled (refusals by the guard are not counted)."""
        if exchange.refused:
            return
        route = exchange.route or ""
        status = exchange.status
        method = exchange.method
        # Methods are client-chosen strings: keep the label set bounded.
        method = method if method in _KNOWN_METHODS else "other"
        status_class = f"{status // 100}xx" if status >= 100 else "aborted"
        # labels() takes a lock and hashes every call: keep the children per label set.
        key = (route, method, status_class)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        per_route = self._route_children.get(route)
        if per_route is None:
            per_route = self._route_children[route] = (
                self.duration.labels(route),
                self.upstream.labels(route),
                self.bytes_in.labels(route),
                self.bytes_out.labels(route),
            )
        duration, upstream, bytes_in, bytes_out = per_route
        duration.observe(exchange.duration_ms / 1000)
        if exchange.upstream_ms is not None:
            upstream.observe(exchange.upstream_ms / 1000)
        bytes_in.inc(exchange.bytes_in)
        bytes_out.inc(exchange.bytes_out or 0)

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Read the live state from ``snapshot`` at scrape time (or once a second, see sync)."""
        self._snapshot = snapshot
        if self.multiprocess_dir is None:
            self.registry.register(_LiveCollector(snapshot))
        else:
            self._shared = _SharedState()

    def sync(self) -> None:
        """Copy the live state into the multiprocess gauges (several workers only)."""
        if self._snapshot is not None and self._shared is not None:
            self._shared.update(self._snapshot())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Gauges and token counters read at scrape time, so the request path pays nothing."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        families: list[tuple[Any, tuple[str, str, tuple[str, ...]], dict[Any, Any]]] = [
            (GaugeMetricFamily, IN_FLIGHT, {(k,): v for k, v in snap.in_flight.items()}),
            (GaugeMetricFamily, QUEUED, {(k,): v for k, v in snap.queued.items()}),
            (CounterMetricFamily, TOKENS, snap.tokens),
            (GaugeMetricFamily, EXPIRY, snap.expiry),
            (CounterMetricFamily, ERRORS, {(k,): v for k, v in sorted(snap.errors.items())}),
        ]
        for kind, (name, help_text, labels), values in families:
            family = kind(name, help_text, labels=list(labels))
            for label_values, value in values.items():
                family.add_metric(list(label_values), value)
            yield family


class _SharedState:
    """The live state as multiprocess metrics: gauges summed over live workers (requests),
    the soonest expiry over workers (each worker holds its own tokens), counters by delta."""

    def __init__(self) -> None:
        def gauge(
            spec: tuple[str, str, tuple[str, ...]], mode: Literal["livesum", "livemin"]
        ) -> Gauge:
            name, help_text, labels = spec
            return Gauge(name, help_text, labels, registry=None, multiprocess_mode=mode)

        def counter(spec: tuple[str, str, tuple[str, ...]]) -> Counter:
            name, help_text, labels = spec
            return Counter(name, help_text, labels, registry=None)

        self.in_flight = gauge(IN_FLIGHT, "livesum")
        self.queued = gauge(QUEUED, "livesum")
        self.expiry = gauge(EXPIRY, "livemin")
        self.tokens = counter(TOKENS)
        self.errors = counter(ERRORS)
        self._seen_tokens: dict[tuple[str, str, str], int] = {}
        self._seen_errors: dict[str, int] = {}

    def update(self, snap: Snapshot) -> None:
        for route, n in snap.in_flight.items():
            self.in_flight.labels(route).set(n)
        for route, n in snap.queued.items():
            self.queued.labels(route).set(n)
        for pair, left in snap.expiry.items():
            self.expiry.labels(*pair).set(left)
        for triple, n in snap.tokens.items():
            delta = n - self._seen_tokens.get(triple, 0)
            if delta > 0:
                self.tokens.labels(*triple).inc(delta)
            self._seen_tokens[triple] = n
        for code, n in snap.errors.items():
            delta = n - self._seen_errors.get(code, 0)
            if delta > 0:
                self.errors.labels(code).inc(delta)
            self._seen_errors[code] = n
