"""An RS256 signing key with a self-signed certificate, published as a JWK."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    """A fresh 2048-bit RSA key; kid and x5t are its certificate's SHA-1 thumbprint."""

    def __init__(self) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public = self._private.public_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy.testing signing key")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._private, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        # x5t is defined as the SHA-1 thumbprint (RFC 7515 §4.1.7); Entra uses it as kid too.
        self.kid = _b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 (see above)
        self._x5c = base64.b64encode(der).decode("ascii")

    @property
    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, shaped like an entry of Entra's keys document."""
        numbers = jwt.algorithms.RSAAlgorithm.to_jwk(self.public, as_dict=True)
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": numbers["n"],
            "e": numbers["e"],
            "x5c": [self._x5c],
        }

    def sign(self, claims: dict[str, Any]) -> str:
        """Encode claims as an RS256 JWT with kid and x5t headers."""
        return jwt.encode(
            claims, self._private, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid}
        )
