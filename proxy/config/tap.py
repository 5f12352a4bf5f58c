"""The [tap] table: the debugging tap's ring buffer, body cap and optional recording file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .parse import Problems, get, only

_KEYS = {"enabled", "keep", "max_body_bytes", "file", "file_max_bytes", "file_keep"}


@dataclass(frozen=True, slots=True)
class TapConfig:
    enabled: bool = False
    keep: int = 200  # exchanges held in the ring buffer
    max_body_bytes: int = 65536  # captured per body; the rest streams past uncopied
    file: Path | None = None  # JSON lines, one per exchange
    file_max_bytes: int = 16 * 1024 * 1024  # rotate when the file would grow past this
    file_keep: int = 5  # rotated files kept: file.1 (newest) .. file.N


def parse_tap(raw: Any, base_dir: Path, p: Problems) -> TapConfig:
    """``[tap]``; a relative ``file`` is relative to ``base_dir`` (the configuration's folder)."""
    d = TapConfig()
    if raw is None:
        return d
    if not isinstance(raw, Mapping):
        p.add("tap", "must be a table")
        return d
    only(raw, _KEYS, "tap", p)
    enabled = get(raw, "enabled", bool, "tap", p, d.enabled)
    numbers: dict[str, int] = {}
    for key, least in (
        ("keep", 1),
        ("max_body_bytes", 0),
        ("file_max_bytes", 1024),
        ("file_keep", 0),
    ):
        value = get(raw, key, int, "tap", p, getattr(d, key))
        if value < least:
            p.add(f"tap.{key}", f"must be {least} or more, got {value}")
        numbers[key] = value
    name = get(raw, "file", str, "tap", p, None)
    file = None
    if name:
        file = (base_dir / name).resolve()
        if not file.parent.is_dir():
            p.add("tap.file", f"no such folder: {file.parent}")
        if not enabled:
            p.add("tap.file", "records only while the tap is on: set tap.enabled = true too")
    return TapConfig(
        enabled,
        numbers["keep"],
        numbers["max_body_bytes"],
        file,
        numbers["file_max_bytes"],
        numbers["file_keep"],
    )
