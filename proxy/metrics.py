"""Prometheus metrics: request counters and histograms fed from each request's access fields,
and gauges read from the live state (in-flight requests, queues, tokens) at scrape time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .tokens import CachingProvider, TokenProvider

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
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
        self._state: StateCollector | None = None
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._route_children: dict[str, tuple[Any, Any, Any, Any]] = {}
        self._shared: _SharedState | None = None

    def observe(self, fields: Mapping[str, Any]) -> None:
        """Count one finished request from its access-log fields."""
        route = str(fields.get("route", ""))
        status = int(fields.get("status", 0))
        method = str(fields.get("method", ""))
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
        duration.observe(float(fields.get("duration_ms", 0)) / 1000)
        if "upstream_ms" in fields:
            upstream.observe(float(fields["upstream_ms"]) / 1000)
        bytes_in.inc(int(fields.get("bytes_in", 0)))
        bytes_out.inc(int(fields.get("bytes_out", 0) or 0))

    def set_state(self, collector: StateCollector) -> None:
        """Read the live state from ``collector`` (again after a reload)."""
        if self.multiprocess_dir is None:
            if self._state is not None:
                self.registry.unregister(self._state)
            self.registry.register(collector)
        elif self._shared is None:
            self._shared = _SharedState()
        self._state = collector

    def sync(self) -> None:
        """Copy the live state into the multiprocess gauges (several workers only)."""
        if self._state is not None and self._shared is not None:
            self._shared.update(self._state.snapshot())

    def render(self) -> bytes:
        return generate_latest(self.registry)


_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "MERGE", "TRACE"}
)


class StateCollector(Collector):
    """Gauges and token counters read at scrape time, so the request path pays nothing."""

    def __init__(
        self,
        providers: Mapping[str, TokenProvider],
        in_flight: Mapping[str, int],
        queued: Mapping[str, Any],
    ) -> None:
        self._providers = providers
        self._in_flight = in_flight
        self._queued = queued

    def snapshot(self) -> Snapshot:
        """The live state, read without side effects."""
        snap = Snapshot(
            in_flight=dict(self._in_flight),
            queued={route: limiter.waiting for route, limiter in self._queued.items()},
        )
        for identity, provider in self._providers.items():
            if not isinstance(provider, CachingProvider):
                continue
            status = provider.status()
            for scope, (ok, failed) in provider.counts().items():
                snap.tokens[(identity, scope, "success")] = ok
                snap.tokens[(identity, scope, "error")] = sum(failed.values())
                for code, n in failed.items():
                    snap.errors[code] = snap.errors.get(code, 0) + n
                left = status[scope].expires_in if scope in status else None
                if left is not None:
                    snap.expiry[(identity, scope)] = left
        return snap

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        flight = GaugeMetricFamily(
            "ppproxy_requests_in_flight", "Requests being served, by route", labels=["route"]
        )
        for route, n in snap.in_flight.items():
            flight.add_metric([route], n)
        queued = GaugeMetricFamily(
            "ppproxy_requests_queued",
            "Requests waiting for a max_concurrency slot, by route",
            labels=["route"],
        )
        for route, n in snap.queued.items():
            queued.add_metric([route], n)
        tokens = CounterMetricFamily(
            "ppproxy_token_requests",
            "Token requests to the identity provider by identity, scope and result",
            labels=["identity", "scope", "result"],
        )
        for labels, n in snap.tokens.items():
            tokens.add_metric(list(labels), n)
        expiry = GaugeMetricFamily(
            "ppproxy_token_expiry_seconds",
            "Seconds until the current token expires (negative: expired)",
            labels=["identity", "scope"],
        )
        for pair, left in snap.expiry.items():
            expiry.add_metric(list(pair), left)
        errors = CounterMetricFamily(
            "ppproxy_identity_errors", "Identity provider errors by error code", labels=["code"]
        )
        for code, n in sorted(snap.errors.items()):
            errors.add_metric([code], n)
        yield from (flight, queued, tokens, expiry, errors)


@dataclass
class Snapshot:
    in_flight: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)
    expiry: dict[tuple[str, str], float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class _SharedState:
    """The live state as multiprocess metrics: gauges summed over live workers (requests),
    the soonest expiry over workers (each worker holds its own tokens), counters by delta."""

    def __init__(self) -> None:
        self.in_flight = Gauge(
            "ppproxy_requests_in_flight", "Requests being served, by route", ["route"],
            registry=None, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queued = Gauge(
            "ppproxy_requests_queued", "Requests waiting for a max_concurrency slot, by route",
            ["route"], registry=None, multiprocess_mode="livesum",
        )  # fmt: skip
        self.expiry = Gauge(
            "ppproxy_token_expiry_seconds", "Seconds until the current token expires",
            ["identity", "scope"], registry=None, multiprocess_mode="livemin",
        )  # fmt: skip
        self.tokens = Counter(
            "ppproxy_token_requests", "Token requests to the identity provider",
            ["identity", "scope", "result"], registry=None,
        )  # fmt: skip
        self.errors = Counter(
            "ppproxy_identity_errors", "Identity provider errors by error code", ["code"],
            registry=None,
        )  # fmt: skip
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
