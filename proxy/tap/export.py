"""Bodies as exported (HAR, and what a command or a replay is built from): the bytes as
captured, not the pretty-printed view, still redacted.

- Text is the captured text with credential shapes replaced. A JSON body whose values need
  redacting by key (``password``, ``client_secret``...) is re-serialised compactly with those
  values replaced; one that needs nothing is kept byte for byte.
- Binary bodies are base64 (HAR's ``content.encoding``), redacted by shape over their bytes.
- A body compressed with ``gzip`` or ``deflate`` and captured whole is decompressed (to at
  most ``_MAX_DECODED`` bytes), as browsers export them, then treated as above; another
  encoding (``br``) cannot be read, and is left out with a note.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from ..exchange import BodyCapture
from ..redaction import redact, redact_text
from .capture import is_text, looks_like_text

_MAX_DECODED = 16 * 1024 * 1024  # a compressed body decompressed for export, at most
Exported = dict[str, Any]


def export_body(capture: BodyCapture | None, headers: list[tuple[str, str]]) -> Exported:
    """``{"text": ...}`` (with ``"encoding": "base64"`` for binary, ``"decoded": name`` when it
    was decompressed), or ``{"note": why}`` when the body cannot be exported, or ``{}``."""
    if capture is None or not capture.size:
        return {}
    data = bytes(capture.data)
    content_type = _header(headers, "Content-Type")
    encoding = _header(headers, "Content-Encoding").strip().lower()
    out: Exported = {}
    if encoding not in ("", "identity"):
        if capture.truncated:
            return {"note": f"{encoding}-encoded and only partly captured: not exported"}
        decoded = _decompress(data, encoding)
        if decoded is None:
            return {"note": f"{encoding}-encoded: not exported"}
        data, out["decoded"] = decoded, encoding
    textual = is_text(content_type) or (
        content_type.split(";", 1)[0].strip().lower() in ("", "multipart/mixed")
        and looks_like_text(bytearray(data[:1024]))
    )
    text = _utf8(data, capture.truncated and not out) if textual else None
    if text is None:
        if capture.truncated:
            return {"note": "binary and only partly captured: not exported"}
        redacted = redact_text(data.decode("latin-1")).encode("latin-1")
        out.update(text=base64.b64encode(redacted).decode("ascii"), encoding="base64")
        return out
    out["text"] = _redacted_text(text, content_type, whole=not capture.truncated)
    return out


def body_bytes(exported: Exported) -> bytes | None:
    """The bytes an exported body stands for (None when it was not exported)."""
    if "text" not in exported:
        return None
    if exported.get("encoding") == "base64":
        return base64.b64decode(exported["text"])
    return str(exported["text"]).encode("utf-8")


def _redacted_text(text: str, content_type: str, *, whole: bool) -> str:
    if whole and "json" in content_type.lower():
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            cleaned = redact(parsed)
            if cleaned != parsed:
                return json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))
    return redact_text(text)


def _utf8(data: bytes, cut: bool) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if cut and e.start >= len(data) - 3:  # a character cut where the capture stopped
            return data[: e.start].decode("utf-8", errors="replace")
        return None


def _decompress(data: bytes, encoding: str) -> bytes | None:
    """``gzip`` (RFC 1952) or ``deflate`` (RFC 9110 §8.4.1.2: zlib, RFC 1950; raw deflate is
    accepted too, as browsers do), bounded; None when it cannot be done."""
    if encoding in ("gzip", "x-gzip"):
        attempts = [zlib.MAX_WBITS | 16]
    elif encoding == "deflate":
        attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        return None
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, _MAX_DECODED)
        except zlib.error:
            continue
        if inflater.unconsumed_tail or not inflater.eof:
            return None  # over the bound, or cut short
        return out
    return None


def _header(items: list[tuple[str, str]], name: str) -> str:
    name = name.lower()
    return next((v for k, v in items if k.lower() == name), "")
