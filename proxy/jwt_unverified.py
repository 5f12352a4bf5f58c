"""A JWT's header and claims read without verifying anything (RFC 7519 §7.2 steps 1-8).

For display only (``ppproxy token --decode``, the tap's claims summary): nothing read here is
trusted for a decision.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def _part(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of ``token``; ``ValueError`` saying why when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        header, claims = _part(parts[0]), _part(parts[1])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a JWT (a part is not base64url JSON)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT (header or claims are not JSON objects)")
    return header, claims


def claims(token: str) -> dict[str, Any] | None:
    """The claims of ``token``, or None when it is not a JWT."""
    try:
        return decode(token)[1]
    except ValueError:
        return None


# What the tap shows of a token: who it is for, which app it names, what it allows, its expiry.
SUMMARY_CLAIMS = ("aud", "appid", "roles", "exp")


def summary(token: str) -> dict[str, Any] | None:
    """``aud``, ``appid`` (or v2's ``azp``), ``roles`` and ``exp`` of ``token``; None when it is
    not a JWT. Only these claims are kept; the token itself goes nowhere."""
    payload = claims(token)
    if payload is None:
        return None
    shown = {k: payload[k] for k in SUMMARY_CLAIMS if k in payload}
    if "appid" not in shown and "azp" in payload:
        shown["appid"] = payload["azp"]  # v2.0 tokens name the client azp
    return shown
