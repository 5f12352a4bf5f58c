"""The [access] table: the clients of a team gateway and what each may do.

Keys are never stored: each client is known by the SHA-256 of its key (``ppproxy keygen``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from .parse import NAME, Problems, get, only, show
from .rates import Rate, parse_rate
from .route_options import method_set, str_list

_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CLIENT_KEYS = {"name", "key_sha256", "routes", "methods", "admin", "max_concurrency", "rate_limit"}


@dataclass(frozen=True, slots=True)
class AccessClient:
    """One client of the gateway. ``None`` for routes or methods means every one."""

    name: str
    key_sha256: bytes  # the digest, 32 bytes; compared with hmac.compare_digest
    routes: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    admin: bool = False  # may open the debugging tap
    max_concurrency: int | None = None  # its requests in flight at most; None: unlimited
    rate_limit: Rate | None = None  # its requests per window at most; None: unlimited

    def __repr__(self) -> str:
        return f"AccessClient(name={self.name!r})"


@dataclass(frozen=True, slots=True)
class AccessConfig:
    clients: tuple[AccessClient, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether every request must carry a client key."""
        return bool(self.clients)


def parse_access(raw: Any, route_names: Set[str], p: Problems) -> AccessConfig:
    """``[access]`` with its ``[[access.clients]]``; ``route_names`` are the configured routes."""
    if raw is None:
        return AccessConfig()
    if not isinstance(raw, Mapping):
        p.add("access", "must be a table")
        return AccessConfig()
    only(raw, {"clients"}, "access", p)
    items = raw.get("clients", [])
    if not isinstance(items, list):
        p.add("access.clients", "must be an array of tables, written [[access.clients]]")
        return AccessConfig()
    clients: list[AccessClient] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for i, t in enumerate(items):
        path = f"access.clients[{i}]"
        if not isinstance(t, Mapping):
            p.add(path, "must be a table")
            continue
        client = _client(t, path, route_names, p)
        if client is None:
            continue
        if client.name in names:
            p.add(
                f"{path}.name",
                f"{client.name!r} is also used by access.clients[{names[client.name]}]",
            )
        if client.key_sha256 in digests:
            # Two clients with one key could not be told apart in the audit trail.
            p.add(
                f"{path}.key_sha256",
                f"the same key as access.clients[{digests[client.key_sha256]}]",
            )
        names.setdefault(client.name, i)
        digests.setdefault(client.key_sha256, i)
        clients.append(client)
    return AccessConfig(tuple(clients))


def _client(
    t: Mapping[str, Any], path: str, route_names: Set[str], p: Problems
) -> AccessClient | None:
    only(t, _CLIENT_KEYS, path, p)
    name = get(t, "name", str, path, p, "")
    if not name:
        p.add(f"{path}.name", "is required")
    elif not NAME.match(name):
        p.add(f"{path}.name", "must be letters, digits, '_', '.' or '-'")
    digest = get(t, "key_sha256", str, path, p, "")
    if not _HEX_SHA256.match(digest):
        # Never echo the value: someone may have pasted the key itself here.
        p.add(
            f"{path}.key_sha256", "must be 64 hex digits, the SHA-256 of the key (ppproxy keygen)"
        )
    elif digest.lower() == _EMPTY_SHA256:
        p.add(f"{path}.key_sha256", "is the SHA-256 of an empty key")
    routes = None
    if "routes" in t:
        listed = str_list(t, "routes", path, p)
        for r in listed:
            if r not in route_names:
                p.add(f"{path}.routes", f"no route named {show(r)}")
        routes = frozenset(listed)
    methods = method_set(t, path, p)
    admin = get(t, "admin", bool, path, p, False)
    max_concurrency = get(t, "max_concurrency", int, path, p, None)
    if max_concurrency is not None and max_concurrency < 1:
        p.add(f"{path}.max_concurrency", f"must be 1 or more, got {max_concurrency}")
    rate_limit = parse_rate(t, "rate_limit", path, p)
    if not name or not _HEX_SHA256.match(digest):
        return None
    return AccessClient(
        name, bytes.fromhex(digest), routes, methods, admin, max_concurrency, rate_limit
    )
