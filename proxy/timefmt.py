"""Timestamps as the proxy shows them: ISO 8601 in UTC."""

from __future__ import annotations

import time


def iso(wall: float, *, millis: bool = False) -> str:
    """``wall`` (``time.time()``) as ``2026-01-31T12:00:00Z``, or ``...:00.123Z`` with millis."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    return f"{whole}.{int(wall % 1 * 1000):03d}Z" if millis else f"{whole}Z"
