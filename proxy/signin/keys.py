"""The tenant's signing keys: found through its OpenID Connect metadata, fetched with aiohttp on
the event loop, cached, and fetched again when a token names a key not seen yet (Entra rolls its
keys over), at most once a minute.

The metadata (``{authority}/{tenant}/v2.0/.well-known/openid-configuration``) names the keys
document (``jwks_uri``) and the v2 issuer; both are read on every fetch. One fetch at a time:
requests that need keys while one is running wait for it (single flight), at most
``wait_timeout`` seconds. The documents are small JSON files read whole, up to 1 MiB each (the
one bounded exception to streaming here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

from ..config.model import OutboundConfig
from ..config.signin import EntraConfig
from ..errors import SignInUnavailable

log = structlog.get_logger("proxy.signin")

MAX_DOCUMENT_BYTES = 1024 * 1024
MIN_INTERVAL = 60.0  # seconds between two fetches after one that worked
RETRY_INTERVAL = 5.0  # seconds before trying again after a failure, while no keys are in hand
MAX_AGE = 24 * 3600.0  # keys older than this are fetched again when next needed


class KeysError(Exception):
    """Why the metadata or the keys could not be had (a message for logs and readyz)."""


class SigningKeys:
    """The keys that sign the tenant's tokens, by ``kid``, and the tenant's v2 issuer."""

    def __init__(
        self,
        entra: EntraConfig,
        outbound: OutboundConfig,
        *,
        wait_timeout: float = 5.0,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entra = entra
        self._proxy = outbound.proxy_for(entra.authority_host)
        self._timeout = aiohttp.ClientTimeout(total=max(wait_timeout, outbound.connect_timeout))
        self._wait_timeout = wait_timeout
        self._min_interval = min_interval
        self._clock = clock
        self._keys: dict[str, RSAPublicKey] = {}
        self.issuer_v2: str | None = None
        self._loaded_at: float | None = None  # when the keys in hand were fetched
        self._next_fetch = 0.0  # no fetch before this (clock)
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0  # attempts, for tests and readyz
        self.last_error: str | None = None
        self.last_fetch: float | None = None  # time.time() of the last fetch that worked

    def __repr__(self) -> str:
        return f"SigningKeys(tenant={self._entra.tenant_id!r}, keys={list(self._keys)!r})"

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    async def ready(self, session: aiohttp.ClientSession) -> None:
        """Make sure the keys and the issuer were fetched once (``SignInUnavailable`` if not)."""
        if self._loaded_at is None:
            await self._refresh(session, self._clock())

    async def key(self, kid: str, session: aiohttp.ClientSession) -> RSAPublicKey | None:
        """The key with this ``kid``; fetches the keys again when it is unknown or they are a
        day old, unless they were fetched less than a minute ago."""
        now = self._clock()
        key = self._keys.get(kid)
        if key is not None and self._loaded_at is not None and now - self._loaded_at < MAX_AGE:
            return key
        if self._task is None and now < self._next_fetch:
            if self._loaded_at is None:
                raise SignInUnavailable(
                    f"the tenant's signing keys are unavailable: {self.last_error}"
                )
            return key  # an unknown kid within the minute: refused without asking Entra again
        await self._refresh(session, now)
        return self._keys.get(kid)

    async def _refresh(self, session: aiohttp.ClientSession, now: float) -> None:
        if self._task is None:
            if now < self._next_fetch and self._loaded_at is None:
                raise SignInUnavailable(
                    f"the tenant's signing keys are unavailable: {self.last_error}"
                )
            self._task = asyncio.get_running_loop().create_task(self._fetch(session))
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._wait_timeout)
        except TimeoutError:
            raise SignInUnavailable(
                f"the tenant's signing keys did not arrive within {self._wait_timeout:g} s"
            ) from None
        if self._loaded_at is None:
            raise SignInUnavailable(f"the tenant's signing keys are unavailable: {self.last_error}")

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        self.fetches += 1
        try:
            metadata = await self._json(session, self._entra.metadata_url)
            issuer, jwks_uri = _metadata(metadata, self._entra.tenant_id)
            keys = _keys(await self._json(session, jwks_uri))
        except KeysError as e:
            self.last_error = str(e)
            # Soon again only while there are no keys (members cannot sign in at all); with
            # keys in hand an unknown kid must not make Entra be asked more than once a minute.
            wait = RETRY_INTERVAL if self._loaded_at is None else self._min_interval
            self._next_fetch = self._clock() + max(RETRY_INTERVAL, wait)
            log.warning("signin.keys_failed", error=self.last_error, kept=len(self._keys))
            return
        finally:
            self._task = None
        added = sorted(keys.keys() - self._keys.keys())
        self._keys, self.issuer_v2 = keys, issuer
        self._loaded_at = self._clock()
        self._next_fetch = self._loaded_at + self._min_interval
        self.last_error, self.last_fetch = None, time.time()
        log.info("signin.keys_fetched", keys=len(keys), new=added)

    async def _json(self, session: aiohttp.ClientSession, url: str) -> Mapping[str, Any]:
        try:
            async with session.get(
                url, proxy=self._proxy, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise KeysError(f"{url} answered {response.status}")
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as e:
            # The exception's text only: its repr may hold request headers.
            raise KeysError(f"{url}: {type(e).__name__}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise KeysError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise KeysError(f"{url}: not JSON") from None
        if not isinstance(document, dict):
            raise KeysError(f"{url}: not a JSON object")
        return document

    def status(self) -> dict[str, Any]:
        """For readyz: how many keys, when fetched, the last error."""
        return {
            "keys": len(self._keys),
            "last_fetch": self.last_fetch,
            "last_error": self.last_error,
        }


def _metadata(document: Mapping[str, Any], tenant: str) -> tuple[str, str]:
    issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
    if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
        raise KeysError("the OpenID metadata names no issuer or jwks_uri")
    issuer = issuer.replace("{tenantid}", tenant)
    if tenant not in issuer:
        raise KeysError(f"the OpenID metadata's issuer {issuer!r} is not the tenant's")
    if not jwks_uri.startswith("https://"):
        raise KeysError("the OpenID metadata's jwks_uri is not https")
    return issuer, jwks_uri


def _keys(document: Mapping[str, Any]) -> dict[str, RSAPublicKey]:
    """RSA signature keys by kid; other kinds of keys are skipped."""
    found: dict[str, RSAPublicKey] = {}
    listed = document.get("keys")
    if not isinstance(listed, list):
        raise KeysError("the keys document has no keys")
    for jwk in listed:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        kid, n, e = jwk.get("kid"), jwk.get("n"), jwk.get("e")
        if not isinstance(kid, str) or not isinstance(n, str) or not isinstance(e, str):
            continue
        try:
            found[kid] = RSAPublicNumbers(_uint(e), _uint(n)).public_key()
        except (ValueError, binascii.Error):
            continue  # one broken key must not take the others with it
    if not found:
        raise KeysError("the keys document has no usable RSA signing key")
    return found


def _uint(value: str) -> int:
    """A base64url big-endian unsigned integer (RFC 7518 §6.3.1)."""
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
