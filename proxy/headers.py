"""Header hygiene for both directions (RFC 9110 §7.6.1), as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from multidict import CIMultiDict

from .config.route_options import RouteEdits

# RFC 9110 §7.6.1 and the proxy-specific headers: never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
# Request headers the upstream must never see from the client. Host is the upstream's own,
# Expect was answered by the proxy, Authorization is replaced by the route's token, and the
# client's cookies belong to the client.
_REQUEST_DROP = HOP_BY_HOP | {"host", "expect", "authorization", "cookie", "content-length"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}

REQUEST_ID = "x-ms-client-request-id"


def _connection_named(headers: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The header names the Connection header lists (hop-by-hop too, RFC 9110 §7.6.1)."""
    named: set[str] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == "connection":
            named.update(v.strip().lower() for v in value.split(",") if v.strip())
    return frozenset(named) if named else _NOTHING


_NOTHING: frozenset[str] = frozenset()


def request_headers(
    incoming: Iterable[tuple[str, str]],
    *,
    token: str,
    request_id: str,
    content_length: str | None,
    edits: RouteEdits | None = None,
) -> CIMultiDict[str]:
    """The headers to send upstream: cleaned, the route's edits applied, the token and request
    id set (edits can never touch Authorization or Host: the config refuses them)."""
    items = list(incoming)
    drop = _REQUEST_DROP | _connection_named(items)
    if edits is not None:
        drop = drop | edits.remove_request_headers
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        if name.lower() not in drop:
            out.add(name, value)
    if edits is not None:
        for name, value in edits.set_request_headers.items():
            out[name] = value
    if content_length is not None:
        out["Content-Length"] = content_length
    out["Authorization"] = f"Bearer {token}"
    out[REQUEST_ID] = request_id
    return out


def response_headers(
    incoming: Iterable[tuple[str, str]], *, edits: RouteEdits | None = None
) -> CIMultiDict[str]:
    """The upstream's response headers that may reach the client, with the route's edits."""
    items = list(incoming)
    drop = _RESPONSE_DROP | _connection_named(items)
    if edits is not None:
        drop = drop | edits.remove_response_headers
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        if name.lower() not in drop:
            out.add(name, value)
    if edits is not None:
        for name, value in edits.set_response_headers.items():
            out[name] = value
    return out
