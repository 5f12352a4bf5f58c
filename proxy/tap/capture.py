"""What the tap keeps of a finished exchange, and the redacted record it shows.

Bodies were copied (at most ``max_body_bytes`` each) into the exchange's captures while they
streamed. When the exchange ends the tap keeps it as it is (:class:`Captured`, the injected
token taken out at once); the record is rendered only when someone looks (the page, HAR, the
recording file), and everything in it has been through :func:`proxy.redaction.redact`: headers
by name and shape, paths, bodies and error text by shape. Of the token, only a summary of its
claims is kept, decoded when it was issued.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..batch import responses as batch_responses
from ..exchange import BodyCapture, Exchange
from ..redaction import redact, redact_text
from ..timefmt import iso
from .kept import Captured

Record = dict[str, Any]
_TEXT_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "csv", "graphql")


def headers_of(items: Iterable[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    return None if items is None else [(str(k), str(v)) for k, v in items]


def _redact_headers(items: list[tuple[str, str]] | None) -> list[list[str]] | None:
    if items is None:
        return None
    return [[name, str(redact(value, name))] for name, value in items]


def _header(items: list[tuple[str, str]], name: str) -> str:
    name = name.lower()
    return next((v for k, v in items if k.lower() == name), "")


def is_text(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith("text/") or any(t in kind for t in _TEXT_TYPES)


def body_record(capture: BodyCapture | None, headers: list[tuple[str, str]]) -> Record:
    """Size, type, and the text when the body is text: JSON pretty-printed, all redacted."""
    content_type = _header(headers, "Content-Type")
    encoding = _header(headers, "Content-Encoding").strip().lower()
    capture = capture or BodyCapture(0)
    body: Record = {
        "size": capture.size,
        "mime_type": content_type.split(";", 1)[0].strip(),
        "truncated": capture.truncated,
    }
    if not capture.size:
        return body
    textual = is_text(content_type) or (
        (not content_type or _is_multipart(content_type)) and looks_like_text(capture.data)
    )
    if encoding not in ("", "identity") or not textual:
        body["binary"] = True
        if encoding not in ("", "identity"):
            body["encoding"] = encoding
        return body
    text = bytes(capture.data).decode("utf-8", errors="replace")
    if not capture.truncated and "json" in content_type.lower():
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            body["json"] = True
            body["text"] = json.dumps(redact(parsed), indent=2, ensure_ascii=False)
            return body
    body["text"] = redact_text(text)
    return body


def _is_multipart(content_type: str) -> bool:
    # $batch bodies: HTTP messages in text, unless a part carries binary content.
    return content_type.split(";", 1)[0].strip().lower() == "multipart/mixed"


def looks_like_text(data: bytearray) -> bool:
    sample = bytes(data[:1024])
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # a character cut at the sample's end is fine
            return False
    return not any(b < 9 or 13 < b < 32 for b in sample)


def record(captured: Captured) -> Record:
    """The redacted, JSON-ready record of a captured exchange."""
    exchange = captured.exchange
    client_headers = headers_of(exchange.client_headers.items()) or []
    upstream_headers = headers_of(exchange.upstream_headers)
    response_headers = headers_of(exchange.response_headers) or []
    request_headers = upstream_headers if upstream_headers is not None else client_headers
    upstream_url = exchange.upstream_url
    return {
        "id": captured.id,
        "time": iso(captured.started, millis=True),
        "started": captured.started,
        "request_id": redact_text(exchange.request_id),
        "route": exchange.route,
        "client": exchange.client,
        "caller": exchange.caller,
        "method": exchange.method,
        "method_override": exchange.method_override,
        "target": redact_text(exchange.target),
        "upstream_url": None if upstream_url is None else redact_text(str(upstream_url)),
        "status": exchange.status,
        "reason": redact_text(exchange.reason),
        "error": exchange.error,
        "client_headers": _redact_headers(client_headers),
        "upstream_headers": _redact_headers(upstream_headers),
        "response_headers": _redact_headers(response_headers),
        "request_body": body_record(exchange.request_capture, request_headers),
        "response_body": body_record(exchange.response_capture, response_headers),
        "bytes_in": exchange.bytes_in,
        "bytes_out": _bytes_out(exchange),
        "timings": _timings(exchange),
        "token_source": exchange.token_source,
        "retried_401": exchange.retried_401,
        "throttle_retries": exchange.throttle_retries,
        "claims": None if exchange.token_claims is None else redact(dict(exchange.token_claims)),
        "http_version": "HTTP/1.1",
        "batch": _batch(exchange, response_headers),
        "resend_of": captured.resend_of,
        "resendable": resendable(exchange) and not captured.headers_cut,
    }


def _batch(exchange: Exchange, response_headers: list[tuple[str, str]]) -> Record | None:
    """A $batch's inner requests (as checked, redacted) and, read from the captured answer,
    its inner responses."""
    summary = exchange.batch
    if summary is None:
        return None
    requests = [
        {
            "position": n,
            "method": inner.method,
            "target": redact_text(inner.target),
            "path": redact_text(inner.path),
            "sent": None if inner.sent is None else redact_text(inner.sent),
            "changeset": inner.changeset,
            "content_id": inner.content_id,
        }
        for n, inner in enumerate(summary.requests, start=1)
    ]
    out: Record = {
        "total": summary.total,
        "changesets": summary.changesets,
        "requests": requests,
        "responses": None,
        "responses_complete": False,
    }
    capture = exchange.response_capture
    content_type = _header(response_headers, "Content-Type")
    if capture is not None and capture.size and _is_multipart(content_type):
        found = batch_responses.summarize(bytes(capture.data), content_type)
        if found is not None:
            answers, whole = found
            out["responses"] = [redact(a) for a in answers]
            out["responses_complete"] = whole and not capture.truncated
    return out


def summary(captured: Captured) -> Record:
    """What the live list shows of an exchange (the detail is rendered on demand)."""
    exchange = captured.exchange
    response_headers = headers_of(exchange.response_headers) or []
    return {
        "id": captured.id,
        "time": iso(captured.started, millis=True),
        "route": exchange.route,
        "client": exchange.client,
        "caller": exchange.caller,
        "method": exchange.method,
        "target": redact_text(exchange.target),
        "status": exchange.status,
        "error": exchange.error,
        "timings": _timings(exchange),
        "bytes_out": _bytes_out(exchange),
        "mime_type": _header(response_headers, "Content-Type").split(";", 1)[0].strip(),
        "resend_of": captured.resend_of,
    }


def resendable(exchange: Exchange) -> bool:
    """Whether the request can be sent again as it was: its body (if any) captured whole."""
    capture = exchange.request_capture
    if capture is None or capture.truncated:
        return False
    # A body the proxy never read (refused before it was needed) was not captured either.
    length = exchange.client_headers.get("Content-Length", "")
    sent = int(length) if length.isdecimal() else 0
    chunked = "chunked" in exchange.client_headers.get("Transfer-Encoding", "").lower()
    if chunked:  # no length to compare with: what was read, if anything was
        return capture.size == exchange.bytes_in and capture.size > 0
    return capture.size == sent


def _timings(exchange: Exchange) -> Record:
    return {
        "token_wait_ms": exchange.token_wait_ms,
        "throttle_wait_ms": exchange.throttle_wait_ms,
        "upstream_ttfb_ms": exchange.upstream_ms,
        "total_ms": exchange.duration_ms,
    }


def _bytes_out(exchange: Exchange) -> int | None:
    if exchange.bytes_out is not None:
        return exchange.bytes_out
    capture = exchange.response_capture
    return capture.size if capture is not None else None
