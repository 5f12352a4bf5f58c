"""Path globs for route policy: the grammar, its compiler, and the forms a path is judged in.

Pure and free of configuration types, so the configuration checks patterns with the same code
that compiles them.

Grammar (a pattern is a path; leading ``/`` optional, trailing ``/`` ignored):

- a segment ``**`` is zero or more whole segments: ``/admin/**`` is ``/admin`` and everything
  below it, ``/**/delete*`` is ``/deleteAll`` as well as ``/a/b/deleteAll``;
- ``*`` is any run of characters within one segment (possibly none), ``?`` one character
  other than ``/``;
- everything else is itself, compared without regard to case. ``**`` only stands alone as a
  segment: ``/a**`` is refused when the configuration is loaded.

A path is matched in two forms (:func:`forms`): as it is (percent-decoded, runs of ``/`` read
as one, a trailing ``/`` dropped), and as a lenient server might read it (each segment without
``;parameters``, trailing dots or surrounding white space, NBSP included). A deny rule refuses a
path when either form matches; an allow rule admits it only when both match. Whatever a server
makes of ``/roles.``, ``/roles%20`` or ``/roles;x=1``, a rule about ``/roles`` holds.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_SLASHES = re.compile("/{2,}")
# What a lenient reading could change: a parameter, a dot, or white space (any, for NBSP).
_LENIENT_HINT = re.compile(r"[;.\s]")
_SEGMENT_TAIL = re.compile(r"[.\s]+$")


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid glob, or ``None``."""
    for segment in pattern.split("/"):
        if "**" in segment and segment != "**":
            return f"{pattern!r}: '**' must be a whole segment, e.g. /a/** or /**/b"
    return None


def compile_glob(pattern: str) -> re.Pattern[str]:
    """``pattern`` as a regular expression over a path in the form :func:`forms` gives."""
    segments = [s for s in pattern.strip("/").split("/") if s]
    parts: list[str] = []
    for segment in segments:
        if segment == "**":
            parts.append("(?:/[^/]+)*")  # zero or more whole segments
            continue
        parts.append("/")
        for char in segment:
            if char == "*":
                parts.append("[^/]*")
            elif char == "?":
                parts.append("[^/]")
            else:
                parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def forms(path: str) -> tuple[str, str]:
    """The strict and the lenient form of a raw path (no query); the root is ``""``.

    Strict: percent-decoded, runs of ``/`` as one, no trailing ``/``. Lenient: also each
    segment without ``;parameters``, trailing dots and surrounding white space; segments left
    empty are dropped. The two are the same string object when nothing differs."""
    strict = _SLASHES.sub("/", "/" + unquote(path)).rstrip("/")
    if _LENIENT_HINT.search(strict) is None:
        return strict, strict
    segments = (_SEGMENT_TAIL.sub("", s.split(";", 1)[0].strip()) for s in strict.split("/"))
    lenient = "".join("/" + s for s in segments if s)
    return strict, lenient
