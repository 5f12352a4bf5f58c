"""Request hygiene: the requests the proxy must never forward, whoever sends them.

A pure check on the method, the raw request target and the headers; the guard runs it first.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from multidict import MultiMapping

from .errors import BadRequest, NotProxied

_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # raw controls and space: never in a request target
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9a-f]|7f)", re.IGNORECASE)
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")


def check_request(method: str, target: str, headers: MultiMapping[str]) -> None:
    """Raise ``BadRequest`` (400) or ``NotProxied`` (501) for a request never to forward.

    ``target`` is the raw request target as received. Every rule keeps the token of a route
    going to that route's upstream, under its base path, and nowhere else.
    """
    if method == "CONNECT":
        raise BadRequest("CONNECT is not supported: this is a reverse proxy")
    if method in ("TRACE", "TRACK"):
        # The upstream would echo the request back, with the injected token in it.
        raise NotProxied(f"{method} is not proxied: the answer would carry the proxy's token")
    # An upgrade request is Upgrade plus "upgrade" in Connection (RFC 9110 §7.8), as aiohttp's
    # parser sees it too; a bare Upgrade header is hop-by-hop noise the forwarder drops.
    if "Upgrade" in headers:
        connection = {
            t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")
        }
        if "upgrade" in connection:
            raise NotProxied("Upgrade requests (WebSockets, h2c) are not proxied")
    if "Host" not in headers:
        raise BadRequest("a Host header is required (RFC 9112 §3.2)")
    _check_header_text(headers)
    if _CONTROL.search(target):
        raise BadRequest("control characters in the request target")
    if not target.startswith("/"):
        # Absolute form (GET http://host/...), authority form and OPTIONS *: only origin form
        # names a path on this proxy, so only it can be matched to a route.
        raise BadRequest("the request target must be a path: /path?query (RFC 9112 §3.2.1)")
    if "#" in target:
        raise BadRequest("a request target has no fragment (RFC 9112 §3.2.1)")
    check_path(target.split("?", 1)[0])


def check_path(path: str) -> None:
    """``BadRequest`` for a path (no query) that could mean another place than it says: a
    leading ``//``, backslashes, dot segments (raw or encoded), encoded separators or
    controls, malformed or non-UTF-8 percent-encoding. Also used for ``$batch`` inner URLs."""
    if path.startswith("//"):
        raise BadRequest("the path must not start with //")
    if "\\" in path:
        raise BadRequest("backslashes are not allowed in the path")
    if "%" not in path:  # nothing encoded: only raw dot segments are left to look for
        if "." in path and any(s.split(";", 1)[0] in (".", "..") for s in path.split("/")):
            raise BadRequest("'.' and '..' segments are not allowed in the path, encoded or not")
        return
    if _BAD_ESCAPE.search(path):
        raise BadRequest("malformed percent-encoding in the path")
    if _ENCODED_SEPARATOR.search(path):
        raise BadRequest("encoded slashes (%2F, %5C) are not allowed in the path")
    if _ENCODED_CONTROL.search(path):
        raise BadRequest("encoded control characters are not allowed in the path")
    try:
        segments = [unquote(s, errors="strict") for s in path.split("/")]
    except UnicodeDecodeError:
        raise BadRequest("percent-encoded bytes in the path are not UTF-8") from None
    # ";" because some servers drop path parameters, so "..;x" is ".." to them.
    if any(s.split(";", 1)[0] in (".", "..") for s in segments):
        raise BadRequest("'.' and '..' segments are not allowed in the path, encoded or not")


def check_stripped_path(target: str, prefix: str) -> None:
    """Raise ``BadRequest`` when the path a route forwards after stripping ``prefix`` from the
    raw ``target`` starts with ``//`` (``/bap//providers``): the rule :func:`check_request`
    applies to the whole target, applied to what the upstream will see."""
    if prefix != "/" and target.startswith("//", len(prefix)):
        raise BadRequest("the path after the route's prefix must not start with //")


def _check_header_text(headers: MultiMapping[str]) -> None:
    """Header values must be UTF-8 text. aiohttp decodes other bytes as lone surrogates, which
    cannot be encoded again: the request could be neither checked nor forwarded intact."""
    for value in headers.values():
        if not value.isascii():  # the common case costs one C-level scan per value
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("a header value is not UTF-8 text") from None
