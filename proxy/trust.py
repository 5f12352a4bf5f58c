"""One TLS trust decision for every outbound connection: the identity provider (MSAL's requests
session), the upstreams (aiohttp) and BAP (``register-app``).

- ``outbound.ca_file`` set: that bundle and nothing else (a TLS-inspecting corporate proxy's CA).
- unset: the operating system's trust store through ``truststore``, as pip does: the keychain on
  macOS, the certificate store on Windows, OpenSSL's default locations on Linux (which
  ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` may point elsewhere). A corporate CA installed in the
  system store is trusted without any setting.

requests would otherwise verify against certifi's bundle, or ``REQUESTS_CA_BUNDLE``: the session
is given this context through :class:`TrustAdapter`, and requests' own certificate choice is
switched off there, so the two clients can never disagree.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import truststore
from requests.adapters import HTTPAdapter

CA_FILE_HINT = "if a proxy inspects TLS, set outbound.ca_file to its CA bundle (PEM)"


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """The client TLS context for every outbound connection (host names and chains verified)."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class TrustAdapter(HTTPAdapter):
    """requests' adapter with :func:`client_context`, direct and through a proxy (CONNECT).

    requests would load certifi's bundle (or the path in ``verify``) into the connection, which
    adds to the context: ``cert_verify`` keeps verification on and adds nothing."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(proxy, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None
