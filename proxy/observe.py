"""Logging: structlog configuration and the one redaction function everything that prints uses."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

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

# Keys whose values are counts or metadata about a token, not the token itself.
_SAFE_KEYS = frozenset({"token_source", "token_wait_ms", "expires_in"})


def redact_text(text: str) -> str:
    """``text`` with anything shaped like a credential replaced."""
    text = _JWT.sub(REDACTED, text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, text)


def redact(value: Any, key: str = "") -> Any:
    """``value`` with credentials removed: by key name, and by shape in every string."""
    if key and key not in _SAFE_KEYS and _SENSITIVE_KEY.search(key):
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
_OWN_FIELDS = frozenset({"event", "level", "timestamp", "route", "error", "token_source"})
_PLAIN = (int, float, bool, type(None))


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in event.items():
        if k == "exc_info" or isinstance(v, _PLAIN) or (k in _OWN_FIELDS and isinstance(v, str)):
            continue
        event[k] = redact(v, k)
    return event


def _redact_exception(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if "exception" in event:
        event["exception"] = redact_text(str(event["exception"]))
    return event


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
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
