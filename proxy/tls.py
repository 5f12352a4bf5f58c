"""HTTPS on the listeners: one TLS context for ``server.port`` and every route's own port, whose
certificate a reload replaces for new connections.

Replacing the chain with ``load_cert_chain`` on the listening context works only while the
key type stays the same: OpenSSL keeps one certificate per key type in a context, so after an
ECDSA -> RSA change it would go on presenting the old ECDSA certificate to every client that
accepts ECDSA (seen with OpenSSL 3.0). Instead every reload builds a fresh context, and the
listening one hands each new handshake over to the newest through its server-name callback,
which OpenSSL calls for every ClientHello, with or without SNI. Connections already open keep
the context they started with.
"""

from __future__ import annotations

import datetime
import ssl

import structlog

from . import localca
from .config import TlsConfig
from .credential_files import CredentialError, check_server_pair

log = structlog.get_logger("proxy")

ALPN = ["http/1.1"]  # the listener speaks HTTP/1.1 only; ALPN says so (RFC 7301)
EXPIRY_WARNING = datetime.timedelta(days=14)


class TlsError(Exception):
    """The listener's certificate cannot be loaded; the message is safe to show."""


class ListenerTLS:
    """The listeners' TLS context (``context``, given to every site) and what it serves."""

    def __init__(self, settings: TlsConfig) -> None:
        self._current = _context(settings, create_ca=True)
        self.context = self._current
        self.context.sni_callback = self._hand_over

    def reload(self, settings: TlsConfig) -> None:
        """Serve the certificate ``settings`` name (files read again) to new connections; on
        TlsError the certificate served so far stays. With ``tls = "local"`` the certificate is
        renewed when due, but a CA that is gone is not made again: clients would not trust the
        new one, and only a start says how."""
        self._current = _context(settings, create_ca=False)

    def _hand_over(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if connection.context is not self._current:
            connection.context = self._current


def prepare_local(settings: TlsConfig, *, create_ca: bool = True) -> localca.Outcome | None:
    """For ``tls = "local"``: the CA (unless not ``create_ca``) and the certificate, made or
    renewed when needed."""
    if settings.local_dir is None:
        return None
    try:
        outcome = localca.ensure(settings.local_dir, create_ca=create_ca)
    except localca.LocalCAError as e:
        raise TlsError(str(e)) from None
    if outcome.created_ca:
        log.info("tls.local_ca_created", ca=str(outcome.ca_cert))
    elif outcome.issued:
        log.info("tls.local_certificate_issued", certificate=str(outcome.server_pem))
    if outcome.modes_fixed:
        log.warning("tls.local_modes_fixed", files=list(outcome.modes_fixed))
    if outcome.ca_expiring() and outcome.ca_not_after is not None:
        log.warning(
            "tls.local_ca_expiring",
            ca=str(outcome.ca_cert),
            not_after=outcome.ca_not_after.isoformat(),
            message=f"the local CA expires soon: {localca.RENEW_CA}",
        )
    return outcome


def _context(settings: TlsConfig, *, create_ca: bool) -> ssl.SSLContext:
    """A server context with the chain and key ``settings`` name, checked before use."""
    prepare_local(settings, create_ca=create_ca)
    try:
        password = settings.password()
        leaf = check_server_pair(settings.cert, settings.key, password)
    except CredentialError as e:
        raise TlsError(str(e)) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    try:
        context.load_cert_chain(settings.cert, settings.key, password)
    except (OSError, ssl.SSLError) as e:  # checked above; a file may have changed since
        raise TlsError(f"cannot load {settings.cert}: {getattr(e, 'reason', None) or e}") from None
    left = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    subject = leaf.subject.rfc4514_string()
    if left < EXPIRY_WARNING:
        log.warning(
            "tls.certificate_expiring",
            subject=subject,
            not_after=leaf.not_valid_after_utc.isoformat(),
            expired=left.total_seconds() <= 0,
        )
    log.info("tls.loaded", subject=subject, not_after=leaf.not_valid_after_utc.isoformat())
    return context
