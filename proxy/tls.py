"""HTTPS on the listeners: ``server.port`` and every route's own port serve the certificate
of the newest TLS context, which a reload replaces for new connections.

Replacing the chain with ``load_cert_chain`` on a listening context works only while the key
type stays the same: OpenSSL keeps one certificate per key type in a context, so after an
ECDSA -> RSA change it would go on presenting the old ECDSA certificate to every client that
accepts ECDSA (seen with OpenSSL 3.0). Instead every reload builds a fresh context, and each
listener's own context (which holds no certificate) hands every new handshake over to the
newest through its server-name callback, which OpenSSL calls for every ClientHello, with or
without SNI. Connections already open keep the context they started with.

A client that speaks plain HTTP to such a port fails the handshake, and asyncio and uvloop
close the connection without a word to anyone. Each listener's context therefore makes its
TLS objects of a class that notices that failure (OpenSSL's ``HTTP_REQUEST``, or
``WRONG_VERSION_NUMBER`` for methods it does not recognise) and logs ``tls.plain_http`` at
most once per ``PLAIN_HTTP_EVERY`` seconds per listener. No answer is sent: the event loop
discards whatever is queued on a connection whose handshake failed, and answering would mean
reading the first bytes of every connection before TLS starts.
"""

from __future__ import annotations

import datetime
import ssl
import time

import structlog

from . import localca
from .config import TlsConfig
from .credential_files import CredentialError, check_server_pair

log = structlog.get_logger("proxy")

ALPN = ["http/1.1"]  # the listener speaks HTTP/1.1 only; ALPN says so (RFC 7301)
EXPIRY_WARNING = datetime.timedelta(days=14)
PLAIN_HTTP_EVERY = 10.0  # seconds between two tls.plain_http events of one listener
# OpenSSL's reasons for a first record that is not TLS: a request line it recognises (GET, POST,
# HEAD, PUT; CONNECT), or anything else that cannot be a TLS record header.
_NOT_TLS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER"})


class TlsError(Exception):
    """The listener's certificate cannot be loaded; the message is safe to show."""


class ListenerTLS:
    """What the listeners serve: each gets its own context (:meth:`listening`), and every one
    hands its handshakes to the newest certificate."""

    def __init__(self, settings: TlsConfig) -> None:
        self._current = _context(settings, create_ca=True)
        self._reports: dict[ssl.SSLContext, _PlainHttp] = {}

    def listening(self) -> ssl.SSLContext:
        """A context for one more listener: no certificate of its own; each handshake is
        handed to the current one, and plain HTTP sent to it is reported (:meth:`bound`)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # fixed when the handshake starts
        context.set_alpn_protocols(ALPN)
        context.sni_callback = self._hand_over
        report = self._reports[context] = _PlainHttp()
        context.sslobject_class = _watching(report)
        return context

    def bound(self, context: ssl.SSLContext, address: str) -> None:
        """Name the listener ``context`` serves once its port is known (``https://host:port``)."""
        self._reports[context].address = address

    def reload(self, settings: TlsConfig) -> None:
        """Serve the certificate ``settings`` name (files read again) to new connections; on
        TlsError the certificate served so far stays. With ``tls = "local"`` the certificate is
        renewed when due, but a CA that is gone is not made again: clients would not trust the
        new one, and only a start says how."""
        self._current = _context(settings, create_ca=False)

    def _hand_over(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if connection.context is not self._current:
            connection.context = self._current


class _PlainHttp:
    """``tls.plain_http`` for one listener, at most once per ``PLAIN_HTTP_EVERY`` seconds."""

    __slots__ = ("_last", "address")

    def __init__(self) -> None:
        self.address = "this listener"  # until bound
        self._last = -PLAIN_HTTP_EVERY

    def seen(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last < PLAIN_HTTP_EVERY:
            return
        self._last = now
        log.warning(
            "tls.plain_http",
            listener=self.address,
            reason=reason,
            message=f"a client sent plain HTTP (or something else that is not TLS) to the HTTPS "
            f"listener {self.address}: it must use https://, not http://",
        )


def _watching(report: _PlainHttp) -> type[ssl.SSLObject]:
    """A TLS object class (``SSLContext.sslobject_class``) whose failed handshakes that were
    not TLS at all are reported to ``report``; anything else is left as it was."""

    class Watched(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except ssl.SSLError as e:
                if e.reason in _NOT_TLS:
                    report.seen(e.reason)
                raise

    return Watched


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
