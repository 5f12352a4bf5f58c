"""Route policy: the methods a route takes and the paths it allows or denies, compiled once.

Pure: the guard calls :meth:`Policy.check` for every request that reached a route. The glob
grammar and the forms a path is judged in are in :mod:`proxy.globs`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import RouteConfig
from .errors import MethodNotAllowed, PathNotAllowed
from .globs import compile_glob, forms

__all__ = ["Policy", "compile_glob", "policies"]


class Policy:
    """A route's ``methods``, ``allow_paths`` and ``deny_paths``, compiled once at start.

    Paths are globs (:mod:`proxy.globs`) on the percent-decoded path after the route's prefix,
    matched without regard to case (the Power Platform upstreams are case-insensitive, so
    ``/Admin`` must not slip past a deny of ``/admin``). A deny holds when the path matches in
    either of its forms; an allow only when it matches in both.
    """

    def __init__(self, route: RouteConfig) -> None:
        policy = route.policy
        self._prefix = route.prefix
        self._methods = policy.methods
        self._allow = [compile_glob(g) for g in policy.allow_paths]
        self._deny = [compile_glob(g) for g in policy.deny_paths]

    def check(self, method: str, raw_path: str, *, prefixed: bool = True) -> None:
        """Raise ``MethodNotAllowed`` or ``PathNotAllowed``; ``raw_path`` is the whole target,
        with the route's prefix unless it came to the route's own port (``prefixed=False``).
        ``method`` is the one the upstream will act on (an allowed override's)."""
        if self._methods is not None and method not in self._methods:
            # 405, not 403: the method is what this resource takes through the gateway, for
            # every client, and the Allow header tells the client what it may do instead.
            raise MethodNotAllowed(
                f"this route takes only {', '.join(sorted(self._methods))}",
                allow=sorted(self._methods),
            )
        if not (self._allow or self._deny):
            return
        strict, lenient = forms(self.path_after_prefix(raw_path, None if prefixed else "/"))
        for glob in self._deny:
            if glob.fullmatch(strict) or (lenient is not strict and glob.fullmatch(lenient)):
                raise PathNotAllowed("this path is denied on this route")
        if self._allow and not (
            any(g.fullmatch(strict) for g in self._allow)
            and (lenient is strict or any(g.fullmatch(lenient) for g in self._allow))
        ):
            raise PathNotAllowed("this path is not allowed on this route")

    def path_after_prefix(self, raw_path: str, prefix: str | None = None) -> str:
        """The raw path after the prefix (no query). Hygiene ran first: no %2f, %5c or dot
        segments, so decoding it adds no segment."""
        path = raw_path.split("?", 1)[0]
        prefix = self._prefix if prefix is None else prefix
        if prefix != "/":
            path = path[len(prefix) :]
        return path


def policies(routes: Sequence[RouteConfig]) -> dict[str, Policy]:
    return {r.name: Policy(r) for r in routes}
