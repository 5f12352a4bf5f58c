"""The one redaction function everything that prints uses: log events, error messages, the tap
and its exports. Credentials are recognised by the key they sit under (``client_secret``,
``Authorization``, ``sig``...) and by their shape (JWTs, ``Bearer``/``Basic`` values, secret
query parameters, long random runs such as a bare JWT signature)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SENSITIVE_KEY = re.compile(
    r"authorization|cookie|token|secret|password|passwd|api[-_]?key|assertion|credential",
    re.IGNORECASE,
)
# Three base64url segments starting with a JSON header: a JWT, whatever field it sits in.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# "Bearer x", "Basic x" anywhere in free text.
_AUTH_VALUE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Form or query fields that carry credentials (e.g. an identity provider's request body), and
# the signature of an Azure shared access signature (SAS) URL, ``sig=``.
_SECRET_FIELD = re.compile(
    r"((?:client_secret|password|client_assertion|access_token|refresh_token"
    r"|(?<![A-Za-z0-9_])sig)=)[^&\s]+",
    re.IGNORECASE,
)
# A bare JWT signature (the third segment alone: 43 base64url characters for HS256, 86 for
# ES256, 342 for RS256): a long run of base64url with many capitals, small letters and digits
# mixed, as random bytes give (a 43-character one has about 17 of each letter case). Names,
# hex digests and ids with a GUID in them do not look like that; _looks_random decides.
_LONG_RUN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43,}(?![A-Za-z0-9_-])")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
REDACTED = "[redacted]"
# What every shape needs (a JWT's "eyJ", a credential's whitespace after its scheme, a field's
# "=", a signature's long run): a value without any of them has nothing to replace.
MAYBE_CREDENTIAL = re.compile(r"eyJ|[=\s]|[A-Za-z0-9_-]{43}")

# Keys whose values are counts or metadata about a token, not the token itself.
_SAFE_KEYS = frozenset({"token_source", "token_wait_ms", "expires_in"})


def redact_text(text: str) -> str:
    """``text`` with anything shaped like a credential replaced."""
    if MAYBE_CREDENTIAL.search(text) is None:  # the common case: nothing to replace
        return text
    text = _JWT.sub(REDACTED, text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    return _LONG_RUN.sub(_signature, text)


def _signature(m: re.Match[str]) -> str:
    run = m.group(0)
    return REDACTED if _looks_random(run) else run


def _looks_random(run: str) -> bool:
    """Whether a long base64url run looks like random bytes (a signature, a key) rather than a
    name: at least 8 capitals, 8 small letters and 2 digits, and no GUID in it."""
    upper = sum(c.isupper() for c in run)
    lower = sum(c.islower() for c in run)
    digits = sum(c.isdigit() for c in run)
    return upper >= 8 and lower >= 8 and digits >= 2 and _GUID.search(run) is None


_KEY_VERDICTS: dict[str, bool] = {}  # key -> sensitive; keys repeat, the regex need not


def sensitive_key(key: str) -> bool:
    """Whether a value under ``key`` (a header, field or log key) is a credential by name."""
    verdict = _KEY_VERDICTS.get(key)
    if verdict is None:
        verdict = key not in _SAFE_KEYS and _SENSITIVE_KEY.search(key) is not None
        if len(_KEY_VERDICTS) < 4096:  # client-chosen names (headers) must not grow it forever
            _KEY_VERDICTS[key] = verdict
    return verdict


def redact(value: Any, key: str = "") -> Any:
    """``value`` with credentials removed: by key name, and by shape in every string."""
    if key and sensitive_key(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Header lists arrive as (name, value) pairs: judge the value by the name.
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], str):
            return [value[0], redact(value[1], value[0])]
        return [redact(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value
