"""Reading and writing the ``multipart/mixed`` bodies of OData ``$batch`` requests.

The format is RFC 2046 section 5.1 (multipart) holding ``application/http`` parts, each an
HTTP/1.1 message (OData 4.0 Part 1, section 11.7). Dataverse's readers accept CR, LF or CRLF
as line ends, so these do too; what they write always uses CRLF.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

CRLF = b"\r\n"
_BOUNDARY = re.compile(r"""boundary\s*=\s*(?:"([^"]+)"|([^\s;,]+))""", re.IGNORECASE)
_BLANK = (b"\r\n", b"\n", b"\r")

Headers = tuple[tuple[str, str], ...]


class MultipartError(ValueError):
    """The body is not a well-formed multipart or HTTP message."""


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its MIME headers (in order, names as sent) and its content."""

    headers: Headers
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request carried in an ``application/http`` part."""

    method: str
    target: str
    headers: Headers = field(repr=False)
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)


def boundary_of(content_type: str) -> str | None:
    """The boundary parameter of a ``multipart/mixed`` Content-Type, or None."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "multipart/mixed":
        return None
    match = _BOUNDARY.search(content_type)
    if match is None:
        return None
    return match.group(1) or match.group(2)


def split_parts(body: bytes, boundary: str) -> list[Part]:
    """The body parts between the delimiters; the preamble and epilogue are dropped.

    Raises MultipartError if there is no closing delimiter (RFC 2046 section 5.1.1).
    """
    delimiter = b"--" + boundary.encode("latin-1")
    parts: list[Part] = []
    current: list[bytes] | None = None
    for line in body.splitlines(keepends=True):
        # Transport padding (spaces, tabs) may follow a delimiter.
        stripped = line.rstrip(b"\r\n").rstrip(b" \t")
        if stripped in (delimiter, delimiter + b"--"):
            if current is not None:
                parts.append(_part(current))
            if stripped.endswith(b"--"):
                return parts
            current = []
        elif current is not None:
            current.append(line)
    raise MultipartError(f"no closing delimiter --{boundary}--")


def parse_request(data: bytes) -> HttpRequest:
    """Parse an ``application/http`` request: request line, headers, empty line, body.

    The target is everything between the first and the last word of the request line: clients
    such as Microsoft's Python SDK send query strings with raw spaces in them. A message whose
    headers run to the end of the part (no empty line) has an empty body.
    """
    # Microsoft.OData reads the request line as the first non-empty line (ReadFirstNonEmptyLine).
    lines = data.splitlines(keepends=True)
    while lines and lines[0] in _BLANK:
        lines.pop(0)
    head, body = _split_head(b"".join(lines))
    if not head:
        raise MultipartError("empty request in batch part")
    words = head[0].split(" ")
    if len(words) < 3 or not words[-1].startswith("HTTP/") or not words[0].isalpha():
        raise MultipartError(f"malformed request line {head[0][:200]!r}")
    return HttpRequest(words[0].upper(), " ".join(words[1:-1]).strip(), _headers(head[1:]), body)


def render_response(status: int, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.1 response message for an ``application/http`` part."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return "\r\n".join(lines).encode("utf-8") + CRLF + CRLF + body


def render_multipart(parts: Sequence[Part], boundary: str) -> bytes:
    """A multipart body with CRLF line ends and a closing delimiter."""
    out = bytearray()
    for part in parts:
        out += b"--" + boundary.encode("latin-1") + CRLF
        for name, value in part.headers:
            out += f"{name}: {value}".encode() + CRLF
        # The CRLF after the content belongs to the next delimiter (RFC 2046 section 5.1.1).
        out += CRLF + part.body + CRLF
    out += b"--" + boundary.encode("latin-1") + b"--" + CRLF
    return bytes(out)


def _part(lines: list[bytes]) -> Part:
    if lines:
        # The line break before a delimiter is part of the delimiter, not of the content.
        lines[-1] = lines[-1].removesuffix(b"\n").removesuffix(b"\r")
    head, body = _split_head(b"".join(lines))
    return Part(_headers(head), body)


def _split_head(data: bytes) -> tuple[list[str], bytes]:
    lines = data.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line in _BLANK:
            head, rest = lines[:index], lines[index + 1 :]
            break
    else:
        head, rest = lines, []
    return [line.rstrip(b"\r\n").decode("utf-8", "replace") for line in head], b"".join(rest)


def _headers(lines: list[str]) -> Headers:
    pairs = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise MultipartError(f"malformed header line {line[:200]!r}")
        pairs.append((name, value.strip()))
    return tuple(pairs)


def _first(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)
