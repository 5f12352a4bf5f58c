"""The local CA behind ``tls = "local"``: made once in a folder of the user's, it issues the
listener's certificate for ``localhost``, ``127.0.0.1`` and ``::1`` (the way mkcert does).

Files, all ``0600`` in a ``0700`` folder (POSIX), each written whole under a temporary name and
renamed, so a reader never sees half a file:

- ``ca.pem``: the CA certificate, the one clients are told to trust;
- ``ca-key.pem``: its private key, which never leaves the folder;
- ``localhost.pem``: the listener's private key and certificate chain, in one file so that the
  key and the certificate are always replaced together.

The CA carries X.509 name constraints: it can only vouch for ``localhost`` (and names under
it), ``127.0.0.0/8`` and ``::1``. A client that trusts it cannot be fooled by it about any
other site, even by someone who copies its key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_PEM = "localhost.pem"
NAMES = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 10 * 365
# Apple's platforms refuse TLS server certificates valid for longer than 825 days, even from
# a CA the user added (support.apple.com/HT210176).
SERVER_DAYS = 825
RENEW_DAYS = 30  # a certificate with less left is issued anew at start or reload


class LocalCAError(Exception):
    """The local CA's folder cannot be used; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`ensure` found or did."""

    folder: Path
    created_ca: bool  # a new CA: clients must be told to trust it
    issued: bool  # a new certificate for the listener
    modes_fixed: tuple[str, ...] = ()  # files whose group/other permissions were removed

    @property
    def ca_cert(self) -> Path:
        return self.folder / CA_CERT

    @property
    def server_pem(self) -> Path:
        return self.folder / SERVER_PEM


def ensure(folder: Path, *, now: datetime.datetime | None = None) -> Outcome:
    """Make the CA unless it exists, and the listener's certificate unless a usable one exists
    (issued by this CA, for the local names, with at least ``RENEW_DAYS`` left)."""
    now = now or datetime.datetime.now(datetime.UTC)
    _make_folder(folder)
    fixed = _fix_modes(folder)
    ca_cert, ca_key = folder / CA_CERT, folder / CA_KEY
    if ca_cert.exists() != ca_key.exists():
        raise LocalCAError(
            f"{folder} holds only one of {CA_CERT} and {CA_KEY}; remove the folder to start "
            "over with a new CA (and trust the new one)"
        )
    created = not ca_cert.exists()
    if created:
        cert, key = _new_ca(now)
        _write(ca_key, _key_pem(key))
        _write(ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    else:
        cert, key = _read_ca(ca_cert, ca_key)
    issued = created or not _usable(folder / SERVER_PEM, cert, now)
    if issued:
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = _new_server_cert(leaf_key, cert, key, now)
        pem = _key_pem(leaf_key) + leaf.public_bytes(serialization.Encoding.PEM)
        _write(folder / SERVER_PEM, pem)
    return Outcome(folder, created, issued, fixed)


def thumbprint(ca_cert: Path) -> str:
    """The CA certificate's SHA-1 thumbprint, hex: how Windows and macOS name it in a store."""
    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303  # an identifier only


def remove(folder: Path) -> list[Path]:
    """Delete the CA and the certificate (the key first); the files removed."""
    removed = []
    for name in (CA_KEY, SERVER_PEM, CA_CERT):
        path = folder / name
        if path.exists():
            path.unlink()
            removed.append(path)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise LocalCAError(f"cannot create {folder}: {e.strerror or e}") from None
    if not folder.is_dir():
        raise LocalCAError(f"{folder} is not a folder")


def _fix_modes(folder: Path) -> tuple[str, ...]:
    """Remove group and other permissions from the folder and its files (POSIX)."""
    if os.name != "posix":
        return ()
    fixed = []
    for path in (folder, *(folder / n for n in (CA_CERT, CA_KEY, SERVER_PEM))):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            path.chmod(mode & 0o700)
            fixed.append(str(path))
    return tuple(fixed)


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` whole, readable by its owner only, replacing it in one rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise LocalCAError(f"cannot write {path}: {e.strerror or e}") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        raise LocalCAError(
            f"cannot read the local CA in {cert_path.parent}; remove the folder to start over "
            "with a new CA (and trust the new one)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _spki(key.public_key()) != _spki(
        cert.public_key()
    ):
        raise LocalCAError(
            f"{key_path} is not the key of {cert_path}; remove {cert_path.parent} to start over"
        )
    return cert, key


def _spki(public: object) -> bytes:
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return b""
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _usable(path: Path, ca: x509.Certificate, now: datetime.datetime) -> bool:
    """Whether ``path`` holds a key and a certificate of ``ca`` for the local names that is
    good for at least ``RENEW_DAYS`` more."""
    try:
        data = path.read_bytes()
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, None)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    wanted = {x509.DNSName(n) for n in NAMES[:1]} | {
        x509.IPAddress(ipaddress.ip_address(n)) for n in NAMES[1:]
    }
    return (
        set(names) >= wanted
        and _spki(key.public_key()) == _spki(cert.public_key())
        and cert.not_valid_after_utc - now >= datetime.timedelta(days=RENEW_DAYS)
    )


def _new_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ppproxy local CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ppproxy local CA ({socket.gethostname()})"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    constraints = x509.NameConstraints(
        permitted_subtrees=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
            x509.IPAddress(ipaddress.ip_network("::1/128")),
        ],
        excluded_subtrees=None,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(constraints, critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server_cert(
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> x509.Certificate:
    names = [x509.DNSName(NAMES[0])] + [x509.IPAddress(ipaddress.ip_address(n)) for n in NAMES[1:]]
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
