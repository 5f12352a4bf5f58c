"""In-memory tables answering a small part of the Dataverse Web API (OData 4.0).

Each call gets the service root (``https://host/api/data/v9.2``), a path relative to it, the
query string and the request headers, and returns a ``Reply``; HTTP serving and ``$batch`` are
the caller's business. Behaviour follows learn.microsoft.com/power-apps/developer/data-platform/
webapi/ (create, retrieve, update, delete, query, page results), narrowed to what tests need.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from multidict import MultiMapping

from proxy.testing._query import (
    QUERY_CODE,
    ODataError,
    Row,
    context,
    filter_rows,
    guid,
    json_object,
    next_link,
    number,
    options,
    order_rows,
    page_number,
    preferences,
    shape,
)

API_PATH = "/api/data/v9.2"
MAX_PAGE_SIZE = 5000  # Dataverse's largest and default page
JSON_TYPE = "application/json; odata.metadata=minimal"
NOT_FOUND_CODE = "0x80040217"  # Dataverse's ObjectDoesNotExist
_SEGMENT = re.compile(r"([A-Za-z_][\w.]*)(?:\(([^)]*)\))?(?:/(.+))?")


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer: status, headers and body; ``entity_url`` names the record written, if any."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    entity_url: str | None = None


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A JSON answer with Dataverse's Content-Type."""
    body = json.dumps(payload).encode()
    return Reply(status, (("Content-Type", JSON_TYPE), *headers), body)


def error_reply(error: ODataError) -> Reply:
    """The answer for a failure, in Dataverse's error shape."""
    return json_reply(error.status, error.payload())


def not_based_on(url: str, root: str) -> ODataError:
    """The refusal of a URL outside the service root, in Microsoft.OData's words."""
    message = f"The URI '{url}' is not valid because it is not based on '{root}/'."
    return ODataError(400, QUERY_CODE, message)


