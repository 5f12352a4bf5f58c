"""What every MSAL-backed provider shares: the pinned HTTP session, MSAL's caches switched off,
running MSAL in a worker thread, and turning its answers into tokens or ``TokenError``.

MSAL is blocking, so every call into it (building an application fetches the authority's
metadata) runs in a worker thread, never on the event loop. MSAL's own caches are switched off:
:class:`proxy.tokens.CachingProvider` caches and backs off.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information
import requests

from .. import jwt_unverified, reach
from ..config import IdentityConfig, OutboundConfig
from ..credential_files import CredentialError
from ..tokens import ScopeStatus, Token, TokenError
from ..trust import TrustAdapter, client_context


class PinnedSession(requests.Session):
    """A requests session that the environment cannot steer, for every call to Entra ID and
    Power Platform made outside the forwarder (MSAL's, the device code flow's, BAP's).

    With ``trust_env`` on, requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace the
    session's trust (so ``outbound.ca_file`` would not win), picks proxies per request and
    sends ``~/.netrc`` credentials in place of the client's own. TLS trust comes from
    :mod:`proxy.trust`; the proxy for each URL is ``outbound.proxy_for``'s (the proxy settings
    were read once, at load): never one for a loopback host or plain ``http://``, whatever URL
    the authority's metadata points MSAL at, and none at all when ``direct`` (a managed
    identity endpoint on this machine). Nothing else is read from the environment here.
    """

    def __init__(self, outbound: OutboundConfig, *, direct: bool = False) -> None:
        super().__init__()
        self.trust_env = False
        # The one trust decision (proxy/trust.py): outbound.ca_file, else the system's store.
        self.mount("https://", TrustAdapter(client_context(outbound.ca_file)))
        # A managed identity endpoint is on this machine or link-local (169.254.169.254):
        # never through a proxy.
        self._direct = direct
        self._outbound = outbound
        self._timeout = (outbound.connect_timeout, outbound.read_timeout)

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        target = url.decode() if isinstance(url, bytes) else url
        proxy = None if self._direct else self._outbound.proxy_for(target)
        # A None value removes the scheme from the proxies requests uses: a direct connection.
        kwargs["proxies"] = {"http": proxy, "https": proxy}
        response = super().request(method, url, *args, **kwargs)
        if response.status_code in _RETRYABLE_STATUS:
            # MSAL turns these into an exception or an error dict without the response: note
            # what the caller needs to back off the way Entra asks, in the call's own record.
            outcome = _OUTCOME.get(None)
            if outcome is not None:
                outcome.status = response.status_code
                outcome.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return response


_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(slots=True)
class _Outcome:
    """What one token request's HTTP answer said beyond what MSAL passes on."""

    status: int | None = None
    retry_after: float | None = None


# Each token request runs in its own copied context (asyncio.to_thread), so the record set here
# belongs to that one call, whichever thread runs it and however many run at once.
_OUTCOME: contextvars.ContextVar[_Outcome] = contextvars.ContextVar("msal_outcome")


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


class NoStoreCache(msal.TokenCache):  # type: ignore[misc]  # msal is untyped
    """MSAL's cache would hand back a token until 5 minutes before expiry, which defeats
    refreshing ahead; :class:`CachingProvider` caches instead, so MSAL stores nothing."""

    def add(self, event: Any, now: Any = None) -> None:
        return None


