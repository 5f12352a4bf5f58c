"""Entra ID's checks of client assertions (certificates and federated tokens), as pure
functions returning the error Entra would answer, or None."""

from __future__ import annotations

import time
from base64 import b64decode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from proxy.testing._entra import EntraError
from proxy.testing.credentials import TOKEN_EXCHANGE_AUDIENCE, b64url

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True, slots=True)
class Federation:
    """A federated identity credential on an app registration: trust tokens from ``issuer``
    for ``subject`` with ``audience``, signed by ``public_key`` (the issuer's JWKS)."""

    issuer: str
    subject: str
    public_key: Any = field(repr=False)
    audience: str = TOKEN_EXCHANGE_AUDIENCE


def _invalid_client(code: int, text: str) -> EntraError:
    return EntraError(401, "invalid_client", code, text)


def _header(assertion: str) -> dict[str, Any] | None:
    try:
        header: dict[str, Any] = jwt.get_unverified_header(assertion)
    except jwt.DecodeError:
        return None
    return header


def _malformed() -> EntraError:
    return EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.")


def _time_range(claims: Mapping[str, Any], now: float) -> EntraError | None:
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat", 0))
    # Entra tolerates five minutes of clock skew before nbf, none after exp.
    early = isinstance(nbf, int | float) and nbf > now + 300
    if not isinstance(exp, int | float) or exp <= now or early:
        return _invalid_client(
            700024,
            f"Client assertion is not within its valid time range. Current time: "
            f"{iso_time(now)}, assertion valid from {iso_time(nbf)}, expiry time of assertion "
            f"{iso_time(exp)}.",
        )
    return None


def iso_time(value: Any) -> str:
    """A NumericDate as Entra prints times in its errors; "(none)" for a missing one."""
    if not isinstance(value, int | float):
        return "(none)"
    return time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(value))


def _thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    # x5t is SHA-1 by definition (RFC 7515 §4.1.7); x5t#S256 is its SHA-256 sibling (§4.1.8).
    sha1 = b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303
    return sha1, b64url(cert.fingerprint(hashes.SHA256()))


def check_certificate_assertion(
    assertion: str,
    *,
    client_id: str,
    token_endpoints: Sequence[str],
    certificates: Sequence[x509.Certificate],
    trusted_subject: str | None,
    now: float | None = None,
) -> EntraError | None:
    """A certificate's client assertion (RFC 7523 §3): the key is found by ``x5t#S256`` or
    ``x5t`` among the registered certificates, or, with Subject Name/Issuer trust, taken from
    the ``x5c`` chain whose leaf has the trusted subject; then signature, time, audience
    (the token endpoint) and ``iss`` = ``sub`` = client_id."""
    now = time.time() if now is None else now
    header = _header(assertion)
    if header is None:
        return _malformed()
    # MSAL pads its base64url thumbprints; Entra accepts them with or without the padding.
    sha1, sha256 = (
        v.rstrip("=") if isinstance(v, str) else None
        for v in (header.get("x5t"), header.get("x5t#S256"))
    )
    key_cert = next(
        (c for c in certificates if sha1 in _thumbprints(c)[:1] or sha256 in _thumbprints(c)[1:]),
        None,
    )
    chain = header.get("x5c")
    if key_cert is None and trusted_subject is not None and isinstance(chain, list) and chain:
        try:
            leaf = x509.load_der_x509_certificate(b64decode(chain[0]))
        except ValueError:
            return _malformed()
        if leaf.subject.rfc4514_string() == trusted_subject and (
            sha1 == _thumbprints(leaf)[0] or sha256 == _thumbprints(leaf)[1]
        ):
            key_cert = leaf
    if key_cert is None:
        return _invalid_client(
            700027,
            "The certificate with identifier used to sign the client assertion is not "
            "registered on application. [Reason - The key was not found., Thumbprint of key "
            f"used by client: '{sha256 or sha1}', Please visit the Azure Portal, Graph Explorer "
            f"or directly use MS Graph to see configured keys for app Id '{client_id}'.]",
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion,
            key_cert.public_key(),  # type: ignore[arg-type]  # an RSA or EC key
            algorithms=["RS256", "PS256", "ES256"],
            options={"verify_signature": True, "verify_aud": False, "verify_exp": False,
                     "verify_nbf": False, "verify_iat": False},
        )  # fmt: skip
    except jwt.InvalidSignatureError:
        return _invalid_client(700027, "Client assertion failed signature validation.")
    except jwt.InvalidTokenError:
        return _malformed()
    problem = _time_range(claims, now)
    if problem is not None:
        return problem
    if claims.get("aud") not in token_endpoints:
        return _invalid_client(
            700023,
            "Client assertion audience claim does not match Realm issuer. Review the "
            "documentation at https://docs.microsoft.com/azure/active-directory/develop/"
            "active-directory-certificate-credentials .",
        )
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return _invalid_client(
            700021, "Client assertion application identifier doesn't match 'client_id' parameter."
        )
    return None


def check_federated_assertion(
    assertion: str,
    *,
    federations: Sequence[Federation],
    now: float | None = None,
) -> EntraError | None:
    """A federated token (workload identity federation): a federated credential must match its
    issuer, subject and audience; then its signature (the issuer's key) and time."""
    now = time.time() if now is None else now
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return _malformed()
    audiences = unverified.get("aud")
    audiences = audiences if isinstance(audiences, list) else [audiences]
    match = next(
        (
            f
            for f in federations
            if f.issuer == unverified.get("iss")
            and f.subject == unverified.get("sub")
            and f.audience in audiences
        ),
        None,
    )
    if match is None:
        return EntraError(
            400,
            "invalid_request",
            70021,
            "No matching federated identity record found for presented assertion. Assertion "
            f"Issuer: '{unverified.get('iss')}'. Assertion Subject: '{unverified.get('sub')}'. "
            f"Assertion Audience: '{','.join(str(a) for a in audiences)}'.",
        )
    try:
        jwt.decode(
            assertion,
            match.public_key,
            algorithms=["RS256"],
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        return _invalid_client(700027, "Client assertion failed signature validation.")
    except jwt.InvalidTokenError:
        return _malformed()
    return _time_range(unverified, now)
