"""Route policy: the methods a route takes and the paths it allows or denies, compiled once.

Pure: the guard calls :meth:`Policy.check` for every request that reached a route.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import unquote

from .config import RouteConfig
from .errors import MethodNotAllowed, PathNotAllowed

_SLASHES = re.compile("/{2,}")


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
