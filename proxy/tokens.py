"""Access tokens: what a token is, how getting one fails, and the provider interface.

A provider has one small interface (:class:`TokenProvider`): ``await token(scope)``,
``invalidate(token)``, ``status()`` and ``await close()``; callers need nothing else. The MSAL
providers in :mod:`proxy.identity` ask Entra ID every time; :mod:`proxy.token_cache` wraps them
with the cache (single flight, refresh ahead, backoff, and at most one refresh forced by an
upstream's 401 per ``tokens.min_refresh_interval``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import aadsts


@dataclass(frozen=True, slots=True)
class Token:
    """An access token; ``value`` never shows in a repr."""

    value: str = field(repr=False)
    scope: str
    expires_at: float  # time.monotonic() clock
    lifetime: float
    expires_wall: float  # time.time() clock, for display
    source: str = "entra"  # "entra" when this caller waited for it, "cache" otherwise
    # A few claims decoded once when the token arrived (never the token): what the tap shows.
    claims: Mapping[str, Any] | None = field(default=None, compare=False)

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.monotonic() if now is None else now)


class TokenError(Exception):
    """Entra ID (or the way to it) refused or failed to give a token."""

    def __init__(
        self,
        error: str,
        description: str = "",
        codes: Sequence[int] = (),
        *,
        retry_after: float | None = None,
    ) -> None:
        # Entra's descriptions hold "\r\n" before "Trace ID:" and the like: one line, so no
        # log line or message shows them escaped.
        description = " ".join(description.split())
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.codes = tuple(codes)
        self.retry_after = retry_after  # the identity provider's Retry-After, in seconds

    @property
    def summary(self) -> str:
        """The description without Entra's trace, correlation and time stamps."""
        return self.description.split(" Trace ID:", 1)[0]

    @property
    def hint(self) -> str | None:
        """The portal step that fixes this error, when its AADSTS code is a known one."""
        return aadsts.hint(self.codes, self.description)


@dataclass(frozen=True, slots=True)
class ScopeStatus:
    """What readiness and metrics show for one (identity, scope)."""

    scope: str
    expires_in: float | None
    last_refresh: float | None  # time.time()
    last_error: str | None
    retry_in: float | None
    successes: int = 0  # token requests that returned a token
    errors: Mapping[str, int] = field(default_factory=dict)  # failed ones, by error code


class TokenProvider(Protocol):
    """Where access tokens come from; everything the proxy asks of a credential."""

    async def token(self, scope: str) -> Token:
        """A token for ``scope``; raises ``TokenError`` or ``TokenUnavailable``."""
        ...

    def invalidate(self, token: Token) -> bool:
        """The upstream refused ``token``: do not hand it out again, if allowed. True when the
        next ``token(scope)`` gives another token (worth a retry); False when it would be the
        same one (a refresh was forced too recently: the refusal stands)."""
        ...

    def status(self) -> Mapping[str, ScopeStatus]:
        """Per scope asked for so far: expiry, last refresh, errors (empty when not kept)."""
        ...

    async def close(self) -> None:
        """Stop background work and release connections."""
        ...
