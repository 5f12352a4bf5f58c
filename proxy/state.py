"""One immutable :class:`State` per configuration version: everything prepared from it.

The guard and the forwarder read the current state (``Runtime.state``) once per request and
use that version to the end; a reload builds a new one and swaps it in one step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .browsers import allowed_hosts, allowed_origins
from .config import Config
from .headers import HeaderRules
from .identity import msal_provider
from .limits import Limiter
from .policy import Policy, policies
from .public_address import PublicAddress
from .rewrite import LinkRewriter
from .routing import Resolver
from .tokens import CachingProvider, TokenProvider


@dataclass(frozen=True, slots=True)
class State:
    """A configuration and what is prepared from it, never changed after it is built."""

    config: Config
    resolver: Resolver  # which route takes a request
    policies: Mapping[str, Policy]  # route name -> methods and path rules, compiled
    providers: Mapping[str, TokenProvider]  # identity name -> cached token provider
    limiters: Mapping[str, Limiter]  # route name -> concurrency cap (routes that have one)
    links: LinkRewriter  # upstream URLs handed back -> the proxy's
    upstream_proxies: Mapping[str, str | None]  # route name -> outbound proxy, decided once
    allowed_hosts: frozenset[str]  # Host names accepted
    allowed_origins: frozenset[str]  # Origin hosts accepted (no loopback ones on a gateway)
    headers: Mapping[str, HeaderRules]  # route name -> header hygiene and edits
    addresses: PublicAddress  # the scheme and host clients use (public_url, trusted proxies)

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        previous: State | None = None,
        given: Mapping[str, TokenProvider] | None = None,
    ) -> State:
        """Prepare ``config``. Identities unchanged since ``previous`` keep their provider (and
        so their tokens); ``given`` providers (identity name -> provider) replace MSAL."""
        routes = config.routes
        return cls(
            config=config,
            resolver=Resolver(routes),
            policies=policies(routes),
            providers=_providers(config, previous, given or {}),
            limiters={
                r.name: Limiter(r.name, r.limits) for r in routes if r.limits.max_concurrency
            },
            links=LinkRewriter(routes),
            upstream_proxies={r.name: config.outbound.proxy_for(r.upstream) for r in routes},
            allowed_hosts=allowed_hosts(config.server),
            allowed_origins=allowed_origins(config.server),
            headers={r.name: HeaderRules(r.edits) for r in routes},
            addresses=PublicAddress(config.server),
        )

    def scopes(self) -> dict[str, list[str]]:
        """Identity name -> the scopes its routes need, sorted."""
        found: dict[str, set[str]] = {}
        for route in self.config.routes:
            found.setdefault(route.identity, set()).add(route.scope)
        return {identity: sorted(scopes) for identity, scopes in found.items()}


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


def _same_identity(old: Config, new: Config, name: str) -> bool:
    """Whether identity ``name`` would get exactly the same provider from ``new`` as from
    ``old`` (its own settings, and the outbound and token settings every provider uses)."""
    return (
        name in old.identities
        and old.identities[name] == new.identities[name]
        and old.outbound == new.outbound
        and old.tokens == new.tokens
    )
