"""Who may use the proxy, and for what: client keys, client grants and route policy.

Pure functions over prepared state; ``proxy.guard`` calls them from its middleware.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
from base64 import b64decode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from .config import RouteConfig
from .config.access import AccessClient, AccessConfig
from .errors import Forbidden, MethodNotAllowed, PathNotAllowed, Unauthenticated

KEY_HEADER = "X-Api-Key"
_SLASHES = re.compile("/{2,}")
_KEY_PREFIX = "ppk_"  # makes a leaked key easy to recognise for secret scanners


def new_key() -> tuple[str, str]:
    """A new random client key (256 bits) and its ``key_sha256``."""
    key = _KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Presented:
    """The key a request carries and the header it came in (removed before forwarding)."""

    key: str
    header: str


def presented_key(headers: Mapping[str, str]) -> Presented | None:
    """The client key from ``X-Api-Key``, ``Authorization: Bearer`` or the Basic password."""
    value = headers.get(KEY_HEADER)
    if value is not None:
        return Presented(value.strip(), KEY_HEADER)
    auth = headers.get("Authorization")
    if auth is None:
        return None
    scheme, _, credentials = auth.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":  # RFC 6750 §2.1; the scheme is case-insensitive
        return Presented(credentials, "Authorization")
    if scheme.lower() == "basic":  # RFC 7617 §2: base64(user-id ":" password)
        try:
            decoded = b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Presented("", "Authorization")
        return Presented(decoded.partition(":")[2], "Authorization")
    return Presented("", "Authorization")


def authenticate(access: AccessConfig, presented: Presented | None) -> AccessClient:
    """The client whose key was presented; ``Unauthenticated`` otherwise."""
    if presented is None:
        raise Unauthenticated(
            "this gateway needs a client key: send it as X-Api-Key, "
            "Authorization: Bearer <key>, or as the Basic password"
        )
    digest = hashlib.sha256(presented.key.encode("utf-8", "surrogateescape")).digest()
    found = None
    # Compare with every client, in constant time, so timing tells nothing about the keys.
    for client in access.clients:
        if hmac.compare_digest(digest, client.key_sha256) and presented.key:
            found = client
    if found is None:
        raise Unauthenticated("the client key is not valid")
    return found


def authorize(client: AccessClient, route: RouteConfig, method: str) -> None:
    """``Forbidden`` unless ``client`` may send ``method`` to ``route``."""
    if client.routes is not None and route.name not in client.routes:
        raise Forbidden(f"client {client.name!r} may not use route {route.name!r}")
    if client.methods is not None and method not in client.methods:
        raise Forbidden(f"client {client.name!r} may not send {method} requests")


class Policy:
    """A route's ``methods``, ``allow_paths`` and ``deny_paths``, compiled once at start.

    Paths are globs on the percent-decoded path after the route's prefix, matched without
    regard to case (the Power Platform upstreams are case-insensitive, so ``/Admin`` must not
    slip past a deny of ``/admin``): ``*`` is any run of characters within one segment,
    ``**`` any run across segments, ``?`` one character other than ``/``.
    """

    def __init__(self, route: RouteConfig) -> None:
        policy = route.policy
        self._prefix = route.prefix
        self._methods = policy.methods
        self._allow = [compile_glob(g) for g in policy.allow_paths]
        self._deny = [compile_glob(g) for g in policy.deny_paths]

    def check(self, method: str, raw_path: str, *, prefixed: bool = True) -> None:
        """Raise ``MethodNotAllowed`` or ``PathNotAllowed``; ``raw_path`` is the whole target,
        with the route's prefix unless it came to the route's own port (``prefixed=False``)."""
        if self._methods is not None and method not in self._methods:
            # 405, not 403: the method is what this resource takes through the gateway, for
            # every client, and the Allow header tells the client what it may do instead.
            raise MethodNotAllowed(
                f"this route takes only {', '.join(sorted(self._methods))}",
                allow=sorted(self._methods),
            )
        if not (self._allow or self._deny):
            return
        path = self.path_after_prefix(raw_path, None if prefixed else "/")
        if any(g.fullmatch(path) for g in self._deny):
            raise PathNotAllowed("this path is denied on this route")
        if self._allow and not any(g.fullmatch(path) for g in self._allow):
            raise PathNotAllowed("this path is not allowed on this route")

    def path_after_prefix(self, raw_path: str, prefix: str | None = None) -> str:
        """The decoded path after the prefix, always starting with ``/``."""
        path = raw_path.split("?", 1)[0]
        prefix = self._prefix if prefix is None else prefix
        if prefix != "/":
            path = path[len(prefix) :]
        # Hygiene ran first: no %2f, %5c or dot segments, so decoding adds no segment. Runs of
        # slashes count as one, as most servers read them, so "//admin" cannot dodge a deny.
        return _SLASHES.sub("/", "/" + unquote(path))


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob (``*``, ``**``, ``?``) as a case-insensitive regular expression."""
    if not pattern.startswith("/"):
        pattern = "/" + pattern
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def policies(routes: Sequence[RouteConfig]) -> dict[str, Policy]:
    return {r.name: Policy(r) for r in routes}
