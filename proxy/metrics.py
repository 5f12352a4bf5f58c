"""Prometheus metrics: counters and histograms kept in plain Python by an observer of every
exchange, and gauges read from the live state (in-flight requests, queues, tokens), all turned
into Prometheus families only when scraped.

The request path pays a dictionary update per number: no locks (one event loop) and no
prometheus-client objects per request. With several worker processes, the numbers are copied
into prometheus-client's multiprocess files once a second instead (see :meth:`Metrics.sync`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .exchange import Exchange, Observer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "MERGE", "TRACE"}
)
_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}

Spec = tuple[str, str, tuple[str, ...]]  # name, help, label names

# The live-state families, defined once for both the one-process collector and the
# multiprocess gauges.
IN_FLIGHT: Spec = ("ppproxy_requests_in_flight", "Requests being served, by route", ("route",))
QUEUED: Spec = (
    "ppproxy_requests_queued",
    "Requests waiting for a max_concurrency slot or their rate_limit turn, by route",
    ("route",),
)
TOKENS: Spec = (
    "ppproxy_token_requests",
    "Token requests to the identity provider by identity, scope and result",
    ("identity", "scope", "result"),
)
EXPIRY: Spec = (
    "ppproxy_token_expiry_seconds",
    "Seconds until the current token expires (negative: expired)",
    ("identity", "scope"),
)
ERRORS: Spec = ("ppproxy_identity_errors", "Identity provider errors by error code", ("code",))


class LocalCounter:
    """A counter per label set, in a dict: what the request path updates."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        self.spec: Spec = (name, help_text, tuple(labels))
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount


class LocalHistogram:
    """A histogram per label set: one count per bucket (not cumulative) and the sum last."""

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str], buckets: Sequence[float] = BUCKETS
    ) -> None:
        self.spec: Spec = (name, help_text, tuple(labels))
        self.buckets = tuple(buckets)
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        child = self.values.get(labels)
        if child is None:
            child = self.values[labels] = [0.0] * (len(self.buckets) + 2)
        child[bisect_left(self.buckets, value)] += 1  # the first bucket with le >= value
        child[-1] += value


