"""Dataverse ``$batch``: reading the request into operations, running them in order against
``Tables``, and writing the ``multipart/mixed`` answer.

Follows learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-
using-web-api and OData 4.0 Part 1 section 11.7: inner URLs are absolute (on the service root),
path-absolute (``/api/data/v9.2/...``) or relative to the service root; ``$n`` names the URL of
the record made by the change-set request with ``Content-ID: n``; change sets are atomic; the
first failure stops the batch unless ``Prefer: odata.continue-on-error``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from multidict import CIMultiDict

from proxy.testing._multipart import (
    HttpRequest,
    MultipartError,
    Part,
    boundary_of,
    parse_request,
    render_multipart,
    render_response,
    split_parts,
)
from proxy.testing._odata import API_PATH, Reply, Tables, error_reply, not_based_on
from proxy.testing._query import QUERY_CODE, ODataError

MAX_REQUESTS = 1000  # Dataverse's limit per batch
_REFERENCE = re.compile(r"\$(\w+)(.*)", re.DOTALL)
_PART_HEADERS = (("Content-Type", "application/http"), ("Content-Transfer-Encoding", "binary"))


@dataclass(frozen=True, slots=True)
class Operation:
    """One inner request; ``changeset`` numbers its change set (from 1) or is None."""

    request: HttpRequest
    content_id: str | None
    changeset: int | None


Item = Operation | list[Operation]  # a list is one change set


def read_batch(body: bytes, content_type: str) -> list[Item]:
    """The operations of a batch body in order; ODataError (400) if it is malformed."""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise _malformed("a $batch request needs Content-Type: multipart/mixed; boundary=...")
    items: list[Item] = []
    changesets = 0
    try:
        for part in split_parts(body, boundary):
            inner = boundary_of(part.header("Content-Type") or "")
            if inner is None:
                items.append(_operation(part, None))
                continue
            changesets += 1
            changeset = [_operation(p, changesets) for p in split_parts(part.body, inner)]
            if any(operation.request.method == "GET" for operation in changeset):
                raise _malformed("GET requests are not allowed in change sets.")
            items.append(changeset)
    except MultipartError as error:
        raise _malformed(str(error)) from None
    count = sum(len(item) if isinstance(item, list) else 1 for item in items)
    if count > MAX_REQUESTS:
        raise _malformed(f"The batch holds {count} requests; the limit is {MAX_REQUESTS}.")
    return items


def locate(target: str, origin: str, root: str) -> tuple[str, str]:
    """(path below the service root, percent-decoded; raw query) for a request target, or
    ODataError (400) when the target is not on ``origin`` + ``API_PATH``."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        on_origin = f"{parts.scheme}://{parts.netloc}".lower() == origin.lower()
        path = parts.path if on_origin else ""
    else:
        path = parts.path if parts.path.startswith("/") else f"{API_PATH}/{parts.path}"
    if not path.startswith(API_PATH + "/"):
        raise not_based_on(target, root)
    return unquote(path.removeprefix(API_PATH + "/")), parts.query


