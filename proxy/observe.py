"""Logging: structlog configuration, the access log's writer, and redaction of every event
(:mod:`proxy.redaction`)."""

from __future__ import annotations

import asyncio
import atexit
import io
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from .redaction import MAYBE_CREDENTIAL, REDACTED, redact, redact_text, sensitive_key

# Fields the proxy fills with values of its own (codes, configured names, clock readings):
# nothing a client or the identity provider wrote can be in them, so they skip the regexes.
# (The request id and the method come from the client: they are still redacted.)
_OWN_FIELDS = frozenset(
    {"event", "level", "timestamp", "route", "error", "token_source", "access_client", "peer"}
)
_PLAIN = (int, float, bool, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in event.items():
        kind = v.__class__
        if kind is str:  # most values: judge by key, then by the cheap shape test
            if k in _OWN_FIELDS:
                continue
            if sensitive_key(k):
                event[k] = REDACTED
            elif MAYBE_CREDENTIAL.search(v) is not None:
                event[k] = redact_text(v)
        elif kind not in _PLAIN_TYPES and k != "exc_info" and not isinstance(v, _PLAIN):
            event[k] = redact(v, k)
    return event


def _redact_exception(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if "exception" in event:
        event["exception"] = redact_text(str(event["exception"]))
    return event


def _dumps(obj: Any, **kw: Any) -> str:
    """JSON for a log line, rendered by orjson (an order of magnitude faster than json)."""
    return orjson.dumps(obj, default=kw.get("default"), option=orjson.OPT_NON_STR_KEYS).decode()


def _dumps_bytes(obj: Any, **kw: Any) -> bytes:
    return orjson.dumps(obj, default=kw.get("default"), option=orjson.OPT_NON_STR_KEYS)


class _Clock:
    """ISO 8601 UTC timestamps with microseconds; the date and time part is formatted once per
    second, not per event."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%06dZ" % (self._prefix, (now - second) * 1_000_000)  # noqa: UP031  # faster

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event["timestamp"] = self.stamp()
        return event


class _Lines:
    """Where rendered JSON lines go: the stream's file descriptor, written without Python's
    buffering layers. On the event loop, the lines of one loop iteration are written together
    after it (under load many requests end in one iteration); a write never exceeds PIPE_BUF,
    so lines from several workers sharing a pipe never interleave. A stream without a
    descriptor (a test's StringIO) gets each line as text at once."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._pending: list[bytes] = []
        self._scheduled = False

    def msg(self, line: bytes) -> None:
        if self._fd is None:
            self._stream.write(line.decode() + "\n")
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # start-up, shutdown, or another thread (MSAL's worker)
            self._write(line + b"\n")
            return
        self._pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)

    info = warning = error = debug = critical = exception = msg

    def flush(self) -> None:
        """Write what is waiting, in whole lines, at most PIPE_BUF bytes per write."""
        self._scheduled = False
        lines, self._pending = self._pending, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) + 1 > _PIPE_BUF:
                self._write(b"\n".join(chunk) + b"\n")
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            self._write(b"\n".join(chunk) + b"\n")

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            pass  # a closed or full stderr must not break the request being logged


_PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic


class _LinesHandler(logging.Handler):
    """Standard-library records (aiohttp, asyncio, msal), formatted by structlog, into the same
    lines as every other event."""

    def __init__(self, lines: _Lines) -> None:
        super().__init__()
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.msg(self.format(record).encode())
        except Exception:  # logging must never raise into the code that logs
            self.handleError(record)


class _Chain:
    """The access events' writer: what structlog's processors would add (the context bound to
    the request, the level, the timestamp), rendered by orjson, then one write.

    Without structlog's per-call machinery, because the access event is logged for every
    request. The caller passes values it produced itself or already redacted; the context's
    values are redacted here."""

    def __init__(self, out: _Lines, level: int) -> None:
        self._out = out
        self._info = level <= logging.INFO
        self._clock = _Clock()

    def write(self, event: str, fields: dict[str, Any]) -> None:
        if not self._info:
            return
        for key, value in structlog.contextvars.get_contextvars().items():
            if value.__class__ is str and key not in _OWN_FIELDS:
                value = redact(value, key)
            fields.setdefault(key, value)
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = self._clock.stamp()
        self._out.msg(orjson.dumps(fields, default=_fallback, option=orjson.OPT_NON_STR_KEYS))


def _fallback(value: Any) -> str:
    return repr(value)


_ACCESS: Any = None  # set by configure() for JSON output


def access(event: str, fields: dict[str, Any]) -> None:
    """Log one access event (``request``, ``request.rejected``): the same output as every
    other event, by the shortest path :func:`configure` prepared. ``fields`` must hold only
    values the proxy produced or passed through :func:`redact_text`; the dict is consumed."""
    if _ACCESS is not None:
        _ACCESS.write(event, fields)
    else:
        structlog.get_logger("proxy.access").info(event, **fields)


class _QuietParserErrors(logging.Filter):
    """aiohttp logs every request it cannot parse at ERROR with a traceback; on a port that
    scanners reach that buries real errors. Such a client error becomes one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "http.malformed_request: %s", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


_QUIET = _QuietParserErrors()


def configure(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
    cache: bool = True,
) -> None:
    """Send structlog and stdlib logs to ``stream`` (stderr), JSON unless it is a terminal.

    ``cache=False`` lets a later call reconfigure loggers already used (tests do that)."""
    global _ACCESS, _WRITER, _CONSOLE
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if _WRITER is not None:
        _WRITER.flush()  # what the previous configuration still holds
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Clock(),
        _redact_event,
    ]
    handler: logging.Handler
    if json:
        _CONSOLE = None
        lines = _WRITER = _Lines(stream)
        renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps_bytes)
        logger_factory: Any = lambda *_: lines  # noqa: E731  # structlog calls it per logger
        handler = _LinesHandler(lines)
        # The stdlib formatter must return text; the same line, decoded.
        formatter_renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps)
        _ACCESS = _Chain(lines, numeric)
    else:
        _WRITER = None
        _CONSOLE = stream
        renderer = formatter_renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        # One write per line (not print's two): lines from several workers never interleave.
        logger_factory = structlog.WriteLoggerFactory(stream)
        handler = logging.StreamHandler(stream)
        _ACCESS = None
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, _redact_exception, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=logger_factory,
        cache_logger_on_first_use=cache,
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact_exception,
                formatter_renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # These libraries log request details at debug level; keep them to what an operator needs.
    for name in ("msal", "urllib3", "asyncio"):
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    server_log = logging.getLogger("aiohttp.server")
    if _QUIET not in server_log.filters:
        server_log.addFilter(_QUIET)
    # aiohttp's own access log is replaced by the proxy's "request" event.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def console() -> TextIO | None:
    """The stream of console output, or None when logs are JSON (or not configured)."""
    return _CONSOLE if _WRITER is None else None


def flush() -> None:
    """Write the log lines still waiting for the end of the event loop's iteration."""
    if _WRITER is not None:
        _WRITER.flush()


_WRITER: _Lines | None = None
_CONSOLE: TextIO | None = None  # the stream of console (not JSON) output, once configured
atexit.register(flush)
