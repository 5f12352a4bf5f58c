"""An exchange's request as a command to run again: curl (POSIX shell) and PowerShell's
``Invoke-RestMethod``.

The command calls the *proxy* (its address and the path the client used), never the upstream,
so the proxy adds the token as it did the first time. It carries the headers the client sent,
redacted, less those the connection owns (``Host``, ``Content-Length``, hop-by-hop) and less
every credential (``Authorization``, ``X-Api-Key``, ``Cookie``): when the gateway needs a key,
the placeholder ``$PPPROXY_KEY`` stands in its place (``$PPPROXY_TOKEN``, as a Bearer token, when a
signed-in member sent the request), read from the environment: ``$env:PPPROXY_KEY`` in
PowerShell. A HEAD request is ``curl -I``. The body is included when it was
captured whole and is text (redacted as the tap shows it); otherwise a comment says why not.
"""

from __future__ import annotations

from typing import Protocol

from ..headers import HOP_BY_HOP
from .capture import Record

# Headers a copied or resent request never takes from the captured one: the connection's own,
# and the client's credentials (a copy gets a placeholder, a resend the resender's).
CONNECTION_AND_CREDENTIALS = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "authorization",
    "x-api-key",
}
_LEFT_OUT = CONNECTION_AND_CREDENTIALS | {"cookie"}  # a command is pasted elsewhere: no cookie
KEY_PLACEHOLDER = "$PPPROXY_KEY"
TOKEN_PLACEHOLDER = "$PPPROXY_TOKEN"  # noqa: S105 - a placeholder, named in the docs


def _credential(record: Record, env: str = "$") -> tuple[str, str]:
    """The header a gateway needs, with its placeholder (``env``: how the shell names an
    environment variable, ``$`` in POSIX shells, ``$env:`` in PowerShell)."""
    if record.get("caller"):
        return "Authorization", f"Bearer {env}{TOKEN_PLACEHOLDER[1:]}"
    return "X-Api-Key", env + KEY_PLACEHOLDER[1:]


class Render(Protocol):
    def __call__(self, record: Record, base: str, *, needs_key: bool, text: str | None) -> str: ...


def client_headers(record: Record) -> list[tuple[str, str]]:
    """The client's headers (redacted) a command or an edit form starts from."""
    return [(k, v) for k, v in record["client_headers"] if k.lower() not in _LEFT_OUT]


def body_text(record: Record, text: str | None) -> tuple[str | None, str | None]:
    """The body to put in a command, or why there is none: ``(text, None)`` or
    ``(None, reason)``; ``(None, None)`` when the request had no body."""
    body = record["request_body"]
    if not body["size"]:
        return None, None
    if body.get("binary"):
        return None, f"the binary body ({body['size']} bytes) is not included"
    if body["truncated"] or text is None:
        return None, f"only the first bytes of the {body['size']}-byte body were captured"
    return text, None


def curl(record: Record, base: str, *, needs_key: bool, text: str | None) -> str:
    """A curl command line (POSIX shell quoting)."""
    body, why = body_text(record, text)
    method = record["method"]
    lines = []
    if why:
        lines.append(f"# {why}")
    first = "curl"
    if method == "HEAD":
        # -X HEAD would wait for a body that never comes; -I asks for the head only (and
        # cannot send a body, which a HEAD request has no use for).
        first += " -I"
        if body is not None:
            lines.append("# the body of this HEAD request is not sent (curl -I sends none)")
            body = None
    elif method != "GET" and not (method == "POST" and body is not None):
        first += f" -X {method}"
    first += " " + _sh(base + record["target"])
    parts = [first]
    parts += [f"-H {_sh(f'{k}: {v}')}" for k, v in client_headers(record)]
    if needs_key:
        name, value = _credential(record)
        parts.append(f'-H "{name}: {value}"')
    if body is not None:
        parts.append(f"--data-binary {_sh(body)}")
    lines.append(" \\\n  ".join(parts))
    return "\n".join(lines) + "\n"


def powershell(record: Record, base: str, *, needs_key: bool, text: str | None) -> str:
    """An ``Invoke-RestMethod`` command (PowerShell 5.1 and 7)."""
    body, why = body_text(record, text)
    lines = []
    if why:
        lines.append(f"# {why}")
    parts = [f"Invoke-RestMethod -Method {record['method']} -Uri {_ps(base + record['target'])}"]
    headers: list[str] = []
    content_type = user_agent = None
    for name, value in client_headers(record):
        # Both versions refuse these two in -Headers; they have parameters of their own.
        if name.lower() == "content-type":
            content_type = value
        elif name.lower() == "user-agent":
            user_agent = value
        else:
            headers.append(f"{_ps(name)} = {_ps(value)}")
    if needs_key:
        name, value = _credential(record, "$env:")
        headers.append(f'{_ps(name)} = "{value}"' if " " in value else f"{_ps(name)} = {value}")
    if headers:
        parts.append("-Headers @{ " + "; ".join(headers) + " }")
    if content_type is not None:
        parts.append(f"-ContentType {_ps(content_type)}")
    if user_agent is not None:
        parts.append(f"-UserAgent {_ps(user_agent)}")
    if body is not None:
        parts.append(f"-Body {_ps(body)}")
    lines.append(" `\n  ".join(parts))
    return "\n".join(lines) + "\n"


def _sh(text: str) -> str:
    """POSIX single quotes: nothing inside is special, a quote is closed, escaped, reopened."""
    return "'" + text.replace("'", "'\\''") + "'"


def _ps(text: str) -> str:
    """PowerShell single quotes: nothing inside is special but the quote itself, doubled (the
    typographic single quotes count as quotes too)."""
    for quote in ("'", "\u2018", "\u2019", "\u201a", "\u201b"):
        text = text.replace(quote, quote * 2)
    return "'" + text + "'"
