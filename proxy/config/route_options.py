"""Per-route options beyond the target: access policy, upstream limits, and header/URL edits.

Each group is its own frozen dataclass so that a feature reads only its own settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..globs import glob_problem
from .parse import Problems, get, show
from .rates import Rate, parse_rate

_TOKEN_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token
_PROTECTED_HEADERS = frozenset({"authorization", "host"})


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Who may do what on a route: checked by the guard before anything is forwarded."""

    methods: frozenset[str] | None = None  # None: every method
    allow_paths: tuple[str, ...] = ()  # glob patterns on the path after the prefix
    deny_paths: tuple[str, ...] = ()
    max_body_bytes: int | None = None
    # Honour X-HTTP-Method and friends; the overriding method is checked too (proxy.overrides).
    allow_method_override: bool = False


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """How hard the proxy may push the upstream."""

    max_concurrency: int | None = None  # None: unlimited
    max_queue: int = 100
    queue_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class RouteThrottling:
    """How the route treats the upstream's 429/503 + Retry-After, and its own pace."""

    retry_throttled: bool = True  # wait Retry-After and send again
    max_throttle_wait: float = 30.0  # longest Retry-After waited for, in seconds
    throttle_retries: int = 3  # resends of one request at most
    rate_limit: Rate | None = None  # requests spread evenly: one per rate.interval


@dataclass(frozen=True, slots=True)
class RouteEdits:
    """Header and URL edits, for tools that cannot be changed."""

    set_request_headers: Mapping[str, str] = field(default_factory=dict)  # replace the client's
    remove_request_headers: frozenset[str] = frozenset()
    set_response_headers: Mapping[str, str] = field(default_factory=dict)
    remove_response_headers: frozenset[str] = frozenset()
    default_query: Mapping[str, str] = field(default_factory=dict)
    rewrite_links: bool = False
    rewrite_max_bytes: int = 8 * 1024 * 1024
    default_request_headers: Mapping[str, str] = field(default_factory=dict)  # when none sent


POLICY_KEYS = {"methods", "allow_paths", "deny_paths", "max_body_bytes", "allow_method_override"}
LIMIT_KEYS = {"max_concurrency", "max_queue", "queue_timeout"}
THROTTLE_KEYS = {"retry_throttled", "max_throttle_wait", "throttle_retries", "rate_limit"}
EDIT_KEYS = {
    "set_request_headers",
    "default_request_headers",
    "remove_request_headers",
    "set_response_headers",
    "remove_response_headers",
    "default_query",
    "rewrite_links",
    "rewrite_max_bytes",
}
OPTION_KEYS = POLICY_KEYS | LIMIT_KEYS | THROTTLE_KEYS | EDIT_KEYS


def str_list(t: Mapping[str, Any], key: str, path: str, p: Problems) -> tuple[str, ...]:
    value = t.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        p.add(f"{path}.{key}", "must be an array of strings")
        return ()
    return tuple(value)


def str_map(t: Mapping[str, Any], key: str, path: str, p: Problems) -> dict[str, str]:
    value = t.get(key, {})
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        p.add(f"{path}.{key}", 'must be a table of strings, e.g. { Name = "value" }')
        return {}
    return dict(value)


def _positive_int(t: Mapping[str, Any], key: str, path: str, p: Problems) -> int | None:
    value = get(t, key, int, path, p, None)
    if value is not None and value <= 0:
        p.add(f"{path}.{key}", f"must be a positive integer, got {value}")
        return None
    return value  # type: ignore[no-any-return]


def _header_names(names: tuple[str, ...], key: str, path: str, p: Problems) -> frozenset[str]:
    for name in names:
        if not _TOKEN_CHARS.match(name):
            p.add(f"{path}.{key}", f"{show(name)} is not a header name")
        elif name.lower() in _PROTECTED_HEADERS:
            p.add(f"{path}.{key}", f"{name} cannot be changed this way")
    return frozenset(n.lower() for n in names)


