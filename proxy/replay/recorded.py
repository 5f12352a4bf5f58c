"""A HAR file's exchanges, and which one answers a request.

Where a request is matched: the tap's export keeps the URL the client called (the proxy's
address and the route's prefix) in the custom field ``_clientUrl``; a HAR from a browser or
another tool has only ``request.url``, whose path and query are used. A request matches an
entry when:

- the method is the same;
- the path is the same, compared percent-decoded (``/a%20b`` is ``/a b``);
- the query has the same name/value pairs, in any order; a recorded value the tap redacted
  (``[redacted]``) matches any value;
- the body is the same bytes, or, for JSON, the same value; ``[redacted]`` in the recorded
  body matches anything in its place. A body recorded only in part (``bodySize`` larger than
  the text) matches a body that begins the same way. No body matches no body.

Several entries matching one request answer in turn, in the file's order, then again from
the first.

Links: the tap records the upstream's answer, whose URLs name the upstream. For an entry with
``_clientUrl``, the upstream's base (its origin and the path the route put before the client's
path) is found by comparing the two URLs, and the replay answers with that base replaced by
its own address and the route's prefix, in the body and in the link headers (``Location``,
``OData-EntityId``...): a tool that follows a link stays on the replay, offline.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..headers import HOP_BY_HOP
from ..redaction import REDACTED
from ..rewrite import LINK_HEADERS

# Not replayed: the connection's, and those describing bytes the replay does not send as they
# were (HAR text is decoded; the replay sets its own length). Nor any ``Access-Control-*``
# header (dropped at load): a recorded ``Access-Control-Allow-Origin: *`` would let every web
# page read the recorded answers.
_HOP = HOP_BY_HOP | {"content-length", "content-encoding"}
_LINK_HEADERS = frozenset(h.lower() for h in LINK_HEADERS)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a field name (HTTP/2 ":status" is not)
_BREAK = re.compile(r"[\r\n\x00]")
_REASON = re.compile(r"^[\t\x20-\x7e]*$")


class HarError(Exception):
    """The file is not a HAR this command can read; the message says where."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded exchange: what it answers to, and the answer."""

    method: str
    path: str  # percent-decoded
    query: tuple[tuple[str, str], ...]  # sorted pairs
    body: bytes | None
    body_partial: bool  # only the first bytes of the request body were recorded
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    content: bytes
    shown: str = field(compare=False)  # "METHOD /path?query" as recorded, for messages
    # The upstream's base and the client's prefix for it (see the module docstring).
    links: tuple[str, str] | None = None

    def answer(self, own_base: str) -> tuple[tuple[tuple[str, str], ...], bytes]:
        """Headers and body, the upstream's links pointing at ``own_base`` (the replay)."""
        if self.links is None:
            return self.headers, self.content
        upstream, prefix = self.links
        pattern = re.compile(re.escape(upstream) + r"(?=[/?#\"\\]|$)")
        local = own_base + prefix
        headers = tuple(
            (k, pattern.sub(lambda _: local, v) if k.lower() in _LINK_HEADERS else v)
            for k, v in self.headers
        )
        kind = next((v for k, v in self.headers if k.lower() == "content-type"), "").lower()
        if not any(t in kind for t in ("json", "xml", "text/", "multipart/mixed")):
            return headers, self.content  # a binary body is left byte for byte
        escaped = re.compile(re.escape(upstream.replace("/", "\\/")) + r"(?=[\\\"?#]|$)")
        text = pattern.sub(lambda _: local, self.content.decode("latin-1"))
        text = escaped.sub(lambda _: local.replace("/", "\\/"), text)
        body = text.encode("latin-1")
        return headers, body

    def matches(
        self, method: str, path: str, query: Sequence[tuple[str, str]], body: bytes
    ) -> bool:
        return (
            method == self.method
            and path == self.path
            and _same_query(self.query, query)
            and _same_body(self.body, self.body_partial, body)
        )


class Recordings:
    """The recorded exchanges and, per kind of request, whose turn it is to answer."""

    def __init__(self, entries: Sequence[Recorded]) -> None:
        self.entries = tuple(entries)
        self._turns: dict[tuple[int, ...], int] = {}

    def answer(self, method: str, raw_target: str, body: bytes) -> Recorded | None:
        """The recorded exchange that answers this request now, or None."""
        path, query = _split(raw_target)
        found = tuple(n for n, e in enumerate(self.entries) if e.matches(method, path, query, body))
        if not found:
            return None
        turn = self._turns.get(found, 0)
        self._turns[found] = turn + 1
        return self.entries[found[turn % len(found)]]

    def nearest(self, method: str, raw_target: str, n: int = 5) -> list[str]:
        """The recorded requests most like this one (method and path first)."""
        shown = list(dict.fromkeys(e.shown for e in self.entries))
        return difflib.get_close_matches(f"{method} {raw_target}", shown, n=n, cutoff=0.0)


