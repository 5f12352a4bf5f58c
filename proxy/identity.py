"""Credentials: token providers that ask Microsoft Entra ID through MSAL.

One provider, :class:`MsalProvider`, for every identity kind:

- client secret, certificate and workload identity federation: a confidential client
  (``acquire_token_for_client``); the secret file and the federated token file are re-read for
  every token request, so rotation on disk is picked up;
- username and password: a public client (``acquire_token_by_username_password``, ROPC);
- managed identity: MSAL's ``ManagedIdentityClient``, which takes a resource, not a scope.

MSAL is blocking, so every call into it (building an application fetches the authority's
metadata) runs in a worker thread, never on the event loop. MSAL's own caches are switched off:
:class:`proxy.tokens.CachingProvider` caches and backs off.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information
import requests
import structlog

from .config import IdentityConfig, OutboundConfig
from .credentials import (
    CredentialError,
    literal_secret_warning,
    load_certificate,
    read_first_line,
    read_token_file,
)
from .presets import scope_to_resource
from .tokens import Token, TokenError, TokenProvider

# MSAL warns (DeprecationWarning) on every ROPC call; ppproxy says so once, at start, instead.
_ROPC_WARNING = "This API has been deprecated for public client flows"


class _PinnedSession(requests.Session):
    """A requests session that the environment cannot steer.

    With ``trust_env`` on, requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace the
    session's ``verify`` (so ``outbound.ca_file`` would not win), picks proxies per request and
    sends ``~/.netrc`` credentials in place of the client's own. The proxy was decided once at
    load (``outbound.proxy_for``); nothing else is read from the environment here.
    """

    def __init__(
        self, outbound: OutboundConfig, *, direct: bool = False, authority: str | None = None
    ) -> None:
        super().__init__()
        self.trust_env = False
        if outbound.ca_file is not None:
            self.verify = str(outbound.ca_file)
        # A managed identity endpoint is on this machine or link-local (169.254.169.254):
        # never through a proxy.
        proxy = None if direct or authority is None else outbound.proxy_for(authority)
        if proxy is not None:
            self.proxies = {"http": proxy, "https": proxy}
        self._timeout = (outbound.connect_timeout, outbound.read_timeout)

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        response = super().request(*args, **kwargs)
        if response.status_code in _RETRYABLE_STATUS:
            # MSAL turns these into an exception without the response: keep what the caller
            # (the same worker thread) needs to back off the way Entra asks.
            _last_error.status = response.status_code
            _last_error.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return response


_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_last_error = threading.local()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110
    §10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
    """Tokens for one identity, of any kind, from MSAL run in a worker thread."""

    def __init__(self, identity: IdentityConfig, outbound: OutboundConfig) -> None:
        self._identity = identity
        self._outbound = outbound
        self._app: Any = None
        self._app_key = ""  # what the application was built with (a digest, never a secret)
        self._session: _PinnedSession | None = None
        self._build_lock = threading.Lock()
        if identity.kind == "username_password":
            _log().warning(
                "identity.password_flow_deprecated",
                identity=identity.name,
                message="username/password (ROPC) is deprecated by Microsoft and cannot pass "
                "multi-factor authentication; use a certificate, managed identity or workload "
                "identity federation instead",
            )

    def __repr__(self) -> str:
        return f"MsalProvider(identity={self._identity.name!r}, kind={self._identity.kind!r})"

    # -- building MSAL applications (in the worker thread) --

    def _credential(self) -> tuple[str, Any]:
        """The confidential client's credential and a digest that changes when it does."""
        identity = self._identity
        if identity.kind == "certificate":
            assert identity.certificate_path is not None
            data = identity.certificate_path.read_bytes()
            password = identity.certificate_password
            cert = load_certificate(
                identity.certificate_path, password.reveal() if password else None
            )
            credential: Any = cert.msal_credential(send_chain=identity.send_certificate_chain)
            return _digest(data), credential
        if identity.kind == "workload_identity":
            token_file = identity.federated_token_file
            assert token_file is not None
            # MSAL calls this for every token request: the platform rotates the file.
            return "federated", {"client_assertion": lambda: read_token_file(token_file)}
        if identity.client_secret_file is not None:
            secret = read_first_line(identity.client_secret_file)
        else:
            assert identity.client_secret is not None
            secret = identity.client_secret.reveal()
        return _digest(secret.encode()), secret

    def _application(self, key: str, build: Callable[[_PinnedSession], Any]) -> Any:
        with self._build_lock:
            if self._app is None or key != self._app_key:
                if self._session is not None:
                    self._session.close()
                self._session = _PinnedSession(
                    self._outbound,
                    direct=self._identity.kind == "managed_identity",
                    authority=self._identity.authority_host,
                )
                self._app, self._app_key = build(self._session), key
            return self._app

    def _common(self, session: _PinnedSession) -> dict[str, Any]:
        return {
            "authority": self._identity.authority,
            "instance_discovery": self._identity.instance_discovery,
            "http_client": session,
            "token_cache": _NoStoreCache(),
            "http_cache": _NoHttpCache(),
        }

    def _acquire(self, scope: str) -> dict[str, Any]:
        identity = self._identity
        kind = identity.kind
        if kind == "managed_identity":
            assert identity.managed_identity is not None
            which, value = identity.managed_identity
            spec = (
                msal.SystemAssignedManagedIdentity()
                if which == "system"
                else msal.UserAssignedManagedIdentity(**{which: value})
            )
            app = self._application(
                "managed",
                lambda s: msal.ManagedIdentityClient(
                    spec, http_client=s, token_cache=_NoStoreCache(), http_cache=_NoHttpCache()
                ),
            )
            result: dict[str, Any] = app.acquire_token_for_client(resource=scope_to_resource(scope))
            return result
        if kind == "username_password":
            password = (
                read_first_line(identity.password_file)
                if identity.password_file is not None
                else identity.password.reveal()
                if identity.password is not None
                else ""
            )
            app = self._application(
                "public",
                lambda s: msal.PublicClientApplication(identity.client_id, **self._common(s)),
            )
            warnings.filterwarnings("ignore", _ROPC_WARNING, DeprecationWarning)
            user_result: dict[str, Any] = app.acquire_token_by_username_password(
                identity.username, password, [scope]
            )
            return user_result
        key, credential = self._credential()
        app = self._application(
            key,
            lambda s: msal.ConfidentialClientApplication(
                identity.client_id, client_credential=credential, **self._common(s)
            ),
        )
        app_result: dict[str, Any] = app.acquire_token_for_client([scope])
        return app_result

    def _acquire_safely(self, scope: str) -> dict[str, Any]:
        _last_error.status, _last_error.retry_after = None, None
        try:
            result = self._acquire(scope)
            if "access_token" not in result:  # Entra's error JSON: keep its Retry-After too
                result["retry_after"] = getattr(_last_error, "retry_after", None)
            return result
        except CredentialError as e:
            raise TokenError("invalid_credential", str(e)) from None
        except requests.RequestException as e:
            # The exception text names the URL and the cause, never the form data.
            raise TokenError("authority_unreachable", _describe(e)) from None
        except msal.exceptions.MsalServiceError as e:  # an HTTP error without Entra's JSON (5xx)
            status = getattr(_last_error, "status", None)
            raise TokenError(
                "throttled" if status == 429 else "service_unavailable",
                str(e.args[0]) if e.args else "",
                retry_after=getattr(_last_error, "retry_after", None),
            ) from None
        except msal.ManagedIdentityError as e:
            raise TokenError("managed_identity_unavailable", str(e)) from None
        except ValueError as e:  # MSAL's way to say the authority or its metadata is wrong
            raise TokenError("authority_invalid", str(e)) from None
        except OSError as e:  # a credential file vanished between load and now
            raise TokenError("invalid_credential", f"{type(e).__name__}: {e.strerror}") from None

    async def get(self, scope: str) -> Token:
        started, started_wall = time.monotonic(), time.time()
        result = await asyncio.to_thread(self._acquire_safely, scope)
        if "access_token" not in result:
            raise TokenError(
                str(result.get("error") or "unknown_error"),
                str(result.get("error_description") or ""),
                [int(c) for c in result.get("error_codes") or () if isinstance(c, int)],
                retry_after=result.get("retry_after"),
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
            if self._session is not None:
                self._session.close()
            self._app = self._session = None


def warn_about_literal_secrets(path: Path, identities: Mapping[str, IdentityConfig]) -> None:
    """Warn once when the config file holds literal secrets that other users can read."""
    keys = [key for identity in identities.values() for key in identity.literal_secrets]
    text = literal_secret_warning(path, keys)
    if text is not None:
        _log().warning("config.secrets_readable", path=str(path), message=text)


def make_provider(identity: IdentityConfig, outbound: OutboundConfig) -> TokenProvider:
    """The token provider for ``identity`` (uncached; wrap it in CachingProvider to serve)."""
    return MsalProvider(identity, outbound)


def _log() -> Any:
    # Looked up when used, not at import: these are one-off start-up warnings, and a logger
    # cached before logging was (re)configured would write to a stale stream.
    return structlog.get_logger("proxy.identity")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _describe(e: requests.RequestException) -> str:
    cause = e.__context__ or e
    url = e.request.url if e.request is not None else ""
    return f"{type(e).__name__} for {url}: {type(cause).__name__}".strip()
