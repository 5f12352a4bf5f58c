"""The token cache: one entry per key, each with single flight (one request to Entra however
many callers wait), refresh ahead of expiry, and a backoff after failures so a broken credential
is not hammered.

:class:`TokenCache` keeps tokens by any key: :mod:`proxy.caching_provider` by scope, for the
identities' own tokens, refreshed in the background; :mod:`proxy.identity.on_behalf_of` by
(member, scope), for the tokens it gets for members.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
from dataclasses import replace
from typing import Any, Generic, TypeVar

import structlog

from .errors import ProxyError, TokenUnavailable
from .tokens import ScopeStatus, Token, TokenError

log = structlog.get_logger("proxy.tokens")


class _Entry:
    """The cache for one key: current token, the one fetch in flight, and the timer."""

    __slots__ = (
        "cached", "context", "error", "errors", "failures", "forced_at", "last_refresh",
        "limited", "refused", "retry_at", "successes", "task", "timer", "token",
    )  # fmt: skip

    def __init__(self) -> None:
        self.token: Token | None = None
        self.cached: Token | None = None  # the same token, marked source="cache"
        self.task: asyncio.Task[Token | TokenError] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.context: Any = None  # what the last caller gave for fetching (an assertion)
        self.error: TokenError | None = None
        self.refused: Hashable | None = None  # the context ``error`` is the fault of, if any
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


K = TypeVar("K", bound=Hashable)
Fetch = Callable[[K, Any], Awaitable[Token]]


class TokenCache(Generic[K]):
    """Tokens by key (a scope, or a user and a scope), each with single flight, refresh
    ahead and a backoff after failures.

    ``fetch(key, context)`` gets a new token; ``context`` is what the caller of :meth:`get`
    passed (the on-behalf-of assertion), kept for the refresh. Refresh ahead happens either on
    a timer (``refresh_on_use=False``: a handful of scopes, refreshed whether used or not) or
    when a caller finds its token in the refresh window (``refresh_on_use=True``: one entry per
    user, refreshed only while the user is active, no timers). ``entries`` may be a bounded
    mapping (an LRU cache) that forgets keys on its own.
    """

    def __init__(
        self,
        fetch: Fetch[K],
        *,
        name: str = "",
        wait_timeout: float = 5.0,
        max_backoff: float = 60.0,
        min_refresh_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        entries: MutableMapping[K, _Entry] | None = None,
        refresh_on_use: bool = False,
        log_fields: Callable[[K], dict[str, Any]] = lambda key: {"scope": key},
    ) -> None:
        self._fetch_token = fetch
        self._name = name  # the identity, for log events
        self._wait_timeout = wait_timeout
        self._max_backoff = max_backoff
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._entries: MutableMapping[K, _Entry] = {} if entries is None else entries
        self._on_use = refresh_on_use
        self._log_fields = log_fields
        self._closed = False

    def known(self) -> list[K]:
        """The keys with an entry."""
        return list(self._entries)

    async def get(self, key: K, context: Any = None) -> Token:
        """A token for ``key``: the cached one while it has more than the safety margin left,
        else the one fetch in flight (started if needed), waited for ``wait_timeout`` at most."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        now = self._clock()
        cached = entry.cached
        if cached is not None:
            left = cached.expires_at - now
            if left > safety_margin(cached.lifetime):
                if self._on_use and left < refresh_lead(cached.lifetime) and now >= entry.retry_at:
                    entry.context = context
                    self._start(key, entry)  # in the background: this caller goes on
                return cached
        # A refusal the caller caused (its context) is not held against a new context.
        held = entry.refused is None or entry.refused == self._fingerprint(context)
        if entry.error is not None and now < entry.retry_at and entry.task is None and held:
            raise self._unavailable(entry.error, entry.retry_at - now)
        entry.context = context
        task = self._start(key, entry)
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

    def drop(self, key: K, token: Token) -> bool:
        """Forget ``token`` if it is still the current one for ``key``, at most once per
        ``min_refresh_interval`` per key: an upstream that refuses every token (a missing role,
        a wrong audience) would otherwise turn each request into a token request. True when the
        next :meth:`get` gives another token (worth a retry), False when it would not."""
        entry = self._entries.get(key)
        if entry is None or entry.token is None or entry.token.value != token.value:
            return True  # already replaced (or being fetched): the retry costs no token request
        now = self._clock()
        if entry.forced_at is not None and now - entry.forced_at < self._min_refresh_interval:
            entry.limited += 1
            if entry.limited == 1:  # once per interval: a storm must not become a log flood
                log.warning(
                    "token.refresh_limited",
                    identity=self._name,
                    **self._log_fields(key),
                    min_refresh_interval=self._min_refresh_interval,
                )
            return False
        entry.forced_at, entry.limited = now, 0
        entry.token = entry.cached = None
        return True

    def status(self, key: K) -> ScopeStatus | None:
        e = self._entries.get(key)
        if e is None:
            return None
        now = self._clock()
        return ScopeStatus(
            str(key),
            e.token.expires_at - now if e.token else None,
            e.last_refresh,
            f"{e.error.error}: {e.error.description}".rstrip(": ") if e.error else None,
            max(0.0, e.retry_at - now) if e.error else None,
            e.successes,
            dict(e.errors),
        )

    async def close(self) -> None:
        self._closed = True
        tasks = []
        for entry in list(self._entries.values()):
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.task is not None:
                entry.task.cancel()
                tasks.append(entry.task)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start(self, key: K, entry: _Entry) -> asyncio.Task[Token | TokenError]:
        if entry.task is None:
            entry.task = asyncio.get_running_loop().create_task(self._fetch(key, entry))
        return entry.task

    async def _fetch(self, key: K, entry: _Entry) -> Token | TokenError:
        context = entry.context  # the one this request is made with
        try:
            token = await self._fetch_token(key, context)
        except TokenError as e:
            entry.refused = self._fingerprint(context) if self._caller_caused(e) else None
            return self._failed(key, entry, e)
        except Exception as e:  # any other failure must not kill the cache
            entry.refused = None
            return self._failed(key, entry, TokenError("internal_error", type(e).__name__))
        finally:
            # The context may be a member's token: kept no longer than the request for it.
            entry.task, entry.context = None, None
        entry.token, entry.cached = token, replace(token, source="cache")
        entry.error, entry.failures, entry.last_refresh = None, 0, time.time()
        entry.refused = None
        entry.retry_at = 0.0
        entry.successes += 1
        self.counted(key, None)
        log.info(
            "token.refreshed",
            identity=self._name,
            **self._log_fields(key),
            expires_in=round(token.lifetime),
        )
        if not self._on_use:
            self._schedule(key, entry, max(0.0, token.lifetime - refresh_lead(token.lifetime)))
        return token

    def counted(self, key: K, error: str | None) -> None:
        """Called after every token request (``error`` is its code, None for a token)."""

    def _caller_caused(self, error: TokenError) -> bool:
        """Whether ``error`` is the fault of the caller's context, not the proxy's."""
        return False

    def _fingerprint(self, context: Any) -> Hashable:
        """Tells contexts apart without holding one (it may be a token)."""
        return None

    def _failed(self, key: K, entry: _Entry, error: TokenError) -> TokenError:
        if entry.error is None or entry.error.error != error.error:
            log.warning(
                "token.failed",
                identity=self._name,
                **self._log_fields(key),
                error=error.error,
                description=error.description,
                **({"hint": error.hint} if error.hint else {}),
            )
        entry.error = error
        entry.failures += 1
        entry.errors[error.error] = entry.errors.get(error.error, 0) + 1
        self.counted(key, error.error)
        backoff = min(self._max_backoff, 2.0 ** (entry.failures - 1))
        delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311  # jitter, not cryptography
        if error.retry_after is not None:  # the identity provider asked for a pause: honour it
            delay = max(delay, min(error.retry_after, 3600.0))
        entry.retry_at = self._clock() + delay
        if not self._on_use:
            self._schedule(key, entry, delay)
        return error

    def _schedule(self, key: K, entry: _Entry, delay: float) -> None:
        if self._closed:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = asyncio.get_running_loop().call_later(delay, self._start, key, entry)

    def _unavailable(self, error: TokenError, retry_after: float) -> ProxyError:
        """What a caller gets when no token could be had (a subclass may say more)."""
        return unavailable(error, retry_after)


def unavailable(error: TokenError, retry_after: float) -> TokenUnavailable:
    """``503 token_unavailable`` with Entra's error, to retry after ``retry_after`` seconds."""
    return TokenUnavailable(
        "the identity provider did not issue a token",
        entra_error=error.error,
        entra_description=error.description,
        entra_codes=error.codes,
        retry_after=max(1.0, retry_after),
    )
