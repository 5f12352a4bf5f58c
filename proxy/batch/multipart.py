"""A strict, bounded reader of OData ``$batch`` request bodies (``multipart/mixed``, RFC 2046
§5.1, holding ``application/http`` parts: OData 4.0 Part 1 §11.7).

It must never read a body differently from the upstream, or the proxy would check one thing and
the upstream run another. Microsoft.OData's reader (which Dataverse uses) takes CR, LF or CRLF
as line ends and finds a delimiter wherever ``--boundary`` is followed by optional whitespace
and a line end, even in the middle of a line. So instead of guessing how the upstream splits a
body, this reader refuses every body in which the two could differ:

- every occurrence of ``--boundary`` must be a delimiter at the start of a line, followed by
  optional spaces or tabs and CRLF or LF (or the end, after the closing one), and none may
  follow the closing delimiter;
- a bare CR (not followed by LF) is refused in every line the proxy reads (part headers,
  request lines, inner headers);
- boundaries are limited to RFC 2046's characters without space and ``:`` (a delimiter line
  must never read as a header line), and only ASCII-compatible charsets are accepted.

The reader only finds things; ``proxy.batch.check`` decides what they may do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadBatch
from ..redaction import redact_text

MAX_REQUESTS = 1000  # Dataverse's limit per batch; also what bounds the work per body
MAX_HEADERS = 100  # per part and per inner request
SHOWN = 80  # characters of a malformed line an error echoes
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./=?]{1,70}")  # RFC 2046 bchars less space and ':'
_PARAM = re.compile(r'\s*;\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\\r\n]|\\.)*"|[^;\s"]*)')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1"})
_TRANSFER = frozenset({"binary", "8bit", "7bit"})

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class InnerRequest:
    """One ``application/http`` part: its request and where its target lies in the body."""

    method: str  # as written
    target: str  # between the method and the version, spaces around it removed
    target_span: tuple[int, int]  # byte offsets of the target in the whole body
    headers: Headers  # the inner request's headers (names as written, values trimmed)
    content_id: str | None  # from the part's MIME headers, else the inner headers
    changeset: int | None  # 1, 2, ... in order of the change sets; None outside one

    def header(self, name: str) -> str | None:
        return first(self.headers, name)


@dataclass(frozen=True, slots=True)
class Span:
    """One body part between two delimiters: its MIME headers and its content's offsets."""

    headers: Headers
    start: int
    end: int

    def header(self, name: str) -> str | None:
        return first(self.headers, name)


def first(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers if k.lower() == wanted), None)


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/mixed`` Content-Type; ``BadBatch`` for anything else."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "multipart/mixed":
        raise BadBatch(
            f"a $batch body must be multipart/mixed; this one is {media.strip()[:100]!r} "
            "(JSON batches cannot be checked, so they are not forwarded)"
        )
    found: dict[str, str] = {}
    rest = ";" + params if params else ""
    while rest.strip():
        match = _PARAM.match(rest)
        if match is None:
            raise BadBatch("the Content-Type's parameters cannot be read unambiguously")
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in found:
            raise BadBatch(f"the Content-Type names {name!r} twice")
        found[name] = value
        rest = rest[match.end() :]
    boundary = found.get("boundary")
    if boundary is None:
        raise BadBatch("multipart/mixed needs a boundary parameter")
    if not _BOUNDARY.fullmatch(boundary):
        raise BadBatch(
            "the boundary must be 1 to 70 letters, digits or '()+_,-./=? (no spaces or ':')"
        )
    charset = found.get("charset")
    if charset is not None and charset.lower() not in _CHARSETS:
        raise BadBatch(f"charset {charset[:40]!r} is not accepted in a $batch (use UTF-8)")
    return boundary


def read(body: bytes, content_type: str) -> list[InnerRequest]:
    """Every inner request of a batch body, change sets flattened, in order."""
    requests: list[InnerRequest] = []
    changesets = 0
    for part in split(body, boundary_of(content_type), 0, len(body)):
        kind = (part.header("Content-Type") or "").partition(";")[0].strip().lower()
        if kind == "multipart/mixed":
            changesets += 1
            inner = boundary_of(part.header("Content-Type") or "")
            for operation in split(body, inner, part.start, part.end):
                if _kind(operation) == "multipart/mixed":
                    raise BadBatch("a change set cannot hold another change set")
                requests.append(_request(body, operation, changesets))
                _count(requests)
        else:
            requests.append(_request(body, part, None))
            _count(requests)
    return requests


def split(body: bytes, boundary: str, start: int, end: int, *, partial: bool = False) -> list[Span]:
    """The parts of ``body[start:end]`` between delimiters of ``boundary``; the preamble and
    epilogue are dropped. ``partial``: a missing closing delimiter is no error (the parts
    closed so far are returned): for bodies captured only in part."""
    delimiter = b"--" + boundary.encode("ascii")
    spans: list[Span] = []
    content_start: int | None = None
    closed = False
    at = body.find(delimiter, start, end)
    while at != -1:
        if closed:
            raise BadBatch(f"--{boundary} appears after the closing delimiter")
        if at != start and body[at - 1 : at] != b"\n":
            raise BadBatch(f"--{boundary} appears inside a part, not at the start of a line")
        after = at + len(delimiter)
        closing = body.startswith(b"--", after, end)
        if closing:
            after += 2
        while after < end and body[after] in b" \t":  # transport padding (RFC 2046 §5.1.1)
            after += 1
        if body.startswith(b"\r\n", after, end):
            line_end = after + 2
        elif body.startswith(b"\n", after, end):
            line_end = after + 1
        elif after == end and closing:
            line_end = end
        else:
            raise BadBatch(f"--{boundary} is followed by something other than a line end")
        if content_start is not None:
            # The line break before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            stop = at - 2 if at - 2 >= content_start and body[at - 2 : at] == b"\r\n" else at - 1
            spans.append(_span(body, content_start, max(stop, content_start)))
        content_start = line_end
        closed = closing
        at = body.find(delimiter, line_end, end)
    if not closed and not partial:
        raise BadBatch(f"the body has no closing delimiter --{boundary}--")
    return spans