@dataclass
class Snapshot:
    """The live state at one moment (see ``Runtime.snapshot``)."""

    in_flight: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)
    expiry: dict[tuple[str, str], float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class Metrics(Observer):
    """One set of metrics per application (tests run several side by side).

    With several worker processes (``multiprocess_dir``), prometheus-client's multiprocess mode
    is used: every worker writes its numbers to files in that folder and any worker's
    /_proxy/metrics sums them all, so a scrape that reaches one worker sees the whole.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = LocalCounter(
            "ppproxy_requests",
            "Requests by route, method and status class",
            ("route", "method", "status_class"),
        )
        self.duration = LocalHistogram(
            "ppproxy_request_duration_seconds",
            "Time from request to the last byte sent",
            ("route",),
        )
        self.upstream = LocalHistogram(
            "ppproxy_upstream_duration_seconds",
            "Time until the upstream's response headers",
            ("route",),
        )
        self.bytes_in = LocalCounter(
            "ppproxy_request_bytes", "Request body bytes received from clients", ("route",)
        )
        self.bytes_out = LocalCounter(
            "ppproxy_response_bytes", "Response body bytes sent to clients", ("route",)
        )
        self.local: list[LocalCounter | LocalHistogram] = [
            self.requests,
            self.duration,
            self.upstream,
            self.bytes_in,
            self.bytes_out,
        ]
        self._snapshot: Callable[[], Snapshot] | None = None
        self._shared: _Shared | None = None
        if multiprocess_dir is not None:
            # prometheus-client's multiprocess module carries no type hints.
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(_LocalCollector(self))

    def add(self, metric: LocalCounter | LocalHistogram) -> None:
        """Publish another counter or histogram (a feature's own, fed by its own code)."""
        self.local.append(metric)

    def finished(self, exchange: Exchange) -> None:
        """Count one exchange the forwarder handled (refusals by the guard are not counted)."""
        if exchange.refused:
            return
        route = (exchange.route or "",)
        status = exchange.status
        method = exchange.method
        # Methods are client-chosen strings: keep the label set bounded.
        method = method if method in _KNOWN_METHODS else "other"
        status_class = _STATUS_CLASS.get(status // 100, "aborted") if status >= 100 else "aborted"
        self.requests.inc((route[0], method, status_class))
        self.duration.observe(route, exchange.duration_ms / 1000)
        if exchange.upstream_ms is not None:
            self.upstream.observe(route, exchange.upstream_ms / 1000)
        self.bytes_in.inc(route, exchange.bytes_in)
        if exchange.bytes_out:
            self.bytes_out.inc(route, exchange.bytes_out)

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Read the live state from ``snapshot`` at scrape time (or once a second, see sync)."""
        self._snapshot = snapshot
        if self.multiprocess_dir is not None:
            self._shared = _Shared()

    def sync(self) -> None:
        """Copy this worker's numbers into the multiprocess files (several workers only)."""
        if self._shared is not None:
            self._shared.update(self.local, self._snapshot() if self._snapshot else Snapshot())

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> Iterator[Any]:
        """The local counters and histograms, and the live state, as Prometheus families."""
        for metric in self.local:
            yield _family(metric)
        if self._snapshot is not None:
            yield from _live_families(self._snapshot())


def _family(metric: LocalCounter | LocalHistogram) -> Any:
    name, help_text, labels = metric.spec
    if isinstance(metric, LocalCounter):
        counter = CounterMetricFamily(name, help_text, labels=list(labels))
        for values, value in metric.values.items():
            counter.add_metric(list(values), value)
        return counter
    histogram = HistogramMetricFamily(name, help_text, labels=list(labels))
    bounds = [_go_float(b) for b in metric.buckets] + ["+Inf"]
    for values, child in metric.values.items():
        cumulative, total = [], 0.0
        for bound, count in zip(bounds, child, strict=False):
            total += count
            cumulative.append((bound, total))
        histogram.add_metric(list(values), cumulative, child[-1])
    return histogram


def _live_families(snap: Snapshot) -> Iterator[Any]:
    families: list[tuple[Any, Spec, dict[Any, Any]]] = [
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


def _go_float(value: float) -> str:
    """A bucket bound as prometheus-client writes ``le`` (Go's float format)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]  # untyped helper


class _LocalCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.families()


class _Shared:
    """This worker's numbers as prometheus-client multiprocess metrics: counters and
    histograms by delta, gauges summed over live workers (requests), the soonest expiry over
    workers (each worker holds its own tokens)."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}
        self._observed: dict[tuple[str, tuple[str, ...]], list[float]] = {}

        def gauge(spec: Spec, mode: Literal["livesum", "livemin"]) -> Gauge:
            name, help_text, labels = spec
            return Gauge(name, help_text, labels, registry=None, multiprocess_mode=mode)

        self.in_flight = gauge(IN_FLIGHT, "livesum")
        self.queued = gauge(QUEUED, "livesum")
        self.expiry = gauge(EXPIRY, "livemin")
        self.tokens = LocalCounter(*TOKENS)
        self.errors = LocalCounter(*ERRORS)

    def update(self, local: Sequence[LocalCounter | LocalHistogram], snap: Snapshot) -> None:
        for route, n in snap.in_flight.items():
            self.in_flight.labels(route).set(n)
        for route, n in snap.queued.items():
            self.queued.labels(route).set(n)
        for pair, left in snap.expiry.items():
            self.expiry.labels(*pair).set(left)
        self.tokens.values = {k: float(v) for k, v in snap.tokens.items()}
        self.errors.values = {(k,): float(v) for k, v in snap.errors.items()}
        for metric in [*local, self.tokens, self.errors]:
            self._publish(metric)

    def _publish(self, metric: LocalCounter | LocalHistogram) -> None:
        name, help_text, labels = metric.spec
        if isinstance(metric, LocalCounter):
            counter = self._objects.get(name)
            if counter is None:
                counter = self._objects[name] = Counter(name, help_text, labels, registry=None)
            for values, value in metric.values.items():
                delta = value - self._counted.get((name, values), 0)
                if delta > 0:
                    counter.labels(*values).inc(delta)
                self._counted[(name, values)] = value
            return
        histogram = self._objects.get(name)
        if histogram is None:
            histogram = self._objects[name] = Histogram(
                name, help_text, labels, buckets=metric.buckets, registry=None
            )
        for values, child in metric.values.items():
            seen = self._observed.get((name, values)) or [0.0] * len(child)
            target = histogram.labels(*values)
            # prometheus-client takes observations one by one; these are counted already, so
            # they go into its (stable, if underscored) per-bucket values and sum directly.
            for i, count in enumerate(child[:-1]):
                if count > seen[i]:
                    target._buckets[i].inc(count - seen[i])
            if child[-1] != seen[-1]:
                target._sum.inc(child[-1] - seen[-1])
            self._observed[(name, values)] = list(child)
