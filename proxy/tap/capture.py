"""One captured exchange while it happens, and the redacted record it becomes when it ends.

Capture copies at most ``max_body_bytes`` of each body as the chunks pass; it never holds a
chunk back. The record is built once, at the end, and everything in it has been through
:func:`proxy.observe.redact`: headers by name and shape, paths, bodies and error text by shape.
The injected token is never kept: only a summary of its claims is decoded from it.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..observe import redact, redact_text

Record = dict[str, Any]
_TEXT_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "csv", "graphql")
CLAIMS = ("aud", "appid", "roles", "exp")


class BodyCapture:
    """The first ``cap`` bytes of a body and its full size; ``add`` is called per chunk."""

    __slots__ = ("_cap", "data", "size")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self.data = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self._cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


@dataclass(slots=True)
class Exchange:
    """The mutable state of one exchange in flight. Nothing here is shown before ``record``."""

    id: int
    started: float  # time.time()
    method: str
    target: str  # path and query as the client sent them
    request_id: str
    client_headers: list[tuple[str, str]]
    request_body: BodyCapture
    response_body: BodyCapture
    upstream_url: str | None = None
    upstream_headers: list[tuple[str, str]] | None = None
    claims: dict[str, Any] | None = None
    status: int = 0
    reason: str = ""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    upstream_http: str = "HTTP/1.1"


def claims_summary(token: str) -> dict[str, Any] | None:
    """``aud``, ``appid`` (or ``azp``), ``roles`` and ``exp`` from a JWT's payload, unverified.

    Only these claims are kept; the token itself goes nowhere."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict):
        return None
    summary = {k: payload[k] for k in CLAIMS if k in payload}
    if "appid" not in summary and "azp" in payload:
        summary["appid"] = payload["azp"]  # v2.0 tokens name the client azp
    return redact(summary)  # type: ignore[no-any-return]  # a dict in, a dict out


def headers_of(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in items]


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


def body_record(capture: BodyCapture, headers: list[tuple[str, str]]) -> Record:
    """Size, type, and the text when the body is text: JSON pretty-printed, all redacted."""
    content_type = _header(headers, "Content-Type")
    encoding = _header(headers, "Content-Encoding").strip().lower()
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


def record(exchange: Exchange, fields: Mapping[str, object]) -> Record:
    """The redacted, JSON-ready record of a finished exchange; ``fields`` is the access log's."""
    upstream_headers = exchange.upstream_headers
    request_headers = upstream_headers if upstream_headers is not None else exchange.client_headers
    raw_status = fields.get("status")
    status = raw_status if isinstance(raw_status, int) else exchange.status
    timings = {
        "token_wait_ms": fields.get("token_wait_ms"),
        "upstream_ttfb_ms": fields.get("upstream_ms"),
        "total_ms": fields.get("duration_ms"),
    }
    return {
        "id": exchange.id,
        "time": _iso(exchange.started),
        "started": exchange.started,
        "request_id": redact_text(exchange.request_id),
        "route": fields.get("route"),
        "method": exchange.method,
        "target": redact_text(exchange.target),
        "upstream_url": None
        if exchange.upstream_url is None
        else redact_text(exchange.upstream_url),
        "status": status,
        "reason": exchange.reason,
        "error": fields.get("error"),
        "client_headers": _redact_headers(exchange.client_headers),
        "upstream_headers": _redact_headers(upstream_headers),
        "response_headers": _redact_headers(exchange.response_headers),
        "request_body": body_record(exchange.request_body, request_headers),
        "response_body": body_record(exchange.response_body, exchange.response_headers),
        "bytes_in": fields.get("bytes_in", exchange.request_body.size),
        "bytes_out": fields.get("bytes_out", exchange.response_body.size),
        "timings": timings,
        "token_source": fields.get("token"),
        "retried_401": bool(fields.get("retried_401", False)),
        "claims": exchange.claims,
        "http_version": exchange.upstream_http,
    }


def summary(rec: Record) -> Record:
    """What the live list shows of a record (the detail is fetched on demand)."""
    keys = ("id", "time", "route", "method", "target", "status", "error", "timings")
    out = {k: rec[k] for k in keys}
    out["bytes_out"] = rec["bytes_out"]
    out["mime_type"] = rec["response_body"]["mime_type"]
    return out


def _iso(wall: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    return f"{whole}.{int(wall % 1 * 1000):03d}Z"
