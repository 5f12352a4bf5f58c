"""The local CA behind ``tls = "local"``: made once in a folder of the user's, it issues the
listener's certificate for ``localhost``, ``127.0.0.1`` and ``::1`` (the way mkcert does).

Files, all ``0600`` in a ``0700`` folder (POSIX), each written whole under a temporary name and
renamed, so a reader never sees half a file:

- ``ca.pem``: the CA certificate, the one clients are told to trust;
- ``ca-key.pem``: its private key, which never leaves the folder;
- ``localhost.pem``: the listener's private key and certificate chain, in one file so that the
  key and the certificate are always replaced together.

Every change happens under an exclusive lock on the folder (``flock`` on POSIX), so that
processes sharing it — the workers of ``server.workers > 1`` reloading on SIGHUP, ``ppproxy
ca`` run while the proxy serves — never make two CAs or mix one's key with another's
certificate: the first renews, the others find its files. (Windows has no workers; there a
concurrent ``ppproxy ca`` and first start are not serialised.)

The CA carries X.509 name constraints: it can only vouch for ``localhost`` (and names under
it), ``127.0.0.0/8`` and ``::1``. A client that trusts it cannot be fooled by it about any
other site, even by someone who copies its key.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .localca_certs import NAMES as NAMES
from .localca_certs import SERVER_DAYS as SERVER_DAYS
from .localca_certs import new_ca, new_server_cert

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_PEM = "localhost.pem"
RENEW_DAYS = 30  # a certificate with less left is issued anew at start or reload
CA_WARN_DAYS = 30  # a CA with less left is reported (tls.local_ca_expiring)
RENEW_CA = "run `ppproxy ca --uninstall`, then start ppproxy again and trust the new CA"


class LocalCAError(Exception):
    """The local CA's folder cannot be used; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`ensure` found or did."""

    folder: Path
    created_ca: bool  # a new CA: clients must be told to trust it
    issued: bool  # a new certificate for the listener
    modes_fixed: tuple[str, ...] = ()  # files whose group/other permissions were removed
    ca_not_after: datetime.datetime | None = None  # when the CA itself expires

    def ca_expiring(self, now: datetime.datetime | None = None) -> bool:
        """Whether the CA has less than ``CA_WARN_DAYS`` left (or has expired)."""
        now = now or datetime.datetime.now(datetime.UTC)
        left = datetime.timedelta(days=CA_WARN_DAYS)
        return self.ca_not_after is not None and self.ca_not_after - now < left

    @property
    def ca_cert(self) -> Path:
        return self.folder / CA_CERT

    @property
    def server_pem(self) -> Path:
        return self.folder / SERVER_PEM


def ensure(
    folder: Path, *, now: datetime.datetime | None = None, create_ca: bool = True
) -> Outcome:
    """Make the CA unless it exists, and the listener's certificate unless a usable one exists
    (issued by this CA, for the local names, with at least ``RENEW_DAYS`` left). Without
    ``create_ca`` (a reload) a missing CA is an error: a new one must be trusted first, and
    only a start says how."""
    now = now or datetime.datetime.now(datetime.UTC)
    _make_folder(folder)
    with _locked(folder):
        return _ensure(folder, now, create_ca)


def _ensure(folder: Path, now: datetime.datetime, create_ca: bool) -> Outcome:
    fixed = _fix_modes(folder)
    ca_cert, ca_key = folder / CA_CERT, folder / CA_KEY
    if ca_cert.exists() != ca_key.exists():
        raise LocalCAError(
            f"{folder} holds only one of {CA_CERT} and {CA_KEY}; remove the folder to start "
            "over with a new CA (and trust the new one)"
        )
    created = not ca_cert.exists()
    if created and not create_ca:
        raise LocalCAError(
            f"the local CA in {folder} is gone: restart ppproxy to make a new one, and trust "
            "that one"
        )
    if created:
        cert, key = new_ca(now)
        _write(ca_key, _key_pem(key))
        _write(ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    else:
        cert, key = _read_ca(ca_cert, ca_key)
    issued = created or not _usable(folder / SERVER_PEM, cert, now)
    if issued:
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = new_server_cert(leaf_key, cert, key, now)
        pem = _key_pem(leaf_key) + leaf.public_bytes(serialization.Encoding.PEM)
        _write(folder / SERVER_PEM, pem)
    return Outcome(folder, created, issued, fixed, cert.not_valid_after_utc)


def thumbprint(ca_cert: Path) -> str:
    """The CA certificate's SHA-1 thumbprint, hex: how Windows and macOS name it in a store."""
    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303  # an identifier only


def remove(folder: Path) -> list[Path]:
    """Delete the CA and the certificate (the key first); the files removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    with _locked(folder):
        for name in (CA_KEY, SERVER_PEM, CA_CERT):
            path = folder / name
            if path.exists():
                path.unlink()
                removed.append(path)
    if not any(folder.iterdir()):
        folder.rmdir()
    return removed


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise LocalCAError(f"cannot create {folder}: {e.strerror or e}") from None
    if not folder.is_dir():
        raise LocalCAError(f"{folder} is not a folder")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX: ``flock`` on the folder itself, so no
    extra file; released when the descriptor closes, also if the process dies)."""
    if os.name != "posix":
        yield
        return
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise LocalCAError(f"cannot open {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
