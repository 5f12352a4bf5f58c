"""A throwaway certificate authority for the local HTTPS servers."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

# A name under .test (RFC 6761: reserved for testing, never resolved on the internet), for tests
# that reach a local server by a name that is not loopback: through a forward proxy that maps it
# to 127.0.0.1, the way a corporate proxy would reach a real host.
TEST_DOMAIN = "ppproxy.test"


class LocalCA:
    """Throwaway CA (trustme) for 127.0.0.1, localhost, ::1 and any name under ppproxy.test."""

    def __init__(self) -> None:
        # Lazy: trustme is only in the `testing` extra.
        import trustme

        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1", f"*.{TEST_DOMAIN}")

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM form."""
        return self._ca.cert_pem.bytes()

    def write_ca_file(self, path: Path | str) -> Path:
        """Write the CA certificate (PEM) to path and return the path."""
        path = Path(path)
        path.write_bytes(self.cert_pem)
        return path

    def write_server_files(
        self,
        folder: Path | str,
        *,
        rsa: bool = False,
        password: bytes | None = None,
        not_after: datetime.datetime | None = None,
    ) -> tuple[Path, Path]:
        """A new certificate for 127.0.0.1, localhost and ::1 (ECDSA, or RSA; valid until
        ``not_after`` when given), written to ``folder`` as ``cert.pem`` (the chain, leaf first)
        and ``key.pem`` (encrypted with ``password`` when given): the two paths, for
        ``[server] tls_cert`` and ``tls_key``."""
        import trustme
        from cryptography.hazmat.primitives import serialization

        kind = trustme.KeyType.RSA if rsa else trustme.KeyType.ECDSA
        issued = self._ca.issue_cert(
            "127.0.0.1", "localhost", "::1", key_type=kind, not_after=not_after
        )
        folder = Path(folder)
        cert, key = folder / "cert.pem", folder / "key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        pem = issued.private_key_pem.bytes()
        if password is not None:
            loaded = serialization.load_pem_private_key(pem, None)
            pem = loaded.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password),
            )
        key.write_bytes(pem)
        return cert, key

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting a certificate for 127.0.0.1, localhost, ::1 and
        ``*.ppproxy.test``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA and nothing else."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies host name and chain
        self._ca.configure_trust(context)
        return context
