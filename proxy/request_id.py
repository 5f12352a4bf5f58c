"""Request ids: the client's ``x-ms-client-request-id`` when it is sane, otherwise a new one."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Mapping

HEADER = "x-ms-client-request-id"
_SANE = re.compile(r"^[\x21-\x7e]{1,128}$")  # visible ASCII: safe in a log line and a header
# GUID-shaped (x-ms-client-request-id is a GUID by convention): a random per-process prefix and
# a counter, unique without asking the OS for randomness per request.
_RANDOM = uuid.uuid4().hex
_PREFIX = f"{_RANDOM[:8]}-{_RANDOM[8:12]}-{_RANDOM[12:16]}-"
_COUNTER = itertools.count(1)


def new() -> str:
    """A fresh request id, unique within this process and very likely across processes."""
    n = f"{next(_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"
    return f"{_PREFIX}{n[:4]}-{n[4:]}"


def of(headers: Mapping[str, str]) -> str:
    """The request id for a request with ``headers``: the client's if sane, else a new one."""
    given = headers.get(HEADER)
    if given is not None and _SANE.match(given):
        return given
    return new()
