"""The proxy's own endpoints, all under one reserved prefix that is never forwarded."""

from __future__ import annotations

RESERVED = "/_proxy"
LIVEZ = "/_proxy/livez"
READYZ = "/_proxy/readyz"
METRICS = "/_proxy/metrics"
TAP = "/_proxy/tap"
TAP_HAR = "/_proxy/tap.har"
TAP_EVENTS = "/_proxy/tap/events"
TAP_EXCHANGES = "/_proxy/tap/exchanges"


def is_reserved(path: str) -> bool:
    """Whether the decoded ``path`` is in the proxy's own namespace.

    Decoded, because aiohttp's router matches decoded paths: ``/%5Fproxy/tap`` reaches the tap's
    handler, so it must count as reserved everywhere else too.
    """
    return path == RESERVED or path.startswith(RESERVED + "/")
