"""A managed identity (``msal.ManagedIdentityClient``): Azure App Service, Functions, VMs,
Container Apps. MSAL finds the endpoint from the platform's environment; it takes a v1
resource, not a scope."""

from __future__ import annotations

from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information

from ..presets import scope_to_resource
from ._msal import MsalProvider, NoHttpCache, NoStoreCache, PinnedSession


class ManagedIdentityProvider(MsalProvider):
    def _direct(self) -> bool:
        return True  # the endpoint is on this machine or link-local: never through a proxy

    def _build(self, session: PinnedSession, credential: Any) -> Any:
        assert self._identity.managed_identity is not None
        which, value = self._identity.managed_identity
        spec = (
            msal.SystemAssignedManagedIdentity()
            if which == "system"
            else msal.UserAssignedManagedIdentity(**{which: value})
        )
        return msal.ManagedIdentityClient(
            spec, http_client=session, token_cache=NoStoreCache(), http_cache=NoHttpCache()
        )

    def _acquire(self, app: Any, scope: str) -> dict[str, Any]:
        result: dict[str, Any] = app.acquire_token_for_client(resource=scope_to_resource(scope))
        return result
