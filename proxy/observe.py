"""Logging: structlog configuration and the one redaction function everything that prints uses."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

_SENSITIVE_KEY = re.compile(
    r"authorization|cookie|token|secret|password|passwd|api[-_]?key|assertion|credential",
    re.IGNORECASE,
)
# Three base64url segments starting with a JSON header: a JWT, whatever field it sits in.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# "Bearer x", "Basic x" anywhere in free text.
_AUTH_VALUE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Form or query fields that carry credentials (e.g. an identity provider's request body).
_SECRET_FIELD = re.compile(
    r"((?:client_secret|password|client_assertion|access_token|refresh_token)=)[^&\s]+",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
# What every one of the three shapes needs (a JWT's "eyJ", a credential's whitespace after its
# scheme, a field's "="): a value without any of them has nothing to replace.
_MAYBE_CREDENTIAL = re.compile(r"eyJ|[=\s]")

# Keys whose values are counts or metadata about a token, not the token itself.
_SAFE_KEYS = frozenset({"token_source", "token_wait_ms", "expires_in"})


def redact_text(text: str) -> str:
    """``text`` with anything shaped like a credential replaced."""
    if _MAYBE_CREDENTIAL.search(text) is None:  # the common case: nothing to replace
        return text
    text = _JWT.sub(REDACTED, text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, text)


_KEY_VERDICTS: dict[str, bool] = {}  # key -> sensitive; keys repeat, the regex need not


def sensitive_key(key: str) -> bool:
    """Whether a value under ``key`` (a header, field or log key) is a credential by name."""
    verdict = _KEY_VERDICTS.get(key)
    if verdict is None:
        verdict = key not in _SAFE_KEYS and _SENSITIVE_KEY.search(key) is not None
        if len(_KEY_VERDICTS) < 4096:  # client-chosen names (headers) must not grow it forever
            _KEY_VERDICTS[key] = verdict
    return verdict


def redact(value: Any, key: str = "") -> Any:
    """``value`` with credentials removed: by key name, and by shape in every string."""
    if key and sensitive_key(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Header lists arrive as (name, value) pairs: judge the value by the name.
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], str):
            return [value[0], redact(value[1], value[0])]
        return [redact(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


# Fields the proxy fills with values of its own (codes, configured names, clock readings):
# nothing a client or the identity provider wrote can be in them, so they skip the regexes.
# (The request id and the method come from the client: they are still redacted.)
_OWN_FIELDS = frozenset(
    {"event", "level", "timestamp", "route", "error", "token_source", "access_client"}
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
            elif _MAYBE_CREDENTIAL.search(v) is not None:
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

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


class _Lines:
    """A structlog logger that writes each rendered line (bytes) with one ``write`` on the
    stream's file descriptor: no buffering layers, and lines from several workers never
    interleave. A stream without a descriptor (a test's StringIO) gets the text."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None

    def msg(self, line: bytes) -> None:
        if self._fd is None:
            self._stream.write(line.decode() + "\n")
            return
        data = memoryview(line + b"\n")
        while data:
            data = data[os.write(self._fd, data) :]

    info = warning = error = debug = critical = exception = msg


class _Chain:
    """The access events' logger: structlog processors run in order, then one write.

    The same processors and output as structlog's bound loggers, without their per-call
    machinery: the access event is logged for every request, so each microsecond shows."""

    def __init__(self, processors: list[Any], out: _Lines, level: int) -> None:
        self._processors = tuple(processors)
        self._out = out
        self._info = level <= logging.INFO

    def info(self, event: str, **fields: Any) -> None:
        if not self._info:
            return
        fields["event"] = event
        fields["level"] = "info"
        rendered: Any = fields
        for processor in self._processors:
            rendered = processor(None, "info", rendered)
        self._out.msg(rendered)


_ACCESS: Any = None  # set by configure()


def access_log() -> Any:
    """The logger for the per-request access events: the same output as every other event,
    through a short chain prepared by :func:`configure` (no exception formatting)."""
    return _ACCESS if _ACCESS is not None else structlog.get_logger("proxy.access")


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
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Clock(),
        _redact_event,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            _redact_exception,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (not print's two): lines from several workers never interleave.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact_exception,
                renderer,
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
    global _ACCESS
    _ACCESS = (
        _Chain(
            [
                structlog.contextvars.merge_contextvars,
                _Clock(),
                _redact_event,
                structlog.processors.JSONRenderer(serializer=_dumps_bytes),
            ],
            _Lines(stream),
            numeric,
        )
        if json
        else structlog.get_logger("proxy.access")
    )
