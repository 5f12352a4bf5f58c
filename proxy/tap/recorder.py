"""``[tap] file``: every exchange appended as one JSON line, rotated at a size limit.

Records are rendered (redacted, serialised) and written in a worker thread fed by one background
task, so neither a slow disk nor the rendering stalls the event loop. Rotation is the logrotate
scheme: ``file`` -> ``file.1`` -> ... -> ``file.N``, the oldest dropped. The file holds
traffic: it is opened with ``O_NOFOLLOW`` (a symbolic link planted at its name is refused, not
followed), created readable by its owner only (0600, whatever the umask), an existing one
narrowed to 0600, and one that is not a regular file or belongs to another user is refused.
It is opened with ``O_NONBLOCK`` (cleared once it is known to be a regular file), at start and
at every rotation, so a FIFO planted at its name is refused instead of blocking the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import IO

import orjson
import structlog

from ..config.tap import TapConfig
from .capture import record
from .kept import Captured

log = structlog.get_logger("proxy.tap")
# O_NOFOLLOW, O_NONBLOCK and O_CLOEXEC are POSIX; where they do not exist (Windows) the checks
# at load stand. O_NONBLOCK only for the open and the checks: a FIFO planted at the name would
# otherwise block the open until a reader comes (ENXIO instead, or a non-regular file refused).
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_FLAGS = (
    os.O_WRONLY
    | os.O_APPEND
    | os.O_CREAT
    | _NONBLOCK
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class TapFileError(OSError):
    """The recording file must not be written (see the module docstring)."""


_BACKLOG = 10_000  # lines waiting for the disk before new ones are dropped (and counted)


class Recorder:
    def __init__(self, config: TapConfig) -> None:
        assert config.file is not None
        self.path: Path = config.file
        self._max_bytes = config.file_max_bytes
        self._keep = config.file_keep
        self._queue: asyncio.Queue[Captured | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self.dropped = 0
        # Records waiting for the disk count against tap.max_memory too (a slow disk must not
        # grow the process): over it, new lines are dropped and counted.
        self._max_pending = config.max_memory
        self._pending = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(_BACKLOG)
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._run(), name="tap-recorder")
        log.info("tap.recording", file=str(self.path))

    def submit(self, captured: Captured) -> None:
        if self._queue is None:
            return
        if self._pending + captured.cost > self._max_pending:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(captured)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        self._pending += captured.cost

    async def close(self) -> None:
        """Write what is queued, then close the file."""
        if self._queue is None or self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._queue = None
        if self.dropped:
            log.warning("tap.lines_dropped", file=str(self.path), dropped=self.dropped)

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            lines = [await self._queue.get()]
            while not self._queue.empty() and lines[-1] is not None:
                lines.append(self._queue.get_nowait())
            done = lines[-1] is None
            batch = [c for c in lines if c is not None]
            try:
                await asyncio.to_thread(self._write, batch)
            except OSError as e:
                log.error("tap.write_failed", file=str(self.path), error=e.strerror or str(e))
            self._pending -= sum(c.cost for c in batch)
            if done:
                await asyncio.to_thread(self._close)
                return

    def _open(self) -> None:
        try:
            fd = os.open(self.path, _FLAGS, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
                raise TapFileError(f"{self.path} is a symbolic link") from None
            if e.errno == errno.ENXIO:  # O_NONBLOCK met a FIFO with no reader
                raise TapFileError(f"{self.path} is not a regular file") from None
            raise
        try:
            found = os.fstat(fd)  # the file opened, not whatever the name points at by now
            if not stat.S_ISREG(found.st_mode):
                raise TapFileError(f"{self.path} is not a regular file")
            if hasattr(os, "geteuid") and found.st_uid != os.geteuid():
                raise TapFileError(f"{self.path} belongs to another user (uid {found.st_uid})")
            if found.st_mode & 0o077:
                os.fchmod(fd, 0o600)
            if _NONBLOCK:  # a regular file: writes are plain blocking writes again
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "ab")
        self._size = self._file.tell()

    def _write(self, batch: list[Captured]) -> None:
        for captured in batch:
            line = orjson.dumps(record(captured)) + b"\n"
            if self._file is None:  # an open refused at the last rotation: try the name again
                self._open()
            elif self._size and self._size + len(line) > self._max_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._size += len(line)
        if self._file is not None:
            self._file.flush()

    def _rotate(self) -> None:
        self._close()
        if self._keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self._keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
