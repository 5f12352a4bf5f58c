"""``rate_limit = "COUNT/DURATION"``: a number of requests per window, e.g. ``"6000/5m"``.

Shared by routes (pacing the upstream) and ``[[access.clients]]`` (limiting a client).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .parse import Problems, show

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``seconds``; ``text`` as written in the file (for messages)."""

    count: int
    seconds: float
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two requests when they are spread evenly over the window."""
        return self.seconds / self.count


def parse_rate(t: Mapping[str, Any], key: str, path: str, p: Problems) -> Rate | None:
    """``t[key]`` as a :class:`Rate`; None when absent or wrong (reported into ``p``)."""
    if key not in t:
        return None
    value = t[key]
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None:
        p.add(
            f"{path}.{key}",
            f'must be "COUNT/DURATION" like "6000/5m", "100/60s" or "1000/1h", got {show(value)}',
        )
        return None
    count, amount, unit = int(match[1]), float(match[2]), match[3]
    seconds = amount * _UNIT_SECONDS[unit]
    if count < 1 or seconds <= 0:
        p.add(f"{path}.{key}", f"needs a count and a duration above 0, got {show(value)}")
        return None
    return Rate(count, seconds, f"{count}/{match[2]}{unit}")
