"""Resend and edit-and-resend: a captured request sent through the proxy again, as a new
exchange the tap links to the original.

The request goes to the listener the tap's page was served from (its own socket address), so
it passes the guard, the route's policy and the forwarder like any other: it is made *as the
person resending* (the credential their own request to the tap carried: an ``admin = true``
client's key, a member's token, or nothing on loopback without ``[access]``), never with the
original client's key, which the tap never kept.

- **Resend** uses the request as captured, unredacted (it never leaves the proxy): method,
  path and query, the client's headers, and the body, which must have been captured whole.
  It never sends the original client's credentials under the resender's identity: every
  header the redactor treats as a credential, by name (``sensitive_key``) or by value
  (``redact_text`` would change it), and ``Cookie`` are left out (:func:`left_out` names them,
  so the page can say so and they can be typed in Edit and resend); a path or query holding
  a credential (``sig=``...) is refused (``409 not_resendable``): type it in Edit and resend.
- **Edit and resend** takes a JSON object from the page: ``method``, ``target``, ``headers``
  (``[[name, value], ...]``) and ``body`` (text); a key left out (or ``null``) keeps the
  captured value, so editing the path alone keeps the unredacted headers and body.

Cross-site requests cannot trigger either: the page sets ``X-PPProxy-Tap: resend`` (a header
no other site's page can add without a CORS preflight, which the proxy never grants), and an
``Origin`` or ``Sec-Fetch-Site`` header, when present, must say the same origin. The target
must be inside a route (never under ``/_proxy``).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, NamedTuple
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .. import access, paths, request_id
from ..errors import (
    BadRequest,
    CrossSiteRequest,
    NoRoute,
    NotResendable,
    UpstreamUnreachable,
)
from ..peers import is_loopback
from ..redaction import redact_text, sensitive_key
from ..state import State
from .capture import resendable
from .kept import Captured
from .snippets import CONNECTION_AND_CREDENTIALS

HEADER = "X-PPProxy-Tap"
VALUE = "resend"
_MAX_FORM = 8 * 1024 * 1024  # an edited request, as JSON: bounded, like every body read here
_MAX_HEADERS = 200
_ERROR_HEAD = 4096  # bytes of a JSON answer kept: the proxy's own errors are far shorter
_WAIT = 10.0  # seconds to wait for the new exchange to be captured after its answer ended
_METHOD = re.compile(r"^[A-Z][A-Z0-9-]{0,31}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.1 field-name
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Not copied from the captured request: the connection's headers, the client's credentials
# (the resend carries the resender's), and its request id (the new exchange gets its own).
_DROP = CONNECTION_AND_CREDENTIALS | {request_id.HEADER}
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class Answer(NamedTuple):
    status: int
    head: bytes  # up to _ERROR_HEAD bytes of a JSON answer, else empty


def refusal(answer: Answer) -> web.Response:
    """The guard's refusal of a resend, as the proxy answered it (status and JSON error)."""
    return web.Response(status=answer.status, body=answer.head, content_type="application/json")


def check_same_origin(request: web.Request) -> None:
    """403 ``cross_site_request`` unless the page's header is there and nothing says the
    request comes from another origin."""
    if request.headers.get(HEADER, "").strip().lower() != VALUE:
        raise CrossSiteRequest(
            f"a resend needs the header {HEADER}: {VALUE} (the tap page sets it)"
        )
    origin = request.headers.get("Origin")
    if origin is not None and _netloc(origin) != request.host.lower():
        raise CrossSiteRequest("a resend must come from the tap page itself")
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if site not in ("", "same-origin", "none"):
        raise CrossSiteRequest("a resend must come from the tap page itself")


def _netloc(origin: str) -> str:
    try:
        url = URL(origin)
    except ValueError:
        return ""
    if url.host is None:
        return ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return (host if url.is_default_port() else f"{host}:{url.port}").lower()


async def read_edit(request: web.Request) -> dict[str, Any]:
    """The edited request the page sent (``{}`` for a plain resend)."""
    data = await request.content.read(_MAX_FORM + 1)
    if len(data) > _MAX_FORM:
        raise BadRequest(f"the edited request is over {_MAX_FORM} bytes")
    if not data.strip():
        return {}
    try:
        edit = json.loads(data)
    except ValueError as e:
        raise BadRequest("the edited request is not JSON") from e
    if not isinstance(edit, dict):
        raise BadRequest("the edited request must be a JSON object")
    return edit


def _credential_header(name: str, value: str) -> bool:
    lower = name.lower()
    return lower == "cookie" or sensitive_key(name) or redact_text(value) != value


def left_out(captured: Captured) -> list[str]:
    """The captured headers a resend leaves out as the original client's credentials (besides
    ``Authorization`` and ``X-Api-Key``, which are never kept or sent), in captured order."""
    names: list[str] = []
    for name, value in captured.exchange.client_headers.items():
        if name.lower() not in _DROP and _credential_header(name, value) and name not in names:
            names.append(name)
    return names


