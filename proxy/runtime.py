"""The process-wide side of a running proxy: the current :class:`~proxy.state.State`, the
upstream session, the observers, and the lifecycle that changes them (start, reload, stop).

Handlers only read from here. A reload builds a new ``State`` and swaps it in one assignment;
requests in flight keep the version they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from typing import Any

import aiohttp
import structlog

from .client_limits import ClientSlots
from .config import Config
from .errors import ProxyError
from .exchange import Observers
from .metrics import Snapshot
from .state import State
from .tls import ListenerTLS, TlsError
from .tokens import TokenError, TokenProvider

log = structlog.get_logger("proxy")


class Runtime:
    def __init__(
        self,
        config: Config,
        observers: Observers,
        *,
        given: Mapping[str, TokenProvider] | None = None,
    ) -> None:
        self._given = dict(given or {})
        self.state = State.build(config, given=self._given)
        # The listeners' certificate: loaded (for tls = "local", made) before the port is bound.
        tls = config.server.tls
        self.tls = ListenerTLS(tls) if tls is not None else None
        self.observers = observers
        self.session: aiohttp.ClientSession | None = None  # opened and closed by the app
        self.draining = False
        # Requests in flight per route, for the whole process (a reload keeps counting).
        self.in_flight: dict[str, int] = {r.name: 0 for r in config.routes}
        self.clients = ClientSlots()  # requests in flight per [access] client with a cap
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: list[TokenProvider] = []  # replaced by a reload, closed a bit later

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` in the background, holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def prefetch(self) -> None:
        """Start getting every route's token now, so the first requests need not wait."""
        state = self.state
        if not state.config.tokens.prefetch:
            return
        for identity, scopes in state.scopes().items():
            for scope in scopes:
                self.spawn(_warm(state.providers[identity], scope))

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
        kept = set(map(id, state.providers.values()))
        retired = [p for p in old.providers.values() if id(p) not in kept]
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
        for provider in [*self.state.providers.values(), *self._retiring]:
            await provider.close()
        self._retiring.clear()

    async def _close_later(self, providers: list[TokenProvider], delay: float) -> None:
        await asyncio.sleep(delay)
        for provider in providers:
            self._retiring.remove(provider)
            await provider.close()

    def snapshot(self) -> Snapshot:
        """The live state for metrics, read without side effects."""
        state = self.state
        snap = Snapshot(
            in_flight=dict(self.in_flight),
            queued={route: limiter.waiting for route, limiter in state.limiters.items()},
        )
        for identity, provider in state.providers.items():
            for scope, status in provider.status().items():
                snap.tokens[(identity, scope, "success")] = status.successes
                snap.tokens[(identity, scope, "error")] = sum(status.errors.values())
                for code, n in status.errors.items():
                    snap.errors[code] = snap.errors.get(code, 0) + n
                if status.expires_in is not None:
                    snap.expiry[(identity, scope)] = status.expires_in
        return snap


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


async def _warm(provider: TokenProvider, scope: str) -> None:
    # A failure is kept by the provider (readyz shows it) and retried on its own schedule.
    with contextlib.suppress(TokenError, ProxyError):
        await provider.token(scope)
