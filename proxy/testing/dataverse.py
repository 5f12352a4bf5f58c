"""A local stand-in for a Dataverse environment's Web API, for testing what a proxy sends.

A real aiohttp server on loopback (HTTPS when given an ssl_context) serving
``/api/data/v9.2``, with in-memory tables. It behaves like Dataverse where a proxy can get
things wrong:

- Requests whose Host (or absolute request target) is not the stand-in's own origin are
  refused with 400, and so are ``$batch`` inner requests and ``@odata.bind`` values with an
  absolute URL outside its service root: a proxy must rewrite URLs on the way in.
- Every URL it writes (``@odata.context``, ``@odata.nextLink``, ``OData-EntityId``,
  ``Location``, in batches too) is absolute on its own service root: a proxy must rewrite them
  on the way out.
- Requests without ``Authorization: Bearer ...`` get 401 (unless ``require_token=False``).
- ``throttle()`` answers the next requests with 429, ``Retry-After`` and the service
  protection error body.

What it serves (see ``proxy.testing._odata`` and ``_batch`` for the details): ``POST {set}``,
``GET|PATCH|DELETE {set}({id})``, ``PUT {set}({id})/{column}``, ``GET {set}`` with
``$select``, ``$filter`` (``eq ne gt ge lt le`` joined by ``and``), ``$orderby``, ``$top``,
``$count`` and ``Prefer: odata.maxpagesize``; ``Prefer: return=representation``;
``POST $batch`` with change sets, ``Content-ID`` references and
``Prefer: odata.continue-on-error``; ``GET WhoAmI``; and the ``EntityDefinitions`` lookups
Microsoft's Python SDK makes before it writes. Each table ``x`` has entity set ``xs`` and
primary key ``xid``.
"""

from __future__ import annotations

import copy
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from proxy.testing._batch import BatchRunner, Item, locate, read_batch
from proxy.testing._odata import API_PATH, Reply, Tables, error_reply, json_reply, not_based_on
from proxy.testing._query import QUERY_CODE, ODataError, preferences
from proxy.testing._server import LocalServer

DEFAULT_TABLES = ("account", "contact", "systemuser")
MAX_BODY = 32 * 1024 * 1024
ThrottleReason = Literal["requests", "execution-time", "concurrency"]
_AUTHORIZE = "https://login.microsoftonline.com/common/oauth2/authorize"

# Service protection API limits: the Web API error codes and messages per limit.
_LIMITS: dict[str, tuple[str, str]] = {
    "requests": (
        "0x80072322",
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    ),
    "execution-time": (
        "0x80072321",
        "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds"
        " over time window of 300 seconds. Decrease number of concurrent requests or reduce the"
        " duration of requests and try again later.",
    ),
    "concurrency": ("0x80072326", "Number of concurrent requests exceeded the limit of 52"),
}


