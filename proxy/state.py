"""One immutable :class:`State` per configuration version: everything prepared from it.

The guard and the forwarder read the current state (``Runtime.state``) once per request and
use that version to the end; a reload builds a new one and swaps it in one step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .acting import ServiceToken, caller_headers_owned
from .browsers import allowed_hosts, allowed_origins
from .caching_provider import CachingProvider
from .config import Config
from .headers import HeaderRules
from .identity import ConfidentialProvider, msal_provider
from .identity.on_behalf_of import MemberTokens
from .limits import Limiter
from .policy import Policy, policies
from .public_address import PublicAddress
from .rewrite import LinkRewriter
from .routing import Resolver
from .signin import SignIn
from .throttle import Gate, Throttling
from .tokens import TokenProvider


@dataclass(frozen=True, slots=True)
class State:
    """A configuration and what is prepared from it, never changed after it is built."""

    config: Config
    resolver: Resolver  # which route takes a request
    policies: Mapping[str, Policy]  # route name -> methods and path rules, compiled
    providers: Mapping[str, TokenProvider]  # identity name -> cached token provider
    limiters: Mapping[str, Limiter]  # route name -> concurrency cap (and dop hint)
    gates: Mapping[str, Gate]  # route name -> its throttling (cool-down, pace, resend)
    throttling: Throttling  # process-wide: cool-downs, client rates (kept across reloads)
    links: LinkRewriter  # upstream URLs handed back -> the proxy's
    upstream_proxies: Mapping[str, str | None]  # route name -> outbound proxy, decided once
    allowed_hosts: frozenset[str]  # Host names accepted
    allowed_origins: frozenset[str]  # Origin hosts accepted (no loopback ones on a gateway)
    headers: Mapping[str, HeaderRules]  # route name -> header hygiene and edits
    owns_caller: frozenset[str]  # routes where only the proxy may send CallerObjectId
    addresses: PublicAddress  # the scheme and host clients use (public_url, trusted proxies)
    service_tokens: Mapping[str, ServiceToken]  # route name -> its identity's token, its scope
    members: Mapping[str, MemberTokens]  # identity name -> tokens for members (act_as "user")
    signin: SignIn | None  # validates members' tokens ([access.entra])

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        previous: State | None = None,
        given: Mapping[str, TokenProvider] | None = None,
        throttling: Throttling | None = None,
    ) -> State:
        """Prepare ``config``. Identities unchanged since ``previous`` keep their provider (and
        so their tokens); ``given`` providers (identity name -> provider) replace MSAL;
        ``throttling`` (else ``previous``'s, else a new one) holds the cool-downs."""
        routes = config.routes
        providers = _providers(config, previous, given or {})
        if throttling is None:
            throttling = previous.throttling if previous is not None else Throttling()
        limiters = {r.name: Limiter(r.name, r.limits) for r in routes}
        owns_caller = caller_headers_owned(routes)
        return cls(
            config=config,
            resolver=Resolver(routes),
            policies=policies(routes),
            providers=providers,
            limiters=limiters,
            gates={r.name: throttling.gate(r, limiters[r.name]) for r in routes},
            throttling=throttling,
            links=LinkRewriter(routes),
            upstream_proxies={r.name: config.outbound.proxy_for(r.upstream) for r in routes},
            allowed_hosts=allowed_hosts(config.server),
            allowed_origins=allowed_origins(config.server),
            headers={
                r.name: HeaderRules(r.edits, owns_caller=r.name in owns_caller) for r in routes
            },
            owns_caller=owns_caller,
            addresses=PublicAddress(config.server),
            service_tokens={r.name: ServiceToken(providers[r.identity], r.scope) for r in routes},
            members=_members(config, previous),
            signin=_signin(config, previous),
        )

    def scopes(self) -> dict[str, list[str]]:
        """Identity name -> the scopes its routes need service tokens for, sorted (routes that
        act as the member need one per member instead)."""
        found: dict[str, set[str]] = {}
        for route in self.config.routes:
            if route.act_as != "user":
                found.setdefault(route.identity, set()).add(route.scope)
        return {identity: sorted(scopes) for identity, scopes in found.items()}

    def closables(self) -> list[Any]:
        """What holds connections or background work: closed when this state is retired."""
        return [*self.providers.values(), *self.members.values()]


def _providers(
    config: Config, previous: State | None, given: Mapping[str, TokenProvider]
) -> dict[str, TokenProvider]:
    providers: dict[str, TokenProvider] = {}
    for name, identity in config.identities.items():
        if name in given:
            providers[name] = given[name]
            continue
        if previous is not None and _same_identity(previous.config, config, name):
            providers[name] = previous.providers[name]
            continue
        providers[name] = CachingProvider(
            msal_provider(identity, config.outbound),
            name=name,
            wait_timeout=config.tokens.wait_timeout,
            min_refresh_interval=config.tokens.min_refresh_interval,
        )
    return providers


def _members(config: Config, previous: State | None) -> dict[str, MemberTokens]:
    """Tokens for members, for each identity a route with act_as = "user" uses (a confidential
    client: the configuration checked it)."""
    found: dict[str, MemberTokens] = {}
    for route in config.routes:
        name = route.identity
        if route.act_as != "user" or name in found:
            continue
        if (
            previous is not None
            and name in previous.members
            and _same_identity(previous.config, config, name)
        ):
            found[name] = previous.members[name]
            continue
        found[name] = MemberTokens(
            ConfidentialProvider(config.identities[name], config.outbound),
            name=name,
            wait_timeout=config.tokens.wait_timeout,
            min_refresh_interval=config.tokens.min_refresh_interval,
        )
    return found


def _signin(config: Config, previous: State | None) -> SignIn | None:
    """The member token validator; the previous one (its keys, the tokens it has checked) when
    nothing it depends on changed."""
    entra = config.access.entra
    if entra is None:
        return None
    old = previous.signin if previous is not None else None
    wait = config.tokens.wait_timeout
    if old is not None and (old.entra, old.outbound, old.wait_timeout) == (
        entra,
        config.outbound,
        wait,
    ):
        return old
    return SignIn(entra, config.outbound, wait_timeout=wait)


def _same_identity(old: Config, new: Config, name: str) -> bool:
    """Whether identity ``name`` would get exactly the same provider from ``new`` as from
    ``old`` (its own settings, and the outbound and token settings every provider uses)."""
    return (
        name in old.identities
        and old.identities[name] == new.identities[name]
        and old.outbound == new.outbound
        and old.tokens == new.tokens
    )
