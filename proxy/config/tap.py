"""The [tap] table: the debugging tap's ring buffers, caps and optional recording file."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .parse import Problems, get, only

_KEYS = {
    "enabled",
    "keep",
    "keep_unrouted",
    "max_body_bytes",
    "max_header_bytes",
    "max_memory",
    "file",
    "file_max_bytes",
    "file_keep",
}
RECORD_OVERHEAD = 2048  # bytes a kept record costs beyond its bodies and headers (objects)


@dataclass(frozen=True, slots=True)
class TapConfig:
    enabled: bool = False
    keep: int = 200  # exchanges held in the ring buffer
    max_body_bytes: int = 65536  # captured per body; the rest streams past uncopied
    file: Path | None = None  # JSON lines, one per exchange
    file_max_bytes: int = 16 * 1024 * 1024  # rotate when the file would grow past this
    file_keep: int = 5  # rotated files kept: file.1 (newest) .. file.N
    # The request line and all headers kept of one exchange; the rest is cut, and said so.
    max_header_bytes: int = 16 * 1024
    max_memory: int = 64 * 1024 * 1024  # every kept record counted whole; the oldest go first
    # Exchanges no route took (404 no_route): their own small ring, so they cannot push the
    # routed ones out of the buffer.
    keep_unrouted: int = 20

    @property
    def record_max_bytes(self) -> int:
        """The most one kept record can cost."""
        return 2 * self.max_body_bytes + self.max_header_bytes + RECORD_OVERHEAD


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
        ("keep_unrouted", 1),
        ("max_body_bytes", 0),
        ("max_header_bytes", 1024),
        ("max_memory", 1024 * 1024),
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
        file = (base_dir / name).absolute()
        if not file.parent.is_dir():
            p.add("tap.file", f"no such folder: {file.parent}")
        else:
            problem = tap_file_problem(file)
            if problem:
                p.add("tap.file", problem)
        if not enabled:
            p.add("tap.file", "records only while the tap is on: set tap.enabled = true too")
    config = TapConfig(
        enabled,
        numbers["keep"],
        numbers["max_body_bytes"],
        file,
        numbers["file_max_bytes"],
        numbers["file_keep"],
        numbers["max_header_bytes"],
        numbers["max_memory"],
        numbers["keep_unrouted"],
    )
    if config.max_memory < config.record_max_bytes:
        p.add(
            "tap.max_memory",
            f"must hold at least one record: {config.record_max_bytes} bytes or more "
            "(2 x max_body_bytes + max_header_bytes + 2048), got "
            f"{config.max_memory}",
        )
    return config


def tap_file_problem(path: Path) -> str | None:
    """Why the recording file at ``path`` must not be written, or None. The file is opened
    with O_NOFOLLOW as well (``proxy.tap.recorder``); this says so before the port is bound."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be checked: {e.strerror}"
    if stat.S_ISLNK(found.st_mode):
        return f"{path} is a symbolic link: name the file itself"
    if not stat.S_ISREG(found.st_mode):
        return f"{path} is not a regular file"
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid is not None and found.st_uid != uid:
        return (
            f"{path} belongs to another user (uid {found.st_uid}): the tap writes only its own file"
        )
    return None
