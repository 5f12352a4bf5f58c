"""The process-wide side of a running proxy: the current :class:`~proxy.state.State`, the
upstream session, the observers, and the lifecycle that changes them (start, reload, stop).

Handlers only read from here. A reload builds a new ``State`` and swaps it in one assignment;
requests in flight keep the version they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

import aiohttp
import structlog

from . import banner
from .batch.budget import Budget
from .client_limits import ClientSlots
from .config import Config
from .errors import ProxyError, TokenUnavailable
from .exchange import Observers
from .metrics import Snapshot
from .signin import SignIn
from .state import State
from .throttle import Throttling
from .tls import ListenerTLS, TlsError
from .tokens import ScopeStatus, TokenError, TokenProvider


class Closable(Protocol):
    async def close(self) -> None: ...


log = structlog.get_logger("proxy")


class Runtime:
    def __init__(
        self,
        config: Config,
        observers: Observers,
        *,
        given: Mapping[str, TokenProvider] | None = None,
        throttling: Throttling | None = None,
    ) -> None:
        self._given = dict(given or {})
        # Cool-downs, client rates and pacers: process-wide, kept by every reload's State.
        self.throttling = throttling or Throttling()
        self.state = State.build(config, given=self._given, throttling=self.throttling)
        # The listeners' certificate: loaded (for tls = "local", made) before the port is bound.
        tls = config.server.tls
        self.tls = ListenerTLS(tls) if tls is not None else None
        self.observers = observers
        self.session: aiohttp.ClientSession | None = None  # opened and closed by the app
        self.draining = False
        # Requests in flight per route, for the whole process (a reload keeps counting).
        self.in_flight: dict[str, int] = {r.name: 0 for r in config.routes}
        self.clients = ClientSlots()  # requests in flight per [access] client with a cap
        # Bytes of $batch bodies held while checked, for the whole process (a reload keeps it).
        self.held_batches = Budget()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: list[Closable] = []  # replaced by a reload, closed a bit later

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` in the background, holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def prefetch(self) -> None:
        """Start getting every route's token, and the signing keys members' tokens are checked
        with, now, so the first requests need not wait."""
        state = self.state
        if not state.config.tokens.prefetch:
            return
        for identity, scopes in state.scopes().items():
            for scope in scopes:
                self.spawn(_warm(state.config, identity, state.providers[identity], scope))
        if state.signin is not None and not state.signin.keys.loaded and self.session is not None:
            self.spawn(_warm_keys(state.signin, self.session))

    async def reload(self, new: Config) -> list[str]:
        """Serve ``new`` from now on: routes, identities, tokens settings, access and policies,
        and the listeners' certificate (its files read again) for new connections.

        Identities that did not change keep their provider and tokens; the others are closed
        once in-flight requests had ``server.shutdown_timeout`` to finish. Returns why the
        reload was refused, if it was.
        """
        old = self.state
        changed = fixed_settings_changed(old.config, new)
        if changed:
            return [f"{what} changed: restart the proxy for that" for what in changed]
        if self.tls is not None and new.server.tls is not None:
            try:
                self.tls.reload(new.server.tls)
            except TlsError as e:
                return [f"server TLS: {e}"]
        self.state = state = State.build(new, previous=old, given=self._given)
        for route in new.routes:
            self.in_flight.setdefault(route.name, 0)
        kept = set(map(id, state.closables()))
        retired = [p for p in old.closables() if id(p) not in kept]
        if retired:
            self._retiring.extend(retired)
            self.spawn(self._close_later(retired, new.server.shutdown_timeout))
        self.prefetch()
        return []

    async def close(self) -> None:
        """Stop background work and close every provider (the session is the app's)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for provider in [*self.state.closables(), *self._retiring]:
            await provider.close()
        self._retiring.clear()

    async def _close_later(self, providers: list[Closable], delay: float) -> None:
        await asyncio.sleep(delay)
        for provider in providers:
            self._retiring.remove(provider)
            await provider.close()

    def snapshot(self) -> Snapshot:
        """The live state for metrics, read without side effects."""
        state = self.state
        snap = Snapshot(
            in_flight=dict(self.in_flight),
            queued={
                route: limiter.waiting + state.gates[route].waiting
                for route, limiter in state.limiters.items()
            },
        )
        # Service tokens and members' tokens (counted per scope, never per member) together.
        for identity, provider in state.providers.items():
            _count(snap, identity, provider.status())
        for identity, members in state.members.items():
            _count(snap, identity, members.status())
        return snap


def _count(snap: Snapshot, identity: str, statuses: Mapping[str, ScopeStatus]) -> None:
    for scope, status in statuses.items():
        for result, n in (("success", status.successes), ("error", sum(status.errors.values()))):
            key = (identity, scope, result)
            snap.tokens[key] = snap.tokens.get(key, 0) + n
        for code, n in status.errors.items():
            snap.errors[code] = snap.errors.get(code, 0) + n
        if status.expires_in is not None:
            snap.expiry[(identity, scope)] = status.expires_in


def fixed_settings_changed(old: Config, new: Config) -> list[str]:
    """What a reload cannot change in a running process (it needs a restart)."""
    changed = []
    if (old.server.host, old.server.port, old.server.workers) != (
        new.server.host,
        new.server.port,
        new.server.workers,
    ):
        changed.append("server.host, server.port or server.workers")
    if (old.server.tls is None) != (new.server.tls is None):
        changed.append("TLS on or off (server.tls, server.tls_cert)")
    listening = ("header_timeout", "idle_timeout", "max_connections")  # set on the listeners
    if any(getattr(old.server, k) != getattr(new.server, k) for k in listening):
        changed.append("server.header_timeout, server.idle_timeout or server.max_connections")
    if {r.name: r.port for r in old.routes if r.port} != {
        r.name: r.port for r in new.routes if r.port
    }:
        changed.append("routes[].port")
    if old.outbound != new.outbound:
        changed.append("[outbound]")
    if old.tap != new.tap:
        changed.append("[tap]")
    return changed


async def _warm(config: Config, identity: str, provider: TokenProvider, scope: str) -> None:
    """Get the token now; when Entra ID (or the way to it) refuses, say so loudly once.

    The failure is also kept by the provider (readyz shows it) and retried on its schedule;
    waiting longer than ``tokens.wait_timeout`` is not a refusal, so it waits a while more."""
    for _ in range(_PREFETCH_WAITS):
        try:
            await provider.token(scope)
            return
        except TokenUnavailable as e:
            if e.entra_error is None:  # still waiting for an answer
                continue
            error, description, codes = e.entra_error, e.entra_description or "", e.entra_codes
        except TokenError as e:  # a provider without the cache (given to create_app)
            error, description, codes = e.error, e.description, e.codes
        except ProxyError:
            return
        banner.token_unavailable(config, identity, scope, error, description, codes)
        return


_PREFETCH_WAITS = 6


async def _warm_keys(signin: SignIn, session: aiohttp.ClientSession) -> None:
    # A failure is logged and kept for readyz; the first member's request tries again.
    with contextlib.suppress(ProxyError):
        await signin.keys.ready(session)