def _headers(t: Mapping[str, Any], key: str, path: str, p: Problems) -> dict[str, str]:
    headers = str_map(t, key, path, p)
    _header_names(tuple(headers), key, path, p)
    for name, value in headers.items():
        if any(c in value for c in "\r\n\0"):
            p.add(f"{path}.{key}.{name}", "must not contain line breaks or NUL")
    return headers


def method_set(t: Mapping[str, Any], path: str, p: Problems) -> frozenset[str] | None:
    """``methods = [...]``, upper-cased; None when the key is absent (every method)."""
    if "methods" not in t:
        return None
    names = str_list(t, "methods", path, p)
    for m in names:
        if not _TOKEN_CHARS.match(m):  # RFC 9110 §9.1: a method is a token
            p.add(f"{path}.methods", f"{show(m)} is not an HTTP method")
    methods = frozenset(m.upper() for m in names)
    if not methods:
        p.add(f"{path}.methods", "must name at least one method (leave it out to allow all)")
    return methods


def _globs(t: Mapping[str, Any], key: str, path: str, p: Problems) -> tuple[str, ...]:
    patterns = str_list(t, key, path, p)
    for pattern in patterns:
        problem = glob_problem(pattern)
        if problem is not None:
            p.add(f"{path}.{key}", problem)
    return patterns


def parse_policy(t: Mapping[str, Any], path: str, p: Problems) -> RoutePolicy:
    return RoutePolicy(
        method_set(t, path, p),
        _globs(t, "allow_paths", path, p),
        _globs(t, "deny_paths", path, p),
        _positive_int(t, "max_body_bytes", path, p),
        get(t, "allow_method_override", bool, path, p, False),
    )


def parse_limits(t: Mapping[str, Any], path: str, p: Problems) -> RouteLimits:
    default = RouteLimits()
    max_queue = get(t, "max_queue", int, path, p, default.max_queue)
    if max_queue < 0:
        p.add(f"{path}.max_queue", "must be 0 or more")
    queue_timeout = get(t, "queue_timeout", float, path, p, default.queue_timeout)
    if queue_timeout <= 0:
        p.add(f"{path}.queue_timeout", "must be a positive number of seconds")
    return RouteLimits(_positive_int(t, "max_concurrency", path, p), max_queue, queue_timeout)


def parse_throttling(t: Mapping[str, Any], path: str, p: Problems) -> RouteThrottling:
    default = RouteThrottling()
    wait = get(t, "max_throttle_wait", float, path, p, default.max_throttle_wait)
    if wait < 0:
        p.add(f"{path}.max_throttle_wait", "must be 0 or more seconds")
    retries = get(t, "throttle_retries", int, path, p, default.throttle_retries)
    if retries < 0:
        p.add(f"{path}.throttle_retries", "must be 0 or more")
    return RouteThrottling(
        get(t, "retry_throttled", bool, path, p, default.retry_throttled),
        wait,
        retries,
        parse_rate(t, "rate_limit", path, p),
    )


def parse_edits(t: Mapping[str, Any], path: str, p: Problems) -> RouteEdits:
    default = RouteEdits()
    replaced = _headers(t, "set_request_headers", path, p)
    filled = _headers(t, "default_request_headers", path, p)
    both = {n.lower() for n in replaced} & {n.lower() for n in filled}
    for name in sorted(both):
        p.add(
            f"{path}.default_request_headers",
            f"{name} is in set_request_headers too: set replaces the client's value, default "
            "fills it only when missing; keep one",
        )
    return RouteEdits(
        replaced,
        _header_names(
            str_list(t, "remove_request_headers", path, p), "remove_request_headers", path, p
        ),
        _headers(t, "set_response_headers", path, p),
        _header_names(
            str_list(t, "remove_response_headers", path, p), "remove_response_headers", path, p
        ),
        str_map(t, "default_query", path, p),
        get(t, "rewrite_links", bool, path, p, default.rewrite_links),
        _positive_int(t, "rewrite_max_bytes", path, p) or default.rewrite_max_bytes,
        filled,
    )
