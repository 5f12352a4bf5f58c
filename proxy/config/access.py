"""The [access] table: the clients of a team gateway and what each may do.

A client is known by the SHA-256 of its key (``ppproxy keygen``; keys are never stored), or, with
``[access.entra]``, matches members who sign in with Entra ID by ``users`` (object ids or UPNs),
``groups`` (group object ids) or ``roles`` (the gateway app's app roles).
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
from .signin import EntraConfig, parse_entra

_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CLIENT_KEYS = {
    "name",
    "key_sha256",
    "routes",
    "methods",
    "admin",
    "users",
    "groups",
    "roles",
    "max_concurrency",
    "rate_limit",
}


@dataclass(frozen=True, slots=True)
class AccessClient:
    """One client of the gateway. ``None`` for routes or methods means every one."""

    name: str
    key_sha256: bytes | None  # the digest, 32 bytes; compared with hmac.compare_digest
    routes: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    admin: bool = False  # may open the debugging tap
    # Signed-in members this entry matches: lower-cased object ids and UPNs, lower-cased group
    # object ids, app role values as they are.
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    max_concurrency: int | None = None  # its requests in flight at most; None: unlimited
    rate_limit: Rate | None = None  # its requests per window at most; None: unlimited

    def __repr__(self) -> str:
        return f"AccessClient(name={self.name!r})"

    @property
    def matches_members(self) -> bool:
        return bool(self.users or self.groups or self.roles)


@dataclass(frozen=True, slots=True)
class AccessConfig:
    clients: tuple[AccessClient, ...] = ()
    entra: EntraConfig | None = None  # members may sign in with Entra ID

    @property
    def enabled(self) -> bool:
        """Whether every request must carry a client key or a member's token."""
        return bool(self.clients)


def parse_access(raw: Any, route_names: Set[str], p: Problems) -> AccessConfig:
    """``[access]`` with its ``[[access.clients]]``; ``route_names`` are the configured routes."""
    if raw is None:
        return AccessConfig()
    if not isinstance(raw, Mapping):
        p.add("access", "must be a table")
        return AccessConfig()
    only(raw, {"clients", "entra"}, "access", p)
    entra = parse_entra(raw.get("entra"), p)
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
        client = _client(t, path, route_names, entra is not None, p)
        if client is None:
            continue
        if client.name in names:
            p.add(
                f"{path}.name",
                f"{client.name!r} is also used by access.clients[{names[client.name]}]",
            )
        if client.key_sha256 is not None and client.key_sha256 in digests:
            # Two clients with one key could not be told apart in the audit trail.
            p.add(
                f"{path}.key_sha256",
                f"the same key as access.clients[{digests[client.key_sha256]}]",
            )
        names.setdefault(client.name, i)
        if client.key_sha256 is not None:
            digests.setdefault(client.key_sha256, i)
        clients.append(client)
    if entra is not None and not any(c.matches_members for c in clients):
        p.add(
            "access.entra",
            "no [[access.clients]] entry has users, groups or roles: every member who signs in "
            "would be refused",
        )
    return AccessConfig(tuple(clients), entra)


def _client(
    t: Mapping[str, Any], path: str, route_names: Set[str], signin: bool, p: Problems
) -> AccessClient | None:
    only(t, _CLIENT_KEYS, path, p)
    name = get(t, "name", str, path, p, "")
    if not name:
        p.add(f"{path}.name", "is required")
    elif not NAME.match(name):
        p.add(f"{path}.name", "must be letters, digits, '_', '.' or '-'")
    members = {key: _members(t, key, path, p) for key in ("users", "groups", "roles")}
    given = [key for key in members if key in t]
    if given and not signin:
        p.add(f"{path}.{given[0]}", "needs [access.entra]: members sign in with Entra ID")
    digest = get(t, "key_sha256", str, path, p, "")
    key_ok = bool(_HEX_SHA256.match(digest))
    if "key_sha256" not in t and not given:
        p.add(
            f"{path}.key_sha256",
            "is required (ppproxy keygen), unless the entry matches signed-in members with "
            "users, groups or roles",
        )
    elif "key_sha256" in t and not key_ok:
        # Never echo the value: someone may have pasted the key itself here.
        p.add(
            f"{path}.key_sha256", "must be 64 hex digits, the SHA-256 of the key (ppproxy keygen)"
        )
    elif key_ok and digest.lower() == _EMPTY_SHA256:
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
    if not name or ("key_sha256" in t and not key_ok) or ("key_sha256" not in t and not given):
        return None
    return AccessClient(
        name,
        bytes.fromhex(digest) if key_ok else None,
        routes,
        methods,
        admin,
        frozenset(m.lower() for m in members["users"]),
        frozenset(m.lower() for m in members["groups"]),
        frozenset(members["roles"]),
        max_concurrency,
        rate_limit,
    )


def _members(t: Mapping[str, Any], key: str, path: str, p: Problems) -> tuple[str, ...]:
    if key not in t:
        return ()
    listed = str_list(t, key, path, p)
    if not listed or not all(v.strip() for v in listed):
        p.add(f"{path}.{key}", "must be a non-empty array of non-empty strings")
    return tuple(v.strip() for v in listed if v.strip())
