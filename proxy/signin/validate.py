"""Checking a member's Entra ID access token (RFC 7519 §7.2, RFC 7515 §5.2), RS256 only.

Cheap checks come first, so a token that could never pass costs no key lookup and no fetch:
the shape, the algorithm, the times (``exp``, ``nbf``, with the clock skew), the tenant
(``tid``), the issuer (the tenant's v1 ``https://sts.windows.net/{tid}/`` or the v2 issuer its
metadata names), the audience; then the signature with the key named by ``kid``, verified
with ``cryptography``. Every refusal is :class:`~proxy.errors.InvalidToken` with a short reason
that never quotes the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ..config.signin import EntraConfig
from ..errors import InvalidToken


@dataclass(frozen=True, slots=True)
class Caller:
    """A signed-in member, as their validated token names them (never the token itself)."""

    oid: str  # the object id: stable, never reassigned; what grants should name
    upn: str | None  # upn, else preferred_username, else unique_name
    groups: frozenset[str]  # group object ids, lower case
    roles: frozenset[str]  # the gateway app's app roles assigned to the member
    expires: float  # time.time() after which the token no longer signs in (exp + skew)
    groups_overage: bool = False  # too many groups for the token: Entra left them out

    @property
    def name(self) -> str:
        """How logs and the tap name the member."""
        return self.upn or self.oid


KeyLookup = Callable[[str], Awaitable[RSAPublicKey | None]]
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# Entra's access tokens are a few KiB (a header line is at most 8 KiB anyway); anything longer
# is refused before it is decoded.
MAX_TOKEN_CHARS = 16 * 1024
# What hostile bytes can make decoding raise: bad base64 (binascii.Error), bad UTF-8 and bad
# JSON (ValueError), a deeply nested value (RecursionError).
_UNREADABLE = (ValueError, binascii.Error, RecursionError)


def _segment(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _object(part: str) -> dict[str, Any]:
    value = json.loads(_segment(part))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


async def validate(
    token: str,
    entra: EntraConfig,
    *,
    issuer_v2: Callable[[], Awaitable[str | None]],
    key: KeyLookup,
    now: float | None = None,
) -> Caller:
    """The member ``token`` signs in, or ``InvalidToken`` saying why not."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("the token is too long")
    head, _, rest = token.partition(".")
    body, _, signature = rest.partition(".")
    try:
        if not all(_BASE64URL.fullmatch(part) for part in (head, body, signature)):
            raise ValueError("not base64url")
        header, claims = _object(head), _object(body)
        signed = _segment(signature)
    except _UNREADABLE:
        raise InvalidToken("not a JWT") from None
    if header.get("alg") != "RS256":
        # Entra signs access tokens with RS256; "none" and HMAC algorithms are never accepted.
        raise InvalidToken("the token's signing algorithm is not RS256")
    now = time.time() if now is None else now
    _check_claims(claims, entra, now)
    issuer = claims.get("iss")
    if issuer != entra.v1_issuer and issuer != await issuer_v2():
        raise InvalidToken("the token's issuer is not the tenant's")
    kid = header.get("kid")
    public = await key(kid) if isinstance(kid, str) else None
    if public is None:
        raise InvalidToken("the token is signed by an unknown key")
    try:
        public.verify(
            signed,
            f"{head}.{body}".encode("ascii"),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise InvalidToken("the token's signature is not valid") from None
    return _caller(claims, entra)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A finite number of seconds, or None (an int too large for a float, NaN and infinity,
    which JSON parsing lets through, are not times)."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _check_claims(claims: Mapping[str, Any], entra: EntraConfig, now: float) -> None:
    skew = entra.clock_skew
    exp = _number(claims, "exp")
    if exp is None:
        raise InvalidToken("the token has no expiry (exp)")
    if now > exp + skew:
        raise InvalidToken("the token has expired")
    nbf = _number(claims, "nbf")
    if "nbf" in claims and nbf is None:
        raise InvalidToken("the token's nbf is not a number")
    if nbf is not None and now + skew < nbf:
        raise InvalidToken("the token is not valid yet (nbf)")
    if claims.get("tid") != entra.tenant_id:
        raise InvalidToken("the token is from another tenant")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if not any(isinstance(a, str) and a in entra.audience for a in audiences):
        raise InvalidToken("the token is for another audience")
    if not isinstance(claims.get("oid"), str) or not claims["oid"]:
        raise InvalidToken("the token names no object id (oid)")


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _caller(claims: Mapping[str, Any], entra: EntraConfig) -> Caller:
    upn = next(
        (
            v
            for v in (claims.get(k) for k in ("upn", "preferred_username", "unique_name"))
            if isinstance(v, str) and v
        ),
        None,
    )
    names = claims.get("_claim_names")
    overage = (isinstance(names, dict) and "groups" in names) or claims.get("hasgroups") is True
    exp = _number(claims, "exp")
    assert exp is not None  # checked above
    return Caller(
        oid=claims["oid"].lower(),
        upn=upn,
        groups=frozenset(g.lower() for g in _strings(claims.get("groups"))),
        roles=frozenset(_strings(claims.get("roles"))),
        expires=exp + entra.clock_skew,
        groups_overage=overage,
    )