class Tables:
    """Entity sets of records keyed by GUID; each table ``x`` has set ``xs`` and key ``xid``."""

    def __init__(self, tables: Iterable[str]) -> None:
        self._logical = {f"{name}s": name for name in tables}
        self.rows: dict[str, dict[str, Row]] = {entity_set: {} for entity_set in self._logical}
        self._version = 1000  # versionnumber, which Dataverse turns into @odata.etag

    def key(self, entity_set: str) -> str:
        """The primary key column of an entity set."""
        return f"{self._logical[entity_set]}id"

    def snapshot(self) -> dict[str, dict[str, Row]]:
        """A copy of every record, to undo a change set with ``restore``."""
        return copy.deepcopy(self.rows)

    def restore(self, snapshot: dict[str, dict[str, Row]]) -> None:
        """Put back the records of a ``snapshot``."""
        self.rows = snapshot

    def insert(self, root: str, entity_set: str, record: Row) -> str:
        """Store a new record (its key may be given) and return its id."""
        key = self.key(entity_set)
        record_id = guid(str(record.get(key) or uuid.uuid4()))
        if record_id in self.rows[entity_set]:
            raise ODataError(412, "0x80040237", "A record with matching key values already exists.")
        self._write(root, entity_set, record_id, record, {key: record_id})
        return record_id

    def execute(
        self, root: str, method: str, path: str, query: str, headers: MultiMapping[str], body: bytes
    ) -> Reply:
        """Answer one request; ``path`` is relative to the service root and percent-decoded."""
        call = _Call(root, method, path, options(query), headers, body, preferences(headers))
        try:
            return self._dispatch(call)
        except ODataError as error:
            return error_reply(error)

    def _dispatch(self, call: _Call) -> Reply:
        if call.path in ("WhoAmI", "WhoAmI()") and call.method == "GET":
            return json_reply(200, _who_am_i(call.root))
        match = _SEGMENT.fullmatch(call.path)
        if match is None:
            raise ODataError(404, QUERY_CODE, f"Resource not found for the segment '{call.path}'.")
        name, key, rest = match.groups()
        if name == "EntityDefinitions" and call.method == "GET":
            return self._metadata(call, key, rest)
        if name not in self.rows:
            raise ODataError(404, QUERY_CODE, f"Resource not found for the segment '{name}'.")
        if key is None and rest is None and call.method == "GET":
            return self._list(call, name, list(self.rows[name].values()))
        if key is None and rest is None and call.method == "POST":
            record_id = self.insert(call.root, name, json_object(call.body))
            return self._written(call, name, record_id)
        if key is not None and call.method in ("GET", "PATCH", "PUT", "DELETE"):
            return self._one(call, name, guid(key), rest)
        raise ODataError(405, QUERY_CODE, f"{call.method} is not supported on '{call.path}'.")

    def _one(self, call: _Call, name: str, record_id: str, rest: str | None) -> Reply:
        method, exists = call.method, record_id in self.rows[name]
        if_match = call.headers.get("If-Match")
        if method == "PATCH" and rest is None and not exists and if_match is None:
            # PATCH without If-Match is an upsert: it creates a missing record.
            self.insert(call.root, name, {**json_object(call.body), self.key(name): record_id})
            return self._written(call, name, record_id)
        if not exists:
            message = f"Entity '{name[:-1]}' With Id = {record_id} Does Not Exist"
            raise ODataError(404, NOT_FOUND_CODE, message)
        etag = f'W/"{self.rows[name][record_id].get("versionnumber")}"'
        if method != "GET" and if_match not in (None, "*", etag):
            # Optimistic concurrency: the write was based on an older version.
            message = (
                "The version of the existing record doesn't match the RowVersion property provided."
            )
            raise ODataError(412, "0x80060882", message)
        if method == "GET" and rest is None:
            row = shape(self.rows[name][record_id], call.query, self.key(name))
            where = context(call.root, name, call.query, "/$entity")
            return json_reply(200, {"@odata.context": where, **row})
        if method == "DELETE" and rest is None:
            del self.rows[name][record_id]
            return Reply(204)
        if method == "PATCH" and rest is None:
            self._write(call.root, name, record_id, json_object(call.body))
            return self._written(call, name, record_id, created=False)
        if method == "PUT" and rest is not None and "/" not in rest:
            # A single property: PUT accounts(id)/name with {"value": ...}.
            value = json_object(call.body).get("value")
            self._write(call.root, name, record_id, {rest: value})
            return Reply(204)
        raise ODataError(405, QUERY_CODE, f"{method} is not supported on '{call.path}'.")

    def _write(
        self, root: str, entity_set: str, record_id: str, changes: Row, row: Row | None = None
    ) -> None:
        """Apply changes to a copy of the record (or to ``row``, a new one) and store it only
        when every change is valid."""
        row = dict(self.rows[entity_set][record_id]) if row is None else row
        for column, value in changes.items():
            if column.endswith("@odata.bind"):
                navigation = column.removesuffix("@odata.bind")
                row[f"_{navigation}_value"] = self._bound_id(root, value)
            elif not column.startswith("@") and column != self.key(entity_set):
                row[column] = value
        self._version += 1
        row["versionnumber"] = self._version
        self.rows[entity_set][record_id] = row

    def _bound_id(self, root: str, reference: object) -> str | None:
        """The id an ``@odata.bind`` names: ``set(id)``, ``/set(id)`` or an absolute URL."""
        if reference is None:
            return None
        text = str(reference)
        if "://" in text:
            if not text.startswith(root + "/"):
                raise not_based_on(text, root)
            text = text.removeprefix(root + "/")
        match = _SEGMENT.fullmatch(text.removeprefix(API_PATH).lstrip("/"))
        if match is None or match.group(2) is None or match.group(1) not in self.rows:
            raise ODataError(400, QUERY_CODE, f"Invalid @odata.bind reference '{reference}'.")
        entity_set, record_id = match.group(1), guid(match.group(2))
        if record_id not in self.rows[entity_set]:
            message = f"Entity '{entity_set[:-1]}' With Id = {record_id} Does Not Exist"
            raise ODataError(404, NOT_FOUND_CODE, message)
        return record_id

    def _written(self, call: _Call, name: str, record_id: str, *, created: bool = True) -> Reply:
        url = f"{call.root}/{name}({record_id})"
        if call.prefer.get("return") != "representation":
            return Reply(204, (("OData-EntityId", url),), entity_url=url)
        row = shape(self.rows[name][record_id], call.query, self.key(name))
        where = context(call.root, name, call.query, "/$entity")
        applied = (("OData-EntityId", url), ("Preference-Applied", "return=representation"))
        reply = json_reply(201 if created else 200, {"@odata.context": where, **row}, applied)
        return Reply(reply.status, reply.headers, reply.body, url)

    def _list(self, call: _Call, name: str, rows: list[Row]) -> Reply:
        query = call.query
        rows = order_rows(filter_rows(rows, query.get("$filter")), query.get("$orderby"))
        page_size = MAX_PAGE_SIZE
        applied: tuple[tuple[str, str], ...] = ()
        if "odata.maxpagesize" in call.prefer:
            asked = number(call.prefer["odata.maxpagesize"], "odata.maxpagesize")
            page_size = max(1, min(MAX_PAGE_SIZE, asked))
            applied = (("Preference-Applied", f"odata.maxpagesize={page_size}"),)
        elif "$top" in query:
            # Dataverse's page-results doc: with both, $top is ignored; so it applies alone.
            rows = rows[: number(query["$top"], "$top")]
        page = page_number(query.get("$skiptoken"))
        chunk = rows[(page - 1) * page_size : page * page_size]
        key = self.key(name) if name in self._logical else "MetadataId"
        payload: Row = {"@odata.context": context(call.root, name, query)}
        if query.get("$count", "").lower() == "true":
            payload["@odata.count"] = len(rows)
        payload["value"] = [shape(row, query, key) for row in chunk]
        if page * page_size < len(rows):
            payload["@odata.nextLink"] = next_link(call.root, name, query, page, key, chunk)
        return json_reply(200, payload, applied)

    def _metadata(self, call: _Call, key: str | None, rest: str | None) -> Reply:
        definitions = [_definition(logical, name) for name, logical in self._logical.items()]
        if key is None and rest is None:
            return self._list(call, "EntityDefinitions", definitions)
        wanted = (key or "").removeprefix("LogicalName=").strip("'")
        found = [d for d in definitions if wanted in (d["LogicalName"], d["MetadataId"])]
        if not found:
            raise ODataError(404, NOT_FOUND_CODE, f"Could not find entity with key '{key}'.")
        if rest is None:
            where = f"{call.root}/$metadata#EntityDefinitions/$entity"
            return json_reply(200, {"@odata.context": where, **found[0]})
        # Attributes and casts of them (the Python SDK asks for picklists before it writes
        # strings): the stand-in has no typed columns, so none.
        return json_reply(200, {"@odata.context": f"{call.root}/$metadata#{rest}", "value": []})


@dataclass(frozen=True, slots=True)
class _Call:
    root: str
    method: str
    path: str
    query: dict[str, str]
    headers: MultiMapping[str]
    body: bytes
    prefer: dict[str, str]


def _definition(logical: str, entity_set: str) -> Row:
    metadata_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-standin/{logical}"))
    return {
        "LogicalName": logical,
        "EntitySetName": entity_set,
        "PrimaryIdAttribute": f"{logical}id",
        "PrimaryNameAttribute": "name" if logical == "account" else "fullname",
        "MetadataId": metadata_id,
    }


def _who_am_i(root: str) -> Row:
    return {
        "@odata.context": f"{root}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
        "BusinessUnitId": "00000000-0000-0000-0000-00000000b001",
        "UserId": "00000000-0000-0000-0000-00000000a001",
        "OrganizationId": "00000000-0000-0000-0000-00000000c001",
    }