def lines(body: bytes, start: int, end: int) -> tuple[list[tuple[int, int]], int]:
    """The lines of ``body[start:end]`` up to the first empty one, as (start, end) offsets
    without their line ends, and the offset after the empty line (``end`` if there is none).
    A bare CR is refused: the upstream would end a line there."""
    found: list[tuple[int, int]] = []
    at = start
    while at < end:
        stop = body.find(b"\n", at, end)
        line_end = end if stop == -1 else stop
        crlf = stop != -1 and line_end > at and body[line_end - 1] == 0x0D
        text_end = line_end - 1 if crlf else line_end
        if body.find(b"\r", at, text_end) != -1:
            raise BadBatch("a bare CR in a header line (line ends must be CRLF or LF)")
        if text_end == at:
            return found, min(line_end + 1, end)
        found.append((at, text_end))
        if len(found) > MAX_HEADERS + 1:
            raise BadBatch(f"more than {MAX_HEADERS} header lines in one part")
        at = line_end + 1
    return found, end


def _span(body: bytes, start: int, end: int) -> Span:
    head, content = lines(body, start, end)
    return Span(_headers(body, head), content, end)


def _kind(span: Span) -> str:
    return (span.header("Content-Type") or "").partition(";")[0].strip().lower()


def _request(body: bytes, part: Span, changeset: int | None) -> InnerRequest:
    kind = _kind(part)
    if kind != "application/http":
        raise BadBatch(
            f"a batch part must be application/http or a multipart/mixed change set, not "
            f"{kind[:100]!r}"
        )
    transfer = part.header("Content-Transfer-Encoding")
    if transfer is not None and transfer.lower() not in _TRANSFER:
        raise BadBatch(f"Content-Transfer-Encoding {transfer[:40]!r} is not accepted (binary)")
    at = part.start
    # Microsoft.OData skips empty lines before the request line; so does this.
    while body.startswith(b"\r\n", at, part.end) or body.startswith(b"\n", at, part.end):
        at += 2 if body[at] == 0x0D else 1
    head, _ = lines(body, at, part.end)
    if not head:
        raise BadBatch("a batch part holds no request")
    line_start, line_end = head[0]
    line = _text(body[line_start:line_end])
    first_space, last_space = line.find(" "), line.rfind(" ")
    method, version = line[:first_space], line[last_space + 1 :]
    raw_target = line[first_space + 1 : last_space] if first_space < last_space else ""
    target = raw_target.strip(" ")
    if first_space <= 0 or not target or not _TOKEN.fullmatch(method) or version != "HTTP/1.1":
        raise BadBatch(f"malformed request line {_shown(line)!r} (METHOD target HTTP/1.1)")
    # In bytes: everything before the target is ASCII, the target itself may not be.
    target_start = line_start + first_space + 1 + len(raw_target) - len(raw_target.lstrip(" "))
    target_span = (target_start, target_start + len(target.encode("utf-8")))
    headers = _headers(body, head[1:])
    content_id = part.header("Content-ID") or first(headers, "Content-ID")
    return InnerRequest(method, target, target_span, headers, content_id, changeset)


def _headers(body: bytes, spans: list[tuple[int, int]]) -> Headers:
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for start, end in spans:
        line = _text(body[start:end])
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadBatch(f"malformed header line starting {_shown_name(line)!r}")
        if any((c < " " and c != "\t") or c == "\x7f" for c in value):
            raise BadBatch(f"control characters in header {name[:100]!r}")
        if name.lower() in seen:
            # Microsoft.OData refuses exact duplicates and keeps case variants apart: refuse both.
            raise BadBatch(f"header {name[:100]!r} appears twice in one part")
        seen.add(name.lower())
        pairs.append((name, value.strip(" \t")))
    return tuple(pairs)


def _shown(line: str) -> str:
    """A request line the client sent, as an error may echo it: without its query (it may
    hold a token), redacted, and short."""
    shown = redact_text(line.partition("?")[0])
    return shown if len(shown) <= SHOWN else shown[:SHOWN] + "…"


def _shown_name(line: str) -> str:
    """Of a header line without a colon, only what stands where its name would: the rest may
    be a credential (``Authorization Bearer …``)."""
    return _shown(re.split(r"[\s:]", line, maxsplit=1)[0])


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBatch("a header or request line is not UTF-8") from None


def _count(requests: list[InnerRequest]) -> None:
    if len(requests) > MAX_REQUESTS:
        raise BadBatch(f"a batch holds at most {MAX_REQUESTS} requests")
