"""The token provider the proxy serves from: any :class:`~proxy.tokens.TokenProvider` (an MSAL
one, in practice) behind a :class:`~proxy.token_cache.TokenCache` with one entry per scope."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .token_cache import TokenCache
from .tokens import ScopeStatus, Token, TokenProvider


class CachingProvider:
    """A :class:`TokenProvider` with one cache entry per scope over ``inner``: single flight,
    refresh ahead on a timer, backoff."""

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
        self._cache: TokenCache[str] = TokenCache(
            self._fetch,
            name=name,
            wait_timeout=wait_timeout,
            max_backoff=max_backoff,
            min_refresh_interval=min_refresh_interval,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"CachingProvider({self._inner!r}, scopes={self._cache.known()!r})"

    async def _fetch(self, scope: str, _: Any) -> Token:
        return await self._inner.token(scope)

    async def token(self, scope: str) -> Token:
        return await self._cache.get(scope)

    def invalidate(self, token: Token) -> bool:
        if not self._cache.drop(token.scope, token):
            return False
        self._inner.invalidate(token)
        return True

    def status(self) -> Mapping[str, ScopeStatus]:
        found = {scope: self._cache.status(scope) for scope in self._cache.known()}
        return {scope: status for scope, status in found.items() if status is not None}

    async def close(self) -> None:
        await self._cache.close()
        await self._inner.close()
