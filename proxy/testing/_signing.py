"""RS256 signing keys with self-signed certificates, published as a JWKS, and rotated."""

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
            "alg": "RS256",
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


class KeyRing:
    """The provider's keys: ``current`` signs what is issued from now on, ``published`` are
    served as the JWKS (``current`` first). A key that is never published, ``stranger``,
    signs tokens that must not verify."""

    def __init__(self) -> None:
        self.current = SigningKey()
        self._published = [self.current]
        self._stranger: SigningKey | None = None

    @property
    def published(self) -> tuple[SigningKey, ...]:
        """The keys in the JWKS."""
        return tuple(self._published)

    def rotate(self, *, keep_old: bool) -> SigningKey:
        """Make a new current key; the keys published so far stay only if keep_old."""
        key = SigningKey()
        self._published = [key, *self._published] if keep_old else [key]
        self.current = key
        return key

    def retire(self, kid: str) -> None:
        """Take a key other than the current one out of the JWKS."""
        if kid == self.current.kid:
            raise ValueError("the current signing key cannot be retired; rotate first")
        if self.find(kid) is None:
            raise KeyError(kid)
        self._published = [k for k in self._published if k.kid != kid]

    def find(self, kid: object) -> SigningKey | None:
        """The published key with this kid, or None."""
        return next((k for k in self._published if k.kid == kid), None)

    @property
    def stranger(self) -> SigningKey:
        """A key made on first use and never published."""
        if self._stranger is None:
            self._stranger = SigningKey()
        return self._stranger
