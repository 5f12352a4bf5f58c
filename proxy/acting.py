"""How the upstream sees the caller: which token a request carries, and whose it is.

Per route (``act_as``, ``impersonate``):

=====================  =============================================  ==========================
route                  token                                          extra header
=====================  =============================================  ==========================
``act_as="service"``   the route's identity's own token, per scope    —
``impersonate=true``   the same service token                         ``CallerObjectId: <oid>``
``act_as="user"``      a token for the signed-in member, on-behalf-of —
=====================  =============================================  ==========================

``send`` asks the :class:`TokenSource` this module picks; it never needs to know which kind
it got. A route that acts for a member refuses requests without one (``check``), in the guard,
before the body is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .config import RouteConfig
from .errors import Forbidden
from .identity.on_behalf_of import MemberTokens
from .signin import SignedIn
from .tokens import Token, TokenProvider

if TYPE_CHECKING:
    from .state import State

# Dataverse impersonation (the service principal needs prvActOnBehalfOfAnotherUser). Where the
# proxy owns these headers (``caller_headers_owned``), a client's own CallerObjectId or
# MSCRMCallerID is dropped (HeaderRules) and refused inside a $batch (batch.check).
CALLER_OBJECT_ID = "CallerObjectId"
CALLER_HEADERS = ("CallerObjectId", "MSCRMCallerID")


class TokenSource(Protocol):
    """The token for one request, and the headers that go with it."""

    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...

    async def token(self) -> Token: ...

    def invalidate(self, token: Token) -> bool:
        """The upstream refused ``token``: the next ``token()`` gets a fresh one, unless a
        refresh was forced too recently; whether a retry would get another token."""
        ...


@dataclass(frozen=True, slots=True)
class ServiceToken:
    """The route's identity's own token (prepared once per route, in ``State.build``)."""

    provider: TokenProvider
    scope: str
    headers: tuple[tuple[str, str], ...] = ()

    async def token(self) -> Token:
        return await self.provider.token(self.scope)

    def invalidate(self, token: Token) -> bool:
        return self.provider.invalidate(token)


@dataclass(frozen=True, slots=True)
class MemberToken:
    """A token carrying the signed-in member, from the route's identity by on-behalf-of."""

    tokens: MemberTokens
    signed_in: SignedIn
    scope: str
    headers: tuple[tuple[str, str], ...] = ()

    async def token(self) -> Token:
        signed_in = self.signed_in
        return await self.tokens.token(signed_in.caller.oid, signed_in.token, self.scope)

    def invalidate(self, token: Token) -> bool:
        return self.tokens.invalidate(self.signed_in.caller.oid, token)


def for_member(route: RouteConfig) -> bool:
    """Whether ``route`` sends the upstream who the member is (and so needs one)."""
    return route.act_as == "user" or route.impersonate


def caller_headers_owned(routes: Iterable[RouteConfig]) -> frozenset[str]:
    """The routes on which only the proxy may say whom Dataverse acts for: those that act for
    the member, and every route of an identity that impersonates on any route. The privilege
    (prvActOnBehalfOfAnotherUser) belongs to the service principal, not to a route: a client's
    own CallerObjectId on a sibling service route would run as anyone it names."""
    routes = tuple(routes)
    impersonating = {r.identity for r in routes if r.impersonate}
    return frozenset(r.name for r in routes if for_member(r) or r.identity in impersonating)


def check(route: RouteConfig, signed_in: SignedIn | None) -> None:
    """``Forbidden`` when ``route`` acts for a member and the request has none (a client key,
    which names no person: the service principal's own rights must not stand in)."""
    if signed_in is None and for_member(route):
        how = "on behalf of" if route.act_as == "user" else "impersonating"
        raise Forbidden(
            f"route {route.name!r} calls its API {how} the signed-in member: sign in with an "
            "Entra ID token (Authorization: Bearer) instead of a client key"
        )


def token_source(route: RouteConfig, state: State, signed_in: SignedIn | None) -> TokenSource:
    """Where this request's token comes from (``check`` has passed)."""
    service = state.service_tokens[route.name]
    if signed_in is None:
        return service
    if route.act_as == "user":
        return MemberToken(state.members[route.identity], signed_in, route.scope)
    if route.impersonate:
        return ServiceToken(
            service.provider, route.scope, ((CALLER_OBJECT_ID, signed_in.caller.oid),)
        )
    return service
