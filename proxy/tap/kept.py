"""A finished exchange as the tap keeps it (:class:`Captured`): numbered, stamped, the injected
token taken out at once, its request line and headers cut to ``tap.max_header_bytes``, and
its cost in memory known, for ``tap.max_memory``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from multidict import CIMultiDict

from ..config.tap import RECORD_OVERHEAD
from ..exchange import BodyCapture, Exchange
from ..redaction import redact, redact_text


class Captured:
    """A finished exchange as the tap keeps it: numbered, stamped, never holding the token, its
    request line and headers cut to ``max_header_bytes`` (see :class:`_Budget`), and what it
    costs in memory (``cost``)."""

    __slots__ = ("cost", "exchange", "headers_cut", "id", "resend_of", "started")

    def __init__(
        self,
        record_id: int,
        exchange: Exchange,
        resend_of: int | None = None,
        *,
        max_header_bytes: int = 16 * 1024,
    ) -> None:
        self.id = record_id
        self.exchange = exchange
        self.resend_of = resend_of  # the exchange this one was resent from, on the tap page
        # The wall clock when it started, read once here rather than on every request.
        self.started = time.time() - exchange.duration_ms / 1000
        budget = _Budget(max_header_bytes)
        exchange.target = budget.text(exchange.target)
        exchange.path = budget.text(exchange.path)
        exchange.reason = budget.text(exchange.reason)
        exchange.client_headers = CIMultiDict(budget.headers(exchange.client_headers.items()))
        upstream = exchange.upstream_headers
        if upstream is not None:  # the injected token goes now, not when the record is shown
            exchange.upstream_headers = budget.headers(
                (k, "Bearer [redacted]" if k.lower() == "authorization" else v) for k, v in upstream
            )
        exchange.response_headers = budget.headers(exchange.response_headers)
        exchange.state = None  # keep no configuration version alive for the record's sake
        self.headers_cut = budget.cut
        self.cost = RECORD_OVERHEAD + budget.used + _size(exchange.request_capture)
        self.cost += _size(exchange.response_capture)


def _size(capture: BodyCapture | None) -> int:
    return 0 if capture is None else sys.getsizeof(capture.data)


class _Budget:
    """``tap.max_header_bytes`` for one exchange, spent in order: the request line, the
    client's headers, those sent upstream, the response's. What does not fit is cut: a value
    at the point the budget ends (marked), then whole headers, counted in one last header."""

    __slots__ = ("cut", "left", "used")

    CUT = "…[cut: over tap.max_header_bytes]"

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.used = 0
        self.cut = False

    def text(self, value: str) -> str:
        if len(value) <= self.left:
            self.left -= len(value)
            self.used += len(value)
            return value
        # Redacted before it is cut: half a credential would no longer have its shape.
        kept = redact_text(value)[: max(self.left, 0)] + self.CUT
        self.cut = True
        self.used += len(kept)
        self.left = 0
        return kept

    def headers(self, items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        dropped = 0
        full = self.left <= 0
        for name, value in items:
            size = len(name) + len(value) + 4  # ": " and CRLF, as on the wire
            if not full and size <= self.left:
                out.append((name, value))
                self.left -= size
                self.used += size
                continue
            room = self.left - len(name) - 4
            if not full and room > 0:
                out.append((name, str(redact(value, name))[:room] + self.CUT))
                self.used += len(name) + 4 + room + len(self.CUT)
            else:
                dropped += 1
            full, self.left, self.cut = True, 0, True
        if dropped:
            note = f"{dropped} header(s) not kept: over tap.max_header_bytes"
            out.append(("X-Ppproxy-Tap-Cut", note))
            self.used += len(note) + 21
        return out
