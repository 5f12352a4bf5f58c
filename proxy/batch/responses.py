"""The answer to a ``$batch``: its inner responses' upstream URLs rewritten to the proxy, and
read back (from the tap's bounded copy) as a list for the tap.

The answer is ``multipart/mixed`` with one ``application/http`` part per inner response and a
nested ``multipart/mixed`` per change set. Only the URL-bearing parts change: the inner
``Location``, ``OData-EntityId`` (and the other link headers) and JSON bodies; every other byte
stays as the upstream wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import BadBatch
from ..rewrite import LINK_HEADERS, is_json
from . import multipart

_URL_HEADERS = frozenset(h.lower() for h in (*LINK_HEADERS, "OData-EntityId"))
_SHOWN_HEADERS = ("OData-EntityId", "Location")


def rewrite(
    body: bytes,
    content_type: str,
    url: Callable[[str], str],
    json_body: Callable[[bytes], bytes],
) -> bytes | None:
    """``body`` with ``url`` applied to inner link headers and ``json_body`` to inner JSON
    bodies (inner Content-Length corrected); None when it cannot be read as a batch answer."""
    edits: list[tuple[int, int, bytes]] = []
    try:
        _rewrite_parts(body, content_type, 0, len(body), url, json_body, edits)
    except (BadBatch, ValueError):
        return None
    if not edits:
        return body
    out = bytearray()
    last = 0
    for start, end, data in sorted(edits, key=lambda e: e[0]):
        out += body[last:start]
        out += data
        last = end
    out += body[last:]
    return bytes(out)


def summarize(body: bytes, content_type: str) -> tuple[list[dict[str, Any]], bool] | None:
    """The inner responses of a (possibly cut) batch answer, and whether the list is whole;
    None when it cannot be read as one."""
    found: list[dict[str, Any]] = []
    try:
        whole = _summarize(body, content_type, 0, len(body), None, found)
    except (BadBatch, ValueError):
        return None
    return found, whole


def _rewrite_parts(
    body: bytes,
    content_type: str,
    start: int,
    end: int,
    url: Callable[[str], str],
    json_body: Callable[[bytes], bytes],
    edits: list[tuple[int, int, bytes]],
) -> None:
    for part in multipart.split(body, multipart.boundary_of(content_type), start, end):
        kind = part.header("Content-Type") or ""
        if kind.partition(";")[0].strip().lower() == "multipart/mixed":
            _rewrite_parts(body, kind, part.start, part.end, url, json_body, edits)
            continue
        head, content = multipart.lines(body, part.start, part.end)
        length_line = None
        inner_type = ""
        for line_start, line_end in head[1:]:
            name, _, value = body[line_start:line_end].decode("utf-8").partition(":")
            lower = name.strip().lower()
            if lower == "content-length":
                length_line = (line_start, line_end, name)
            elif lower == "content-type":
                inner_type = value.strip()
            elif lower in _URL_HEADERS:
                new = url(value.strip())
                if new != value.strip():
                    edits.append((line_start, line_end, f"{name}: {new}".encode()))
        if content < part.end and is_json(inner_type):
            old = body[content : part.end]
            new_body = json_body(old)
            if new_body != old:
                edits.append((content, part.end, new_body))
                if length_line is not None:
                    line_start, line_end, name = length_line
                    edits.append((line_start, line_end, f"{name}: {len(new_body)}".encode()))


def _summarize(
    body: bytes,
    content_type: str,
    start: int,
    end: int,
    changeset: int | None,
    found: list[dict[str, Any]],
) -> bool:
    spans = multipart.split(body, multipart.boundary_of(content_type), start, end, partial=True)
    whole = _closed(body, content_type, start, end)
    changesets = 0 if changeset is None else changeset
    for part in spans:
        kind = part.header("Content-Type") or ""
        if kind.partition(";")[0].strip().lower() == "multipart/mixed":
            changesets += 1
            whole = _summarize(body, kind, part.start, part.end, changesets, found) and whole
            continue
        found.append(_response(body, part, changeset))
    return whole


def _response(body: bytes, part: multipart.Span, changeset: int | None) -> dict[str, Any]:
    head, content = multipart.lines(body, part.start, part.end)
    status_line = body[head[0][0] : head[0][1]].decode("utf-8") if head else ""
    words = status_line.split(" ", 2)
    headers = [body[s:e].decode("utf-8").partition(":") for s, e in head[1:]]
    values = {name.strip().lower(): value.strip() for name, _, value in headers}
    status = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
    answer: dict[str, Any] = {
        "status": status,
        "reason": words[2] if len(words) > 2 else "",
        "changeset": changeset,
        "content_id": part.header("Content-ID") or values.get("content-id"),
    }
    for name in _SHOWN_HEADERS:
        if name.lower() in values:
            answer[name] = values[name.lower()]
    if status >= 400 and is_json(values.get("content-type", "")):
        try:
            error = json.loads(body[content : part.end]).get("error", {})
        except (ValueError, AttributeError):
            error = {}
        if isinstance(error, dict):
            answer["error"] = {k: str(error[k])[:500] for k in ("code", "message") if k in error}
    return answer


def _closed(body: bytes, content_type: str, start: int, end: int) -> bool:
    delimiter = b"--" + multipart.boundary_of(content_type).encode("ascii") + b"--"
    return body.find(delimiter, start, end) != -1
