"""Entra ID's token-endpoint rules and error bodies, as pure functions."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

DEFAULT_SUFFIX = "/.default"

# Default texts for IdentityProvider.fail_with(), by AADSTS code.
DESCRIPTIONS = {
    7000215: "Invalid client secret provided. Ensure the secret being sent in the request is "
    "the client secret value, not the client secret ID, for a secret added to app "
    "'{client_id}'.",
    700016: "Application with identifier '{client_id}' was not found in the directory.",
    50196: "The server terminated an operation because it encountered a client request loop.",
    90033: "A transient error has occurred. Please try again.",
}


@dataclass(frozen=True, slots=True)
class EntraError:
    """An error answer: HTTP status, OAuth error, AADSTS code and text."""

    status: int
    error: str
    code: int
    description: str
    retry_after: str | None = None  # sent as the Retry-After header when set
    suberror: str | None = None  # e.g. consent_required, which MSAL reads to ask for consent


class ScriptedFailures:
    """The error the next token requests get instead of an answer (``fail_with()``)."""

    def __init__(self) -> None:
        self._error: EntraError | None = None
        self._remaining: int | None = None

    def script(self, error: EntraError | None, times: int | None) -> None:
        """Fail the next ``times`` requests (None: all) with error; None clears."""
        self._error, self._remaining = error, times

    def take(self) -> EntraError | None:
        """The error for the request arriving now, counting it, or None."""
        error = self._error
        if error is not None and self._remaining is not None:
            self._remaining -= 1
            if self._remaining <= 0:
                self._error = None
        return error


def unsupported_grant(grant_type: str) -> EntraError:
    """The answer to a grant this provider does not serve (or a missing grant_type)."""
    if not grant_type:
        return missing("grant_type")
    return EntraError(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant_type}'.",
    )


def check_secret(
    *, tenant: str, client_id: str, secret: str | None, expected_secret: str | None
) -> EntraError | None:
    """A confidential client's id and secret in Entra's order: client, then secret.
    expected_secret is None for an unknown client."""
    if not client_id:
        return missing("client_id")
    if expected_secret is None:
        return EntraError(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'{tenant}'. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant. You may "
            "have sent your authentication request to the wrong tenant.",
        )
    if not secret:
        return EntraError(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' "
            "or 'client_secret'.",
        )
    if not _same(secret, expected_secret):
        return EntraError(401, "invalid_client", 7000215, DESCRIPTIONS[7000215])
    return None


def error_body(
    problem: EntraError, *, client_id: str, correlation_id: str, error_uri: str
) -> dict[str, Any]:
    """Entra's error JSON: the description carries trace id, correlation id and time."""
    trace_id = str(uuid.uuid4())
    timestamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    text = problem.description.replace("{client_id}", client_id)
    return {
        "error": problem.error,
        "error_description": f"AADSTS{problem.code}: {text}\r\nTrace ID: {trace_id}\r\n"
        f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}",
        "error_codes": [problem.code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": error_uri,
        **({"suberror": problem.suberror} if problem.suberror else {}),
    }


def basic_credentials(header: str) -> tuple[str, str] | None:
    """client_id and secret from ``Authorization: Basic`` (RFC 6749 §2.3.1), else None.
    A malformed value gives empty strings, which fail validation."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, _, secret = decoded.partition(":")
    # Both parts are form-urlencoded before being joined (RFC 6749 §2.3.1).
    return unquote_plus(client_id), unquote_plus(secret)


def correlation_id(header: str | None) -> str:
    """The client-request-id header if it is a UUID (Entra echoes it), else a new one."""
    try:
        return str(uuid.UUID(header)) if header else str(uuid.uuid4())
    except ValueError:
        return str(uuid.uuid4())


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def missing(field: str) -> EntraError:
    """Entra's answer to a request without a required form field."""
    return EntraError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{field}'.",
    )


def check_scope(scope: str) -> EntraError | None:
    """Client credentials take exactly one ``{resource}/.default`` scope."""
    if not scope:
        return EntraError(
            400,
            "invalid_scope",
            70011,
            "The provided request must include a 'scope' input parameter.",
        )
    if len(scope.split()) != 1 or scope == DEFAULT_SUFFIX:
        return EntraError(
            400,
            "invalid_scope",
            70011,
            f"The provided value for the input parameter 'scope' is not valid. The scope "
            f"{scope} is not valid.",
        )
    if not scope.endswith(DEFAULT_SUFFIX):
        return EntraError(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
    return None