class BatchRunner:
    """Runs the items of one batch against ``tables`` and renders the answer."""

    def __init__(self, tables: Tables, origin: str, root: str) -> None:
        self._tables, self._origin, self._root = tables, origin, root

    def run(self, items: list[Item], *, continue_on_error: bool) -> tuple[int, str, bytes]:
        """(status, Content-Type, body) of the batch response."""
        status, parts = 200, []
        for item in items:
            if isinstance(item, list):
                part, failed = self._changeset(item)
            else:
                reply = self._one(item, {})
                part, failed = _http_part(reply, None), reply if reply.status >= 400 else None
            parts.append(part)
            if failed is not None and not continue_on_error:
                # "The batch error represents the error of the first failing request."
                status = failed.status
                break
        boundary = f"batchresponse_{uuid.uuid4()}"
        return status, f"multipart/mixed; boundary={boundary}", render_multipart(parts, boundary)

    def _changeset(self, operations: list[Operation]) -> tuple[Part, Reply | None]:
        snapshot = self._tables.snapshot()
        references: dict[str, str] = {}
        answered: list[Part] = []
        for operation in operations:
            reply = self._one(operation, references)
            part = _http_part(reply, operation.content_id)
            if reply.status >= 400:
                # All or nothing: undo the change set and answer only the failure, as
                # Dataverse does.
                self._tables.restore(snapshot)
                return _changeset_part([part]), reply
            answered.append(part)
            if operation.content_id is not None and reply.entity_url is not None:
                references[operation.content_id] = reply.entity_url
        return _changeset_part(answered), None

    def _one(self, operation: Operation, references: dict[str, str]) -> Reply:
        request = operation.request
        try:
            target = _dereference(request.target, references)
            path, query = locate(target, self._origin, self._root)
            if path == "$batch":
                raise _malformed("A batch cannot contain another batch.")
            body = _bind_references(request.body, references)
        except ODataError as error:
            return error_reply(error)
        headers = CIMultiDict(request.headers)
        return self._tables.execute(self._root, request.method, path, query, headers, body)


def _operation(part: Part, changeset: int | None) -> Operation:
    # Microsoft.OData's batch reader checks these part headers, in these words.
    content_type = part.header("Content-Type") or ""
    if content_type.partition(";")[0].strip().lower() != "application/http":
        if changeset is not None and boundary_of(content_type) is not None:
            raise _malformed("Nested change sets in a batch payload are not supported.")
        raise _malformed(
            f"The 'Content-Type' header value '{content_type}' is invalid. When this is the start"
            " of the change set, the value must be 'multipart/mixed'; otherwise it must be"
            " 'application/http'."
        )
    if (part.header("Content-Transfer-Encoding") or "").lower() != "binary":
        raise _malformed(
            "A missing or invalid 'Content-Transfer-Encoding' header was found. The"
            " 'Content-Transfer-Encoding' header must be specified for each batch operation, and"
            " its value must be 'binary'."
        )
    return Operation(parse_request(part.body), part.header("Content-ID"), changeset)


def _dereference(target: str, references: dict[str, str]) -> str:
    match = _REFERENCE.fullmatch(target)
    if match is None:
        return target
    if match.group(1) not in references:
        message = f"Content-ID Reference: '${match.group(1)}' does not exist in the batch context."
        raise ODataError(400, QUERY_CODE, message)
    return references[match.group(1)] + match.group(2)


def _bind_references(body: bytes, references: dict[str, str]) -> bytes:
    """The body with ``"x@odata.bind": "$n"`` values replaced by the URLs they name."""
    if b"$" not in body:
        return body
    try:
        payload = json.loads(body)
    except ValueError:
        return body  # left for the table to refuse
    if not isinstance(payload, dict):
        return body
    for name, value in payload.items():
        if name.endswith("@odata.bind") and isinstance(value, str) and value.startswith("$"):
            payload[name] = _dereference(value, references)
    return json.dumps(payload).encode()


def _http_part(reply: Reply, content_id: str | None) -> Part:
    headers = [("OData-Version", "4.0")]
    entity = next((v for k, v in reply.headers if k == "OData-EntityId"), None)
    if entity is not None:
        # Inside a batch Dataverse sends Location as well as OData-EntityId.
        headers.append(("Location", entity))
    headers += reply.headers
    part_headers = (
        _PART_HEADERS if content_id is None else (*_PART_HEADERS, ("Content-ID", content_id))
    )
    return Part(part_headers, render_response(reply.status, headers, reply.body))


def _changeset_part(parts: list[Part]) -> Part:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    content_type = f"multipart/mixed; boundary={boundary}"
    return Part((("Content-Type", content_type),), render_multipart(parts, boundary))


def _malformed(message: str) -> ODataError:
    return ODataError(400, QUERY_CODE, message)