def outgoing(
    captured: Captured, edit: dict[str, Any]
) -> tuple[str, str, list[tuple[str, str]], bytes | None]:
    """Method, target, headers and body to send: the captured ones, with the edits. Captured
    headers and a captured target go without the original client's credentials (see the
    module docstring); what the edit gives is sent as typed."""
    exchange = captured.exchange
    method = edit.get("method") or exchange.method
    target = edit.get("target")
    if not target:
        target = exchange.target
        if isinstance(target, str) and redact_text(target) != target:
            raise NotResendable(
                "the path or query holds a credential of the original client: it is not "
                "resent under your identity; use Edit and resend and type the one to send"
            )
    if not isinstance(method, str) or not _METHOD.match(method):
        raise BadRequest("method: an HTTP method in capitals, such as GET or PATCH")
    if not isinstance(target, str) or not target.startswith("/") or _BAD_VALUE.search(target):
        raise BadRequest("target: a path (and query) starting with /")
    if any(c in target for c in " \t"):
        raise BadRequest("target: spaces must be percent-encoded (%20)")
    given = edit.get("headers")
    if given is None and captured.headers_cut:
        raise NotResendable(
            "the headers were cut at tap.max_header_bytes: send them with Edit and resend"
        )
    if given is None:
        headers = [
            (k, v) for k, v in exchange.client_headers.items() if not _credential_header(k, v)
        ]
    elif isinstance(given, list) and len(given) <= _MAX_HEADERS:
        headers = []
        for pair in given:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and all(isinstance(x, str) for x in pair)
                and _TOKEN.match(pair[0])
                and not _BAD_VALUE.search(pair[1])
            ):
                raise BadRequest("headers: [name, value] pairs, a value on one line")
            headers.append((pair[0], pair[1]))
    else:
        raise BadRequest(f"headers: a list of at most {_MAX_HEADERS} [name, value] pairs")
    headers = [(k, v) for k, v in headers if k.lower() not in _DROP]
    text = edit.get("body")
    if text is not None:
        if not isinstance(text, str):
            raise BadRequest("body: text")
        body: bytes | None = text.encode("utf-8")
    else:
        if not resendable(exchange):
            raise NotResendable(
                "the body was not captured whole (over tap.max_body_bytes, or never read): "
                "it cannot be sent again as it was; use Edit and resend with a body of your own"
            )
        capture = exchange.request_capture
        body = bytes(capture.data) if capture is not None else b""
    return method, target, headers, (body or None)


def check_inside_route(request: web.Request, state: State, target: str) -> None:
    """404 ``no_route`` unless a route takes ``target`` on the listener the page came from."""
    path = target.split("?", 1)[0]
    if paths.is_reserved(unquote(path)):
        raise NoRoute("a resend goes to a route, never to the proxy's own endpoints")
    port = _own_address(request)[1]
    if any(r.port == port for r in state.config.routes):
        return  # a route's own listener: every path there is that route's
    if state.resolver.route_for(path) is None:
        raise NoRoute(f"no route takes {path[:200]}")


async def send(
    request: web.Request,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    *,
    new_id: str,
    read_timeout: float,
) -> Answer:
    """Send the request to this listener; read (and drop) the answer: its status, and the
    first bytes of a JSON answer (the proxy's error, when the guard refused it)."""
    host, port = _own_address(request)
    tls = request.transport is not None and (
        request.transport.get_extra_info("sslcontext") is not None
    )
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = URL(f"{'https' if tls else 'http'}://{netloc}{target}", encoded=True)
    out = CIMultiDict(headers)
    out["Host"] = request.host
    out[request_id.HEADER] = new_id
    credential = request.get(access.CREDENTIAL)
    if credential is not None:
        out[credential[0]] = credential[1]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
    try:
        async with (
            aiohttp.ClientSession(
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=_NO_AUTO_HEADERS,
                timeout=timeout,
            ) as session,
            session.request(
                method,
                url,
                headers=out,
                data=body,
                allow_redirects=False,
                # The proxy's own listener, at the address it accepted this request on.
                ssl=not tls,  # verification off for TLS: it is this very socket
            ) as answer,
        ):
            head = b""
            keep = _ERROR_HEAD if answer.content_type == "application/json" else 0
            async for chunk in answer.content.iter_chunked(65536):
                # Streamed through and dropped (the tap keeps what it captures), all but the
                # first bytes of a JSON answer.
                if len(head) < keep:
                    head += chunk[: keep - len(head)]
            return Answer(answer.status, head)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise UpstreamUnreachable(
            f"the resend could not reach this proxy's listener ({type(e).__name__})"
        ) from None


async def wait_for(future: asyncio.Future[int]) -> int | None:
    try:
        return await asyncio.wait_for(asyncio.shield(future), _WAIT)
    except TimeoutError:
        return None


def _own_address(request: web.Request) -> tuple[str, int]:
    """The address this request was accepted on; a wildcard address as loopback."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        raise UpstreamUnreachable("the listener's address is unknown: cannot resend")
    host, port = str(sockname[0]), int(sockname[1])
    if host in ("0.0.0.0", ""):  # noqa: S104 - the wildcard address, read, not bound
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    elif not is_loopback(host) and host.startswith("::ffff:"):
        host = host.removeprefix("::ffff:")
    return host, port
