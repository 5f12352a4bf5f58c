"""Tokens for signed-in members, by the on-behalf-of flow, cached per (member, scope).

A route with ``act_as = "user"`` sends the upstream a token that carries the member, which
the route's identity (the gateway app, a confidential client) gets from Entra ID in exchange
for the member's own token. :class:`MemberTokens` keeps one per (member object id, scope) in
a bounded cache (least recently used members go first), refreshed ahead of expiry when the
member's next request finds it in the refresh window (no timers: a member who has gone costs
nothing), with one token request in flight per key, built on :class:`proxy.tokens.TokenCache`.

Entra's refusals become answers the member can act on: no consent (AADSTS65001) is ``403
consent_required``, other refusals for this member ``403 on_behalf_of_refused``, an expired
token ``401 invalid_token``; the proxy's own trouble (a wrong secret, Entra unreachable) stays
``503 token_unavailable``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

from cachetools import LRUCache

from ..errors import (
    ConsentRequired,
    InvalidToken,
    OnBehalfOfRefused,
    ProxyError,
    TokenUnavailable,
)
from ..token_cache import TokenCache, unavailable
from ..tokens import ScopeStatus, Token, TokenError

MAX_MEMBERS = 10_000  # (member, scope) entries kept per identity

CONSENT_HELP = (
    "An administrator grants it once: in the Azure portal, App registrations → the gateway "
    "app → API permissions → Add a permission → the API this route calls → its delegated "
    "permission (PowerApps Service: User; Dynamics CRM: user_impersonation) → Add, then "
    "Grant admin consent."
)
# Entra codes that mean the member must sign in again (MFA, conditional access, password
# change, session revoked).
_SIGN_IN_AGAIN = frozenset({50076, 50079, 50158, 53003, 50173, 50133, 70043, 700082})


class OnBehalfOfProvider(Protocol):
    """Where tokens for members come from (:class:`~.confidential.ConfidentialProvider`)."""

    async def token_on_behalf_of(self, assertion: str, scope: str) -> Token: ...

    async def close(self) -> None: ...


def refusal(error: TokenError, retry_after: float) -> ProxyError:
    """What the member is told when Entra would not give a token on their behalf."""
    codes = set(error.codes)
    first_line = error.description.splitlines()[0] if error.description else ""
    kind: type[OnBehalfOfRefused] = OnBehalfOfRefused
    if 65001 in codes or error.error == "consent_required":
        kind = ConsentRequired
        message = (
            "Entra ID has no consent for this gateway to call the route's API on your behalf "
            f"(AADSTS65001). {CONSENT_HELP}"
        )
    elif 500133 in codes:
        return InvalidToken("the token has expired: get a new one")
    elif codes & _SIGN_IN_AGAIN or error.error == "interaction_required":
        message = (
            "Entra ID wants you to sign in again for this API (multi-factor authentication or "
            "a conditional access policy): sign in again (az login), get a new token and retry. "
            f"Entra said: {first_line}"
        )
    elif error.error == "invalid_grant":
        message = f"Entra ID refused a token on your behalf for this API: {first_line}"
    else:  # the proxy's own trouble (its credential, Entra unreachable): not the member's
        return unavailable(error, retry_after)
    return kind(
        message,
        entra_error=error.error,
        entra_description=error.description,
        entra_codes=error.codes,
    )


class _MemberCache(TokenCache[tuple[str, str]]):
    """The token cache with answers for members and counters per scope (for metrics)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts: dict[str, ScopeStatus] = {}

    def _unavailable(self, error: TokenError, retry_after: float) -> ProxyError:
        return refusal(error, retry_after)

    def _caller_caused(self, error: TokenError) -> bool:
        # The member's refusals (401/403): a new token of theirs is asked for at once.
        return not isinstance(refusal(error, 0.0), TokenUnavailable)

    def _fingerprint(self, context: Any) -> Hashable:
        if not isinstance(context, str):
            return None
        return hashlib.sha256(context.encode("utf-8", "surrogatepass")).digest()

    def counted(self, key: tuple[str, str], error: str | None) -> None:
        scope = key[1]
        old = self.counts.get(scope) or ScopeStatus(scope, None, None, None, None)
        errors = dict(old.errors)
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
        self.counts[scope] = ScopeStatus(
            scope,
            None,
            time.time() if error is None else old.last_refresh,
            error if error is not None else None,
            None,
            old.successes + (error is None),
            errors,
        )


class MemberTokens:
    """One identity's tokens for members, per (member object id, scope)."""

    def __init__(
        self,
        inner: OnBehalfOfProvider,
        *,
        name: str = "",
        wait_timeout: float = 5.0,
        min_refresh_interval: float = 10.0,
        max_members: int = MAX_MEMBERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._name = name
        self._cache = _MemberCache(
            self._fetch,
            name=name,
            wait_timeout=wait_timeout,
            min_refresh_interval=min_refresh_interval,
            clock=clock,
            entries=LRUCache(max_members),
            refresh_on_use=True,
            log_fields=lambda key: {"caller_oid": key[0], "scope": key[1]},
        )

    def __repr__(self) -> str:
        return f"MemberTokens(identity={self._name!r}, cached={len(self._cache.known())})"

    async def _fetch(self, key: tuple[str, str], assertion: Any) -> Token:
        return await self._inner.token_on_behalf_of(assertion, key[1])

    async def token(self, oid: str, assertion: str, scope: str) -> Token:
        """A token for ``scope`` carrying the member ``oid``, whose own token is ``assertion``
        (used only when a new token must be asked for)."""
        return await self._cache.get((oid, scope), assertion)

    def invalidate(self, oid: str, token: Token) -> bool:
        """The upstream refused ``token``: the member's next request gets a new one (at most
        once per ``tokens.min_refresh_interval``); whether a retry would get another token."""
        return self._cache.drop((oid, token.scope), token)

    def status(self) -> Mapping[str, ScopeStatus]:
        """Token requests so far per scope, all members together (metrics never name one)."""
        return dict(self._cache.counts)

    async def close(self) -> None:
        await self._cache.close()
        await self._inner.close()
