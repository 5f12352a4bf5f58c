"""Credentials: token providers that ask Microsoft Entra ID through MSAL.

MSAL is blocking, so every call into it runs in a worker thread, never on the event loop.
MSAL's own caches are switched off: :class:`proxy.tokens.CachingProvider` caches and backs off.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information
import requests

from .config import IdentityConfig, OutboundConfig
from .tokens import Token, TokenError


class _PinnedSession(requests.Session):
    """A requests session whose ``verify``, proxies and timeout the environment cannot override.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a session's ``verify``
    (``Session.merge_environment_settings``); with ``outbound.ca_file`` set, the file must win.
    """

    def __init__(self, outbound: OutboundConfig) -> None:
        super().__init__()
        self._pin_verify = outbound.ca_file is not None
        if outbound.ca_file is not None:
            self.verify = str(outbound.ca_file)
        if outbound.proxy is not None:
            self.proxies = {"http": outbound.proxy, "https": outbound.proxy}
        self._timeout = (outbound.connect_timeout, outbound.read_timeout)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self._pin_verify:
            settings["verify"] = self.verify
        if "https" in self.proxies:
            settings["proxies"] = dict(self.proxies)
        return settings

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


class _NoStoreCache(msal.TokenCache):  # type: ignore[misc]  # msal is untyped
    """MSAL's cache would hand back a token until 5 minutes before expiry, which defeats
    refreshing ahead; :class:`CachingProvider` caches instead, so MSAL stores nothing."""

    def add(self, event: Any, now: Any = None) -> None:
        return None


class _NoHttpCache(dict[Any, Any]):
    """MSAL's ``http_cache`` remembers error responses and replays them (its throttling) for
    seconds to a minute; the cache wrapper backs off on its own, so nothing is remembered here."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class MsalProvider:
    """Client-credentials tokens for one identity from MSAL, run in a worker thread."""

    def __init__(self, identity: IdentityConfig, outbound: OutboundConfig) -> None:
        self._identity = identity
        self._outbound = outbound
        self._app: Any = None
        self._build_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MsalProvider(identity={self._identity.name!r})"

    def _application(self) -> Any:
        with self._build_lock:
            if self._app is None:
                # Building the app fetches the authority's OpenID configuration.
                self._app = msal.ConfidentialClientApplication(
                    self._identity.client_id,
                    client_credential=self._identity.client_secret.reveal(),
                    authority=self._identity.authority,
                    instance_discovery=self._identity.instance_discovery,
                    http_client=_PinnedSession(self._outbound),
                    token_cache=_NoStoreCache(),
                    http_cache=_NoHttpCache(),
                )
            return self._app

    def _acquire(self, scope: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._application().acquire_token_for_client([scope])
        except requests.RequestException as e:
            # The exception text names the URL and the cause, never the form data.
            raise TokenError("authority_unreachable", _describe(e)) from None
        except msal.exceptions.MsalServiceError as e:  # an HTTP error without Entra's JSON (5xx)
            raise TokenError("service_unavailable", str(e.args[0]) if e.args else "") from None
        except ValueError as e:  # MSAL's way to say the authority or its metadata is wrong
            raise TokenError("authority_invalid", str(e)) from None
        return result

    async def get(self, scope: str) -> Token:
        started, started_wall = time.monotonic(), time.time()
        result = await asyncio.to_thread(self._acquire, scope)
        if "access_token" not in result:
            raise TokenError(
                str(result.get("error") or "unknown_error"),
                str(result.get("error_description") or ""),
                [int(c) for c in result.get("error_codes") or () if isinstance(c, int)],
            )
        lifetime = float(result.get("expires_in") or 0)
        return Token(
            result["access_token"], scope, started + lifetime, lifetime, started_wall + lifetime
        )

    def invalidate(self, token: Token) -> None:
        return None

    def close(self) -> None:
        """Close the HTTP session MSAL uses (its pooled connections to Entra ID)."""
        with self._build_lock:
            if self._app is not None:
                self._app.http_client.close()
                self._app = None


def _describe(e: requests.RequestException) -> str:
    cause = e.__context__ or e
    url = e.request.url if e.request is not None else ""
    return f"{type(e).__name__} for {url}: {type(cause).__name__}".strip()