class NoHttpCache(dict[Any, Any]):
    """MSAL's ``http_cache`` remembers error responses and replays them (its throttling) for
    seconds to a minute; the cache wrapper backs off on its own, so nothing is remembered here."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class MsalProvider:
    """Tokens for one identity from MSAL, run in a worker thread.

    A subclass says how to build its kind of MSAL application (``_build``), what it is built
    with (``_credential``, whose key changes when a credential file changes) and how to ask
    for a token (``_acquire``).
    """

    def __init__(self, identity: IdentityConfig, outbound: OutboundConfig) -> None:
        self._identity = identity
        self._outbound = outbound
        self._app: Any = None
        self._app_key = ""  # what the application was built with (a digest, never a secret)
        self._session: PinnedSession | None = None
        self._build_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self._identity.name!r})"

    # -- what a kind provides (called in the worker thread) --

    def _credential(self) -> tuple[str, Any]:
        """A key that changes when the credential does, and the credential for ``_build``."""
        return "", None

    def _build(self, session: PinnedSession, credential: Any) -> Any:
        raise NotImplementedError

    def _acquire(self, app: Any, scope: str) -> dict[str, Any]:
        raise NotImplementedError

    def _direct(self) -> bool:
        """Whether the endpoint is local and must never be reached through a proxy."""
        return False

    # -- shared machinery --

    def _application(self) -> Any:
        key, credential = self._credential()
        with self._build_lock:
            if self._app is None or key != self._app_key:
                if self._session is not None:
                    self._session.close()
                self._session = PinnedSession(self._outbound, direct=self._direct())
                self._app, self._app_key = self._build(self._session, credential), key
            return self._app

    def _common(self, session: PinnedSession) -> dict[str, Any]:
        """The keyword arguments every MSAL client application takes from us."""
        return {
            "authority": self._identity.authority,
            "instance_discovery": self._identity.instance_discovery,
            "http_client": session,
            "token_cache": NoStoreCache(),
            "http_cache": NoHttpCache(),
        }

    def _call(self, acquire: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """Run ``acquire(app)`` and map every failure to ``TokenError`` (in the worker)."""
        outcome = _Outcome()
        reset = _OUTCOME.set(outcome)  # this call's own record: see _OUTCOME
        try:
            result = acquire(self._application())
            if "access_token" not in result:  # Entra's error JSON: keep its Retry-After too
                result["retry_after"] = outcome.retry_after
            return result
        except CredentialError as e:
            raise TokenError("invalid_credential", str(e)) from None
        except requests.RequestException as e:
            # Refused, DNS, TLS or timeout, with the host; never the exception (it holds the form).
            raise TokenError("authority_unreachable", reach.describe(e)) from None
        except msal.exceptions.MsalServiceError as e:  # an HTTP error without Entra's JSON (5xx)
            raise TokenError(
                "throttled" if outcome.status == 429 else "service_unavailable",
                str(e.args[0]) if e.args else "",
                retry_after=outcome.retry_after,
            ) from None
        except msal.ManagedIdentityError as e:
            raise TokenError("managed_identity_unavailable", str(e)) from None
        except ValueError as e:  # MSAL's way to say the authority or its metadata is wrong
            raise TokenError("authority_invalid", str(e)) from None
        except OSError as e:  # a credential file vanished between load and now
            raise TokenError("invalid_credential", f"{type(e).__name__}: {e.strerror}") from None
        finally:
            _OUTCOME.reset(reset)

    async def _run(self, acquire: Callable[[Any], dict[str, Any]], scope: str) -> Token:
        started, started_wall = time.monotonic(), time.time()
        result = await asyncio.to_thread(self._call, acquire)
        if "access_token" not in result:
            raise TokenError(
                str(result.get("error") or "unknown_error"),
                str(result.get("error_description") or ""),
                [int(c) for c in result.get("error_codes") or () if isinstance(c, int)],
                retry_after=result.get("retry_after"),
            )
        lifetime = float(result.get("expires_in") or 0)
        value = result["access_token"]
        return Token(
            value,
            scope,
            started + lifetime,
            lifetime,
            started_wall + lifetime,
            claims=jwt_unverified.summary(value),  # decoded once per token
        )

    # -- the TokenProvider protocol --

    async def token(self, scope: str) -> Token:
        return await self._run(lambda app: self._acquire(app, scope), scope)

    def invalidate(self, token: Token) -> bool:
        return True  # nothing is kept here: the next token is asked of Entra ID

    def status(self) -> Mapping[str, ScopeStatus]:
        return {}  # nothing is kept here: CachingProvider keeps the status

    async def close(self) -> None:
        """Close the HTTP session MSAL uses (its pooled connections to Entra ID)."""
        with self._build_lock:
            if self._session is not None:
                self._session.close()
            self._app = self._session = None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
