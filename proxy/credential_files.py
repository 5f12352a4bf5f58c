"""Credential material: secret files, certificates, config-file permissions.

Pure helpers with no MSAL in them, shared by the configuration (which checks everything before
the port is bound) and :mod:`proxy.identity` (which re-reads files at token time). Error
messages name files and keys, never a secret's value.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12


class CredentialError(ValueError):
    """A credential cannot be read or used; the message is safe to show."""


def read_first_line(path: Path) -> str:
    """The first line of ``path`` without its line ending (Kubernetes and systemd credentials
    are files that may or may not end in a newline)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CredentialError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{path} is not UTF-8 text") from None
    line = text.splitlines()[0] if text else ""
    if not line:
        raise CredentialError(f"{path} is empty")
    return line


def read_token_file(path: Path) -> str:
    """A federated token (a JWT) from ``path``, surrounding whitespace removed."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except OSError as e:
        raise CredentialError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{path} does not hold a token") from None
    if token.count(".") != 2:
        raise CredentialError(f"{path} does not hold a JWT")
    return token


@dataclass(frozen=True, slots=True)
class Certificate:
    """A client certificate ready for MSAL: unencrypted PKCS#8 key, SHA-1 thumbprint (hex)
    and the certificate chain in PEM, leaf first."""

    private_key_pem: str = field(repr=False)
    sha1_thumbprint: str
    chain_pem: str

    def msal_credential(self, *, send_chain: bool) -> dict[str, str]:
        """MSAL's ``client_credential``, as azure-identity's CertificateCredential builds it:
        RS256 with ``x5t``; the chain goes in ``x5c`` only for Subject Name/Issuer auth."""
        credential = {"private_key": self.private_key_pem, "thumbprint": self.sha1_thumbprint}
        if send_chain:
            credential["public_certificate"] = self.chain_pem
        return credential


def load_certificate(path: Path, password: str | None) -> Certificate:
    """Read a PEM (key and certificates) or PFX/PKCS#12 file; CredentialError when it does not
    hold a usable private key with its matching certificate."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CredentialError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    secret = password.encode() if password else None
    if b"-----BEGIN" in data:
        key, certs = _pem(data, secret, path)
    else:
        try:
            pfx_key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
        except ValueError:
            raise CredentialError(
                f"{path}: not a PEM or PFX file, or a wrong certificate_password"
            ) from None
        key, certs = pfx_key, [c for c in (cert, *extra) if c is not None]
    if key is None or not certs:
        raise CredentialError(f"{path} must hold both the private key and its certificate")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CredentialError(f"{path}: the private key must be RSA or EC")
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    leaf = next(
        (
            c
            for c in certs
            if c.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == public
        ),
        None,
    )
    if leaf is None:
        raise CredentialError(f"{path}: no certificate matches the private key")
    ordered = [leaf, *(c for c in certs if c is not leaf)]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    chain = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in ordered)
    # x5t is the SHA-1 thumbprint by definition (RFC 7515 §4.1.7), not a security choice.
    thumbprint = leaf.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    return Certificate(key_pem, thumbprint, chain)


_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:ENCRYPTED |RSA |EC )?PRIVATE KEY)-----.+?-----END \1-----", re.S
)


def _pem(
    data: bytes, password: bytes | None, path: Path
) -> tuple[object | None, list[x509.Certificate]]:
    try:
        certs = x509.load_pem_x509_certificates(data) if b"CERTIFICATE-----" in data else []
    except ValueError:
        raise CredentialError(f"{path}: a certificate in it cannot be parsed") from None
    match = _PEM_KEY.search(data)
    if match is None:
        return None, certs
    try:
        key = serialization.load_pem_private_key(match.group(0), password)
    except TypeError:  # encrypted without a password, or a password for a plain key
        raise CredentialError(
            f"{path}: the private key is encrypted; give certificate_password"
            if password is None
            else f"{path}: the private key is not encrypted; remove certificate_password"
        ) from None
    except ValueError:
        raise CredentialError(
            f"{path}: cannot read the private key (wrong certificate_password?)"
        ) from None
    return key, certs


class ServerPairError(CredentialError):
    """A listener's certificate and key cannot be used; ``key`` names the [server] key at
    fault (``tls_cert``, ``tls_key`` or ``tls_key_password``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def check_server_pair(cert: Path, key: Path | None, password: str | None) -> x509.Certificate:
    """The leaf of the PEM chain in ``cert``, checked against the private key in ``key`` (or in
    ``cert`` when None) as OpenSSL will use them: the leaf first, then its issuers."""
    key = key or cert
    try:
        chain_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as e:
        raise ServerPairError(
            "tls_cert", f"cannot read {e.filename}: {e.strerror or type(e).__name__}"
        ) from None
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ServerPairError("tls_cert", f"{cert} holds no PEM certificate") from None
    match = _PEM_KEY.search(key_pem)
    if match is None:
        raise ServerPairError("tls_key", f"{key} holds no PEM private key")
    try:
        private = serialization.load_pem_private_key(
            match.group(0), password.encode() if password else None
        )
    except TypeError:  # encrypted without a password, or a password for a plain key
        raise ServerPairError(
            "tls_key_password",
            f"{key}: the private key is encrypted; give tls_key_password or tls_key_password_file"
            if password is None
            else f"{key}: the private key is not encrypted; remove the password",
        ) from None
    except ValueError:
        raise ServerPairError(
            "tls_key_password", f"{key}: cannot read the private key (wrong password?)"
        ) from None
    if _spki(chain[0].public_key()) != _spki(private.public_key()):
        raise ServerPairError(
            "tls_key",
            f"{key} is not the key of the first certificate in {cert} "
            "(the server's own certificate must come first, then its issuers)",
        )
    return chain[0]


def _spki(public: object) -> bytes:
    return public.public_bytes(  # type: ignore[attr-defined, no-any-return]  # every key type
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def readable_by_others(path: Path) -> bool:
    """Whether group or others may read ``path`` (POSIX); False where that cannot be told."""
    if os.name != "posix":
        return False
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def literal_secret_warning(path: Path, keys: Iterable[str]) -> str | None:
    """The text of the start-up warning when ``path`` holds literal secrets (``keys``, their
    key paths) and other users may read it; None when there is nothing to warn about."""
    keys = sorted(keys)
    if not keys or not readable_by_others(path):
        return None
    return (
        f"{path} holds secrets ({', '.join(keys)}) and other users can read it: "
        f"use ${{VAR}} or a *_file key, or chmod 600 {path}"
    )
