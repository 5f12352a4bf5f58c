"""The access log: one structured event per exchange, as an observer.

``request`` for every request the forwarder handled (route, token source, timings, bytes,
status, the error code if the proxy answered itself); ``request.rejected`` for requests the
guard refused before any route was involved. Both name the ``[access]`` client
(``access_client``) and the signed-in member (``caller``) when known. Never the query string,
never a header, never a token.
"""

from __future__ import annotations

from typing import Any

from .exchange import Exchange, Observer
from .observe import access
from .redaction import redact_text


class AccessLog(Observer):
    def finished(self, exchange: Exchange) -> None:
        if exchange.refused:
            path = exchange.target.split("?", 1)[0][:200]  # as received: it may be hostile
            rejected: dict[str, Any] = {
                "request_id": redact_text(exchange.request_id),
                "method": redact_text(exchange.method),
                "path": redact_text(path),
                "peer": exchange.peer,
                "status": exchange.status,
                "error": exchange.error,
            }
            if exchange.client is not None:
                rejected["access_client"] = exchange.client
            if exchange.caller is not None:
                rejected["caller"] = redact_text(exchange.caller)
            access("request.rejected", rejected)
            return
        # The request id, the method and the path come from the client: redacted like any text
        # (a token pasted into a path must not reach the log). Everything else is the proxy's.
        fields: dict[str, Any] = {
            "request_id": redact_text(exchange.request_id),
            "method": redact_text(exchange.method),
            "path": redact_text(exchange.path),
            "peer": exchange.peer,
        }
        if exchange.method_override is not None:  # checked to be a method name (a token)
            fields["method_override"] = exchange.method_override
        if exchange.route is not None:
            fields["route"] = exchange.route
        if exchange.caller is not None:  # also bound to the context, for the other events
            fields["caller"] = redact_text(exchange.caller)
        if exchange.token_source is not None:
            fields["token_source"] = exchange.token_source
            fields["token_wait_ms"] = exchange.token_wait_ms
        if exchange.retried_401:
            fields["retried_401"] = True
        if exchange.throttle_wait_ms is not None:
            fields["throttle_wait_ms"] = exchange.throttle_wait_ms
        if exchange.throttle_retries:
            fields["throttle_retries"] = exchange.throttle_retries
        if exchange.upstream_ms is not None:
            fields["upstream_ms"] = exchange.upstream_ms
        if exchange.error is not None:
            fields["error"] = exchange.error
        fields["status"] = exchange.status
        fields["duration_ms"] = exchange.duration_ms
        fields["bytes_in"] = exchange.bytes_in
        if exchange.bytes_out is not None:
            fields["bytes_out"] = exchange.bytes_out
        access("request", fields)
