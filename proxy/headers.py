"""Header hygiene for both directions (RFC 9110 §7.6.1) and a route's header edits, prepared
once per route (:class:`HeaderRules`, built by ``State.build``)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from multidict import CIMultiDict, MultiMapping

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
# What a proxy in front says about the client and the address it used: read only from a peer in
# server.trusted_proxies (public_address.py) and never forwarded, from anyone. The proxy starts
# a new request under its own identity and decides the client-facing address itself; an upstream
# that built links from these would build them without the route's prefix (links the proxy
# cannot map back) and would learn internal host names and client addresses. X-Original-URL and
# X-Rewrite-URL are IIS's, which some upstream stacks read as the request target. Via names the
# hops in front of the proxy (RFC 9110 §7.6.3); the proxy adds none of its own.
FORWARDING = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-original-host",
        "x-original-url",
        "x-rewrite-url",
        "front-end-https",
        "via",
    }
)
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}

REQUEST_ID = "x-ms-client-request-id"
# Headers that pick whom Dataverse acts for (CallerObjectId, and the older MSCRMCallerID).
_IMPERSONATION = frozenset({"callerobjectid", "mscrmcallerid"})


def connection_named(values: Iterable[str]) -> frozenset[str]:
    """The header names the Connection header lists (hop-by-hop too, RFC 9110 §7.6.1)."""
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


@functools.lru_cache(maxsize=256)  # "keep-alive" from every upstream answer, parsed once
def _dropped_with(drop: frozenset[str], connection: tuple[str, ...]) -> frozenset[str]:
    return drop | connection_named(connection)


def _kept(incoming: MultiMapping[str], drop: frozenset[str]) -> CIMultiDict[str]:
    if "Connection" in incoming:
        drop = _dropped_with(drop, tuple(incoming.getall("Connection")))
    return CIMultiDict([(k, v) for k, v in incoming.items() if k.lower() not in drop])


class HeaderRules:
    """What a route does to headers, both ways: hygiene, then its edits (which can never touch
    Authorization or Host: the configuration refuses them)."""

    __slots__ = (
        "_request_default",
        "_request_drop",
        "_request_set",
        "_response_drop",
        "_response_set",
    )

    def __init__(self, edits: RouteEdits | None = None, *, owns_caller: bool = False) -> None:
        edits = edits or RouteEdits()
        self._request_drop = _REQUEST_DROP | FORWARDING | edits.remove_request_headers
        if owns_caller:  # only the proxy says whom Dataverse acts for (acting.caller_headers_owned)
            self._request_drop |= _IMPERSONATION
        self._request_set = tuple(edits.set_request_headers.items())
        self._request_default = tuple(edits.default_request_headers.items())
        self._response_drop = _RESPONSE_DROP | edits.remove_response_headers
        self._response_set = tuple(edits.set_response_headers.items())

    def request(
        self,
        incoming: MultiMapping[str],
        *,
        token: str,
        request_id: str,
        content_length: str | None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> CIMultiDict[str]:
        """The headers to send upstream: cleaned, edited, the token, the token source's
        ``extra`` headers (CallerObjectId) and the request id set."""
        out = _kept(incoming, self._request_drop)
        for name, value in self._request_set:
            out[name] = value
        for name, value in self._request_default:
            if name not in out:  # only where the client sent none
                out[name] = value
        if content_length is not None:
            out["Content-Length"] = content_length
        for name, value in extra:
            out[name] = value
        out["Authorization"] = f"Bearer {token}"
        out[REQUEST_ID] = request_id
        return out

    def response(self, incoming: MultiMapping[str]) -> CIMultiDict[str]:
        """The upstream's response headers that may reach the client, edited."""
        out = _kept(incoming, self._response_drop)
        for name, value in self._response_set:
            out[name] = value
        return out