@dataclass(frozen=True, slots=True)
class InnerRequest:
    """One request inside a recorded ``$batch``; ``changeset`` numbers its change set from 1."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)
    content_id: str | None
    changeset: int | None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received: ``body`` holds at most the first ``max_recorded_body`` bytes
    of ``body_size``; ``arrived`` is ``time.monotonic()`` when the handler started."""

    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)
    body_size: int
    arrived: float
    inner: tuple[InnerRequest, ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(slots=True)
class Throttle:
    """A rule made by ``DataverseUpstream.throttle``; ``refused`` counts the 429s it sent."""

    remaining: int
    retry_after: int
    method: str | None
    path: str | None
    reason: ThrottleReason
    refused: int = 0

    def applies(self, method: str, path: str) -> bool:
        """Whether a request (path below the service root) is still to be refused."""
        if self.remaining <= 0 or (self.method is not None and self.method != method):
            return False
        return self.path is None or path.startswith(self.path)


class DataverseUpstream(LocalServer):
    """Dataverse stand-in on loopback; use as ``async with DataverseUpstream() as dv:``.

    ``requests`` records every request on arrival (batches with their inner requests).
    ``dop_hint`` adds ``x-ms-dop-hint`` (the suggested degree of parallelism) to every answer.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tables: Iterable[str] = DEFAULT_TABLES,
        require_token: bool = True,
        dop_hint: int | None = None,
        max_recorded_body: int = 64 * 1024,
    ) -> None:
        super().__init__(host=host, port=port, ssl_context=ssl_context)
        if dop_hint is not None and dop_hint < 1:
            raise ValueError("dop_hint must be at least 1")
        if max_recorded_body < 0:
            raise ValueError("max_recorded_body must not be negative")
        self.requests: list[RecordedRequest] = []
        self.require_token = require_token
        self.dop_hint = dop_hint
        self._max_recorded_body = max_recorded_body
        self._tables = Tables(tables)
        self._throttles: list[Throttle] = []

    def _make_runner(self, shutdown_timeout: float) -> web.BaseRunner:
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        return web.ServerRunner(server, shutdown_timeout=shutdown_timeout)

    @property
    def url(self) -> str:
        """The origin, ``http://127.0.0.1:PORT`` or ``https://...``; valid after start()."""
        return self.base_url

    @property
    def service_root(self) -> str:
        """``{url}/api/data/v9.2``, the base of every URL the stand-in writes."""
        return self.base_url + API_PATH

    def add(self, entity_set: str, record: Mapping[str, Any]) -> str:
        """Store a record directly (nothing is recorded) and return its id."""
        return self._tables.insert(self.service_root, entity_set, dict(record))

    def records(self, entity_set: str) -> dict[str, dict[str, Any]]:
        """A copy of an entity set's records by id."""
        return copy.deepcopy(self._tables.rows[entity_set])

    def throttle(
        self,
        count: int,
        *,
        retry_after: int = 2,
        method: str | None = None,
        path: str | None = None,
        reason: ThrottleReason = "requests",
    ) -> Throttle:
        """Answer the next ``count`` requests with 429 and ``Retry-After: retry_after``.

        ``method`` and ``path`` narrow it to matching requests; ``path`` is a prefix of the
        path below the service root (``"accounts"``, ``"$batch"``). ``$batch`` inner requests
        are not throttled one by one. ``reason`` picks the limit reported (requests,
        execution-time, concurrency).
        """
        if count < 0 or retry_after < 0:
            raise ValueError("count and retry_after must not be negative")
        rule = Throttle(count, retry_after, method.upper() if method else None, path, reason)
        self._throttles.append(rule)
        return rule

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.monotonic()
        body, size = await _read(request)
        items: list[Item] = []
        refusal: ODataError | None = None
        if request.method == "POST" and request.raw_path.partition("?")[0].endswith("/$batch"):
            try:
                items = read_batch(body, request.headers.get("Content-Type", ""))
            except ODataError as error:
                refusal = error
        self.requests.append(self._record(request, body, size, arrived, items))
        reply = self._answer(request, body, size, items, refusal)
        headers = [("OData-Version", "4.0"), *reply.headers]
        if self.dop_hint is not None:
            headers.append(("x-ms-dop-hint", str(self.dop_hint)))
        return web.Response(status=reply.status, headers=headers, body=reply.body or None)

    def _answer(
        self,
        request: web.BaseRequest,
        body: bytes,
        size: int,
        items: list[Item],
        refusal: ODataError | None,
    ) -> Reply:
        root = self.service_root
        if size > len(body):
            return error_reply(ODataError(413, QUERY_CODE, "The request body is too large."))
        if request.host.lower() != self.base_url.partition("://")[2].lower():
            address = f"{self.base_url.partition('://')[0]}://{request.host}{request.raw_path}"
            return error_reply(not_based_on(address, root))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if self.require_token and (scheme.lower() != "bearer" or not token.strip()):
            challenge = f"Bearer authorization_uri={_AUTHORIZE}, resource_id={self.url}/"
            return Reply(401, (("WWW-Authenticate", challenge),))
        try:
            path, query = locate(request.raw_path, self.url, root)
        except ODataError as error:
            # Outside /api/data/v9.2 (for an origin-form target) is simply not found.
            return error_reply(error if "://" in request.raw_path else _not_found(request.raw_path))
        rule = next((t for t in self._throttles if t.applies(request.method, path)), None)
        if rule is not None:
            rule.remaining, rule.refused = rule.remaining - 1, rule.refused + 1
            code, message = _LIMITS[rule.reason]
            retry = (("Retry-After", str(rule.retry_after)),)
            return json_reply(429, {"error": {"code": code, "message": message}}, retry)
        if path == "$batch" and request.method == "POST":
            if refusal is not None:
                return error_reply(refusal)
            runner = BatchRunner(self._tables, self.url, root)
            go_on = "odata.continue-on-error" in preferences(request.headers)
            status, content_type, answer = runner.run(items, continue_on_error=go_on)
            applied = (("Preference-Applied", "odata.continue-on-error"),) if go_on else ()
            return Reply(status, (("Content-Type", content_type), *applied), answer)
        return self._tables.execute(root, request.method, path, query, request.headers, body)

    def _record(
        self, request: web.BaseRequest, body: bytes, size: int, arrived: float, items: list[Item]
    ) -> RecordedRequest:
        limit = self._max_recorded_body
        inner = tuple(
            InnerRequest(
                op.request.method,
                op.request.target,
                op.request.headers,
                op.request.body[:limit],
                op.content_id,
                op.changeset,
            )
            for item in items
            for op in (item if isinstance(item, list) else [item])
        )
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
        return RecordedRequest(
            request.method, request.raw_path, headers, body[:limit], size, arrived, inner
        )


async def _read(request: web.BaseRequest) -> tuple[bytes, int]:
    """The body (at most MAX_BODY bytes kept) and its full size."""
    kept = bytearray()
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if len(kept) < MAX_BODY:
            kept += chunk[: MAX_BODY - len(kept)]
    return bytes(kept), size


def _not_found(target: str) -> ODataError:
    return ODataError(404, QUERY_CODE, f"Resource not found for the segment '{target}'.")
