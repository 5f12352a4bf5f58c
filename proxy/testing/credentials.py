"""Client credentials for tests: certificates (PEM and PFX) and a workload-identity issuer."""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

# The audience Entra expects in a federated credential's token (workload identity federation).
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"  # noqa: S105 (an audience)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ClientCertificate:
    """An RSA key with a self-signed certificate, as uploaded to an app registration."""

    def __init__(self, common_name: str = "ppproxy test client", *, days: int = 30) -> None:
        self.common_name = common_name
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def x5t(self) -> str:
        """The SHA-1 thumbprint, base64url, as in a JWT's ``x5t`` header (RFC 7515 §4.1.7)."""
        return b64url(self.certificate.fingerprint(hashes.SHA1()))  # noqa: S303 (x5t is SHA-1)

    def key_pem(self, password: str | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def write_pem(self, path: Path | str, password: str | None = None) -> Path:
        """Write key and certificate into one PEM file (the form Entra docs and az use)."""
        path = Path(path)
        path.write_bytes(self.key_pem(password) + self.cert_pem)
        return path

    def write_pfx(self, path: Path | str, password: str | None = None) -> Path:
        """Write a PKCS#12 file holding key and certificate."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        path = Path(path)
        path.write_bytes(
            pkcs12.serialize_key_and_certificates(
                b"client", self._key, self.certificate, None, encryption
            )
        )
        return path


class WorkloadIssuer:
    """An OIDC issuer of workload tokens (a Kubernetes cluster's service-account issuer)."""

    def __init__(self, issuer: str = "https://oidc.cluster.test/00000000") -> None:
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._key.public_key()
        self.kid = uuid.uuid4().hex

    def token(
        self,
        subject: str,
        *,
        audience: str = TOKEN_EXCHANGE_AUDIENCE,
        lifetime: float = 3600,
        issued_at: float | None = None,
        **claims: Any,
    ) -> str:
        """A signed service-account token, as the platform writes it to the token file."""
        now = time.time() if issued_at is None else issued_at
        body = {
            "iss": self.issuer,
            "sub": subject,
            "aud": [audience],
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            **claims,
        }
        return jwt.encode(body, self._key, algorithm="RS256", headers={"kid": self.kid})

    def write_token(self, path: Path | str, subject: str, **kwargs: Any) -> Path:
        path = Path(path)
        path.write_text(self.token(subject, **kwargs) + "\n")
        return path
