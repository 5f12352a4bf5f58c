"""Team sign-in: members send their own Entra ID access token for the gateway app as
``Authorization: Bearer``; :class:`SignIn` checks it and says who they are.

A valid token is remembered by its SHA-256 digest (never the token) until it expires, so a
member's next requests cost a digest and a dictionary lookup instead of an RSA verification;
the memory is bounded (least recently used go first). The signing keys come from
:mod:`.keys`, the checks from :mod:`.validate`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ..config.model import OutboundConfig
from ..config.signin import EntraConfig
from .keys import SigningKeys
from .validate import Caller, validate

__all__ = ["SIGNED_IN", "Caller", "SignIn", "SignedIn", "SigningKeys", "looks_like_jwt"]

MAX_REMEMBERED = 10_000  # validated tokens kept; about 1 KB each at most


def looks_like_jwt(credential: str) -> bool:
    """Three dot-separated parts: a JWT, not a client key (keys have no dots)."""
    return credential.count(".") == 2


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A request's signed-in member and their token, which is only ever used as the
    on-behalf-of assertion: never forwarded, logged or shown."""

    caller: Caller
    token: str = field(repr=False)


# On the request for the stages that act as the member (see proxy.acting).
SIGNED_IN = web.RequestKey("signed_in", SignedIn)


class SignIn:
    """Validates members' tokens for one ``[access.entra]``; kept across reloads that leave
    it (and ``[outbound]``) unchanged, with its keys and the tokens it has seen."""

    def __init__(
        self,
        entra: EntraConfig,
        outbound: OutboundConfig,
        *,
        wait_timeout: float = 5.0,
        max_remembered: int = MAX_REMEMBERED,
        keys: SigningKeys | None = None,
    ) -> None:
        self.entra = entra
        self.outbound = outbound
        self.wait_timeout = wait_timeout
        self.keys = keys or SigningKeys(entra, outbound, wait_timeout=wait_timeout)
        self._valid: LRUCache[bytes, Caller] = LRUCache(max_remembered)

    def __repr__(self) -> str:
        return f"SignIn(tenant={self.entra.tenant_id!r}, remembered={len(self._valid)})"

    async def authenticate(self, token: str, session: aiohttp.ClientSession) -> Caller:
        """The member ``token`` signs in; ``InvalidToken`` (401) or ``SignInUnavailable``
        (503, no keys) otherwise."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        caller = self._valid.get(digest)
        if caller is not None:
            if caller.expires >= time.time():
                return caller
            del self._valid[digest]
        keys = self.keys

        async def issuer_v2() -> str | None:
            await keys.ready(session)
            return keys.issuer_v2

        async def key(kid: str) -> RSAPublicKey | None:
            return await keys.key(kid, session)

        caller = await validate(token, self.entra, issuer_v2=issuer_v2, key=key)
        self._valid[digest] = caller
        return caller

    def status(self) -> dict[str, Any]:
        return {**self.keys.status(), "remembered_tokens": len(self._valid)}
