"""Access tokens: the provider interface and the per-scope cache that wraps any provider.

A provider has one small interface (:class:`TokenProvider`): ``await token(scope)``,
``invalidate(token)``, ``status()`` and ``await close()``; callers need nothing else. The MSAL
providers in :mod:`proxy.identity` ask Entra ID every time. :class:`CachingProvider` wraps any
provider with one cache entry per scope: single flight (one request to Entra however many callers
wait), refresh ahead of expiry in the background, and a backoff after failures so a broken
credential is not hammered. An upstream's refusal (401) drops the token at most once per
``min_refresh_interval`` (``tokens.min_refresh_interval``) per scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from .errors import TokenUnavailable

log = structlog.get_logger("proxy.tokens")


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
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.codes = tuple(codes)
        self.retry_after = retry_after  # the identity provider's Retry-After, in seconds


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


class _Entry:
    """The cache for one scope: current token, the one fetch in flight, and the timer."""

    def __init__(self) -> None:
        self.token: Token | None = None
        self.cached: Token | None = None  # the same token, marked source="cache"
        self.task: asyncio.Task[Token | TokenError] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.error: TokenError | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.last_refresh: float | None = None
        self.forced_at: float | None = None  # when an upstream's refusal last dropped the token
        self.limited = 0  # refusals since then that could not force another refresh
        # Counters for metrics: token requests by result, and errors by Entra's error code.
        self.successes = 0
        self.errors: dict[str, int] = {}


def refresh_lead(lifetime: float) -> float:
    """Seconds before expiry to refresh: half the lifetime, at most 15 minutes.

    Entra's tokens live 60-90 minutes, so they are refreshed 15 minutes early; short-lived
    tokens get half their life as the window for the refresh to land before the safety margin."""
    return min(lifetime * 0.5, 900.0)


def safety_margin(lifetime: float) -> float:
    """A token with less than this left is never handed out: it could expire in flight."""
    return min(lifetime * 0.1, 60.0)


class CachingProvider:
    """One cache entry per scope over ``inner``, with single flight and refresh ahead."""

    def __init__(
        self,
        inner: TokenProvider,
        *,
        name: str = "",
        wait_timeout: float = 5.0,
        max_backoff: float = 60.0,
        min_refresh_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._name = name  # the identity, for log events
        self._wait_timeout = wait_timeout
        self._min_refresh_interval = min_refresh_interval
        self._max_backoff = max_backoff
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"CachingProvider({self._inner!r}, scopes={list(self._entries)!r})"

    async def token(self, scope: str) -> Token:
        entry = self._entries.get(scope) or self._entries.setdefault(scope, _Entry())
        now = self._clock()
        cached = entry.cached
        if cached is not None and cached.expires_at - now > safety_margin(cached.lifetime):
            return cached
        if entry.error is not None and now < entry.retry_at and entry.task is None:
            raise self._unavailable(entry.error, entry.retry_at - now)
        task = self._start(scope, entry)
        try:
            result = await asyncio.wait_for(asyncio.shield(task), self._wait_timeout)
        except TimeoutError:
            raise TokenUnavailable(
                f"no token from the identity provider within {self._wait_timeout:g} s",
                retry_after=self._wait_timeout,
            ) from None
        if isinstance(result, TokenError):
            raise self._unavailable(result, entry.retry_at - self._clock())
        return result

    def invalidate(self, token: Token) -> bool:
        """Drop ``token`` if it is still the current one, at most once per
        ``min_refresh_interval`` per scope: an upstream that refuses every token (a missing
        role, a wrong audience) would otherwise turn each request into a token request."""
        entry = self._entries.get(token.scope)
        if entry is None or entry.token is None or entry.token.value != token.value:
            return True  # already replaced (or being fetched): the retry costs no token request
        now = self._clock()
        if entry.forced_at is not None and now - entry.forced_at < self._min_refresh_interval:
            entry.limited += 1
            if entry.limited == 1:  # once per interval: a storm must not become a log flood
                log.warning(
                    "token.refresh_limited",
                    identity=self._name,
                    scope=token.scope,
                    min_refresh_interval=self._min_refresh_interval,
                )
            return False
        entry.forced_at, entry.limited = now, 0
        entry.token = entry.cached = None
        self._inner.invalidate(token)
        return True

    def status(self) -> Mapping[str, ScopeStatus]:
        now = self._clock()
        return {
            scope: ScopeStatus(
                scope,
                e.token.expires_at - now if e.token else None,
                e.last_refresh,
                f"{e.error.error}: {e.error.description}".rstrip(": ") if e.error else None,
                max(0.0, e.retry_at - now) if e.error else None,
                e.successes,
                dict(e.errors),
            )
            for scope, e in self._entries.items()
        }

    async def close(self) -> None:
        self._closed = True
        tasks = []
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.task is not None:
                entry.task.cancel()
                tasks.append(entry.task)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._inner.close()

    def _start(self, scope: str, entry: _Entry) -> asyncio.Task[Token | TokenError]:
        if entry.task is None:
            entry.task = asyncio.get_running_loop().create_task(self._fetch(scope, entry))
        return entry.task

    async def _fetch(self, scope: str, entry: _Entry) -> Token | TokenError:
        try:
            token = await self._inner.token(scope)
        except TokenError as e:
            return self._failed(scope, entry, e)
        except Exception as e:  # any other failure must not kill the cache
            return self._failed(scope, entry, TokenError("internal_error", type(e).__name__))
        finally:
            entry.task = None
        entry.token, entry.cached = token, replace(token, source="cache")
        entry.error, entry.failures, entry.last_refresh = None, 0, time.time()
        entry.successes += 1
        log.info(
            "token.refreshed", identity=self._name, scope=scope, expires_in=round(token.lifetime)
        )
        self._schedule(scope, entry, max(0.0, token.lifetime - refresh_lead(token.lifetime)))
        return token

    def _failed(self, scope: str, entry: _Entry, error: TokenError) -> TokenError:
        if entry.error is None or entry.error.error != error.error:
            log.warning(
                "token.failed",
                identity=self._name,
                scope=scope,
                error=error.error,
                description=error.description,
            )
        entry.error = error
        entry.failures += 1
        entry.errors[error.error] = entry.errors.get(error.error, 0) + 1
        backoff = min(self._max_backoff, 2.0 ** (entry.failures - 1))
        delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311  # jitter, not cryptography
        if error.retry_after is not None:  # the identity provider asked for a pause: honour it
            delay = max(delay, min(error.retry_after, 3600.0))
        entry.retry_at = self._clock() + delay
        self._schedule(scope, entry, delay)
        return error

    def _schedule(self, scope: str, entry: _Entry, delay: float) -> None:
        if self._closed:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = asyncio.get_running_loop().call_later(delay, self._start, scope, entry)

    def _unavailable(self, error: TokenError, retry_after: float) -> TokenUnavailable:
        return TokenUnavailable(
            "the identity provider did not issue a token",
            entra_error=error.error,
            entra_description=error.description,
            entra_codes=error.codes,
            retry_after=max(1.0, retry_after),
        )
