"""The redacted record a finished exchange becomes in the tap.

Bodies were copied (at most ``max_body_bytes`` each) into the exchange's captures while they
streamed. The record is built once, at the end, and everything in it has been through
:func:`proxy.observe.redact`: headers by name and shape, paths, bodies and error text by shape.
The injected token is never kept: only a summary of its claims, decoded when it was issued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from ..exchange import BodyCapture, Exchange
from ..observe import redact, redact_text
from ..timefmt import iso

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
    textual = is_text(content_type) or (not content_type and _looks_like_text(capture.data))
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


def _looks_like_text(data: bytearray) -> bool:
    sample = bytes(data[:1024])
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # a character cut at the sample's end is fine
            return False
    return not any(b < 9 or 13 < b < 32 for b in sample)


def record(exchange: Exchange, record_id: int) -> Record:
    """The redacted, JSON-ready record of a finished exchange."""
    client_headers = headers_of(exchange.client_headers.items()) or []
    upstream_headers = headers_of(exchange.upstream_headers)
    response_headers = headers_of(exchange.response_headers) or []
    request_headers = upstream_headers if upstream_headers is not None else client_headers
    upstream_url = exchange.upstream_url
    # The wall clock when it started, read once here rather than on every request.
    started = time.time() - exchange.duration_ms / 1000
    return {
        "id": record_id,
        "time": iso(started, millis=True),
        "started": started,
        "request_id": redact_text(exchange.request_id),
        "route": exchange.route,
        "method": exchange.method,
        "target": redact_text(exchange.target),
        "upstream_url": None if upstream_url is None else redact_text(str(upstream_url)),
        "status": exchange.status,
        "reason": exchange.reason,
        "error": exchange.error,
        "client_headers": _redact_headers(client_headers),
        "upstream_headers": _redact_headers(upstream_headers),
        "response_headers": _redact_headers(response_headers),
        "request_body": body_record(exchange.request_capture, request_headers),
        "response_body": body_record(exchange.response_capture, response_headers),
        "bytes_in": exchange.bytes_in,
        "bytes_out": exchange.bytes_out
        if exchange.bytes_out is not None
        else exchange.response_capture.size
        if exchange.response_capture is not None
        else None,
        "timings": {
            "token_wait_ms": exchange.token_wait_ms,
            "upstream_ttfb_ms": exchange.upstream_ms,
            "total_ms": exchange.duration_ms,
        },
        "token_source": exchange.token_source,
        "retried_401": exchange.retried_401,
        "claims": None if exchange.token_claims is None else redact(dict(exchange.token_claims)),
        "http_version": "HTTP/1.1",
    }


def summary(rec: Record) -> Record:
    """What the live list shows of a record (the detail is fetched on demand)."""
    keys = ("id", "time", "route", "method", "target", "status", "error", "timings")
    out = {k: rec[k] for k in keys}
    out["bytes_out"] = rec["bytes_out"]
    out["mime_type"] = rec["response_body"]["mime_type"]
    return out