def load(path: Path) -> list[Recorded]:
    """The entries of the HAR file at ``path``; HarError naming the entry and field that is
    wrong."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise HarError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise HarError(f"{path} is not JSON: {e}") from None
    entries = doc.get("log", {}).get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise HarError(f"{path} is not a HAR file: no log.entries")
    out = []
    for n, entry in enumerate(entries):
        try:
            out.append(_entry(entry))
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise HarError(f"{path}: log.entries[{n}]: missing or wrong {e}") from None
    return out


def _entry(entry: dict[str, Any]) -> Recorded:
    request, response = entry["request"], entry["response"]
    method = str(request["method"]).upper()
    client_url = entry.get("_clientUrl")
    url = client_url or request["url"]
    parts = urlsplit(str(url))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    path, query = _split(target)
    post = request.get("postData")
    body = _bytes(post, "_encoding") if isinstance(post, dict) else None
    size = request.get("bodySize")
    partial = body is not None and isinstance(size, int) and size > len(body)
    content = response.get("content") or {}
    headers = tuple(
        (str(h["name"]), str(h["value"]))
        for h in response.get("headers", [])
        if str(h["name"]).lower() not in _HOP
        and not str(h["name"]).lower().startswith("access-control-")
        and _TOKEN.match(str(h["name"]))
        and not _BREAK.search(str(h["value"]))
    )
    reason = str(response.get("statusText") or "")
    return Recorded(
        method=method,
        path=path,
        query=query,
        body=body or None,
        body_partial=partial,
        status=int(response["status"]),
        reason=reason if _REASON.match(reason) else "",
        headers=headers,
        content=_bytes(content, "encoding") or b"",
        shown=f"{method} {target}",
        links=_links(str(request["url"]), str(client_url)) if client_url else None,
    )


def _links(upstream_url: str, client_url: str) -> tuple[str, str] | None:
    """The upstream's base and the client's prefix: what remains of each URL's path once the
    path they share at their end is taken off."""
    up, client = urlsplit(upstream_url), urlsplit(client_url)
    if not up.scheme or not up.netloc:
        return None
    a, b = up.path or "/", client.path or "/"
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    shared = a[len(a) - n :]
    cut = shared.find("/")  # the shared part starts at a segment boundary
    if cut < 0:
        return None
    n -= cut
    base = f"{up.scheme}://{up.netloc}{a[: len(a) - n]}".rstrip("/")
    return base, b[: len(b) - n].rstrip("/")


def _bytes(holder: dict[str, Any], encoding_key: str) -> bytes | None:
    text = holder.get("text")
    if not isinstance(text, str):
        return None
    if holder.get(encoding_key) == "base64":
        return base64.b64decode(text, validate=False)
    return text.encode("utf-8")


def _split(target: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    path, _, query = target.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    return unquote(path), tuple(sorted(pairs))


def _same_query(recorded: Sequence[tuple[str, str]], given: Sequence[tuple[str, str]]) -> bool:
    if len(recorded) != len(given):
        return False
    if recorded == given:
        return True
    # Redacted values: compare the names, and the values that were kept.
    if [k for k, _ in recorded] != [k for k, _ in given]:
        return False
    return all(r in (g, REDACTED) for (_, r), (_, g) in zip(recorded, given, strict=True))


def _same_body(recorded: bytes | None, partial: bool, given: bytes) -> bool:
    if recorded is None:
        return not given
    if recorded == given or (partial and given.startswith(recorded)):
        return True
    if not partial and recorded.lstrip()[:1] in (b"{", b"["):
        try:
            if _same_json(json.loads(recorded), json.loads(given)):
                return True
        except ValueError:
            pass
    marker = REDACTED.encode()
    if marker not in recorded:
        return False
    pattern = b".*?".join(re.escape(p) for p in recorded.split(marker))
    found = re.match(pattern, given, re.DOTALL) if partial else None
    return found is not None or re.fullmatch(pattern, given, re.DOTALL) is not None


def _same_json(recorded: Any, given: Any) -> bool:
    if recorded == REDACTED:
        return True
    if isinstance(recorded, dict):
        return (
            isinstance(given, dict)
            and recorded.keys() == given.keys()
            and all(_same_json(v, given[k]) for k, v in recorded.items())
        )
    if isinstance(recorded, list):
        return (
            isinstance(given, list)
            and len(recorded) == len(given)
            and all(_same_json(r, g) for r, g in zip(recorded, given, strict=True))
        )
    return bool(recorded == given)
