"""Why an outbound call through requests (the identity provider, BAP) failed, in words a user
can act on: connection refused, name not found, TLS, timeout or the outbound proxy, always
with the host. Never the exception's repr: a request's exception holds the request."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import requests
from urllib3 import exceptions as u3

from .trust import CA_FILE_HINT

# urllib3 2 names the DNS failure; 1.x leaves only the socket.gaierror in the chain.
_NOT_RESOLVED: tuple[type[BaseException], ...] = (
    socket.gaierror,
    *((u3.NameResolutionError,) if hasattr(u3, "NameResolutionError") else ()),
)


def describe(error: requests.RequestException, url: str | None = None) -> str:
    """One sentence: what failed, for which host, and what to try when there is something."""
    if url is None and error.request is not None:
        url = error.request.url
    host = _host(url or "")
    chain = list(_causes(error))

    def has(*kinds: type[BaseException]) -> bool:
        return any(isinstance(e, kinds) for e in chain)

    if has(requests.exceptions.ProxyError, u3.ProxyError):
        return f"the outbound proxy refused or failed the connection to {host} (outbound.proxy)"
    if has(requests.exceptions.SSLError, u3.SSLError, ssl.SSLError):
        return f"TLS handshake with {host} failed: {_ssl_reason(chain)}; {CA_FILE_HINT}"
    if has(*_NOT_RESOLVED):
        return f"cannot resolve {host} (DNS): check the host name and the network"
    if has(ConnectionRefusedError):
        return f"connection to {host} refused: nothing listens there"
    # urllib3's NewConnectionError (any failed connect) is a ConnectTimeoutError subclass.
    if has(requests.exceptions.ConnectTimeout) or any(
        isinstance(e, u3.ConnectTimeoutError) and not isinstance(e, u3.NewConnectionError)
        for e in chain
    ):
        return f"connecting to {host} timed out (outbound.connect_timeout)"
    if has(requests.exceptions.ReadTimeout, u3.ReadTimeoutError, TimeoutError):
        return f"{host} did not answer in time (outbound.read_timeout)"
    if has(requests.ConnectionError):
        return f"cannot connect to {host}: {_last_reason(chain)}"
    return f"request to {host} failed: {type(error).__name__}"


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1] or url or "the server"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and everything it wraps: causes, contexts, urllib3's ``reason``, ``args``."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        linked = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(x for x in linked if isinstance(x, BaseException))


def _ssl_reason(chain: list[BaseException]) -> str:
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate not trusted ({e.verify_message})"
    for e in chain:
        if isinstance(e, ssl.SSLError) and e.reason:
            return str(e.reason).lower().replace("_", " ")
    return "the certificate or the TLS setup was refused"


def _last_reason(chain: list[BaseException]) -> str:
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return str(e.strerror)
    return type(chain[-1]).__name__
