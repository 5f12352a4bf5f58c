"""OData query options as the Dataverse stand-in understands them: ``$select``, ``$filter``
(``column op literal`` clauses joined by ``and``), ``$orderby``, ``$top``, ``$count``,
``$skiptoken``, and the ``Prefer`` header (RFC 7240).

Errors are raised as ``ODataError`` with Dataverse's codes; see
learn.microsoft.com/power-apps/developer/data-platform/webapi/query/.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from multidict import MultiMapping

Row = dict[str, Any]
QUERY_CODE = "0x80060888"  # the code Dataverse gives OData URL and query errors
PAYLOAD_CODE = "0x80048d19"  # "Error identified in Payload provided by the user"

_GUID = re.compile(r"\{?([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})\}?")
_CLAUSE = re.compile(
    r"\s*(\w+)\s+(eq|ne|gt|ge|lt|le)\s+('(?:[^']|'')*'|[^\s)]+)\s*(?:\band\b|$)", re.IGNORECASE
)
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_QUERY_SAFE = "$,'()/:@"  # left as Dataverse writes them in a nextLink; spaces become %20


class ODataError(Exception):
    """A failure answered with Dataverse's error shape: {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def payload(self) -> Row:
        return {"error": {"code": self.code, "message": self.message}}


def options(query: str) -> dict[str, str]:
    """Query options by name; both ``%20`` and ``+`` decode to a space, as in Dataverse."""
    return dict(parse_qsl(query, keep_blank_values=True))


def preferences(headers: MultiMapping[str]) -> dict[str, str]:
    """Preferences from all Prefer headers: name (lower case) -> value ("" when bare)."""
    found: dict[str, str] = {}
    for item in ",".join(headers.getall("Prefer", [])).split(","):
        name, _, value = item.strip().partition("=")
        if name:
            found[name.strip().lower()] = value.strip().strip('"')
    return found


def json_object(body: bytes) -> Row:
    """The request body as a JSON object; an empty body is ``{}``."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ODataError(400, PAYLOAD_CODE, "Error identified in Payload provided by the user.")
    return payload


def guid(text: str) -> str:
    """A key segment's GUID in lower case (braces allowed), or a 400 error."""
    match = _GUID.fullmatch(text.strip())
    if match is None:
        raise ODataError(400, QUERY_CODE, f"Unrecognized key '{text}': expected a GUID.")
    return match.group(1).lower()


def number(text: str, what: str) -> int:
    """A non-negative integer option value, or a 400 error."""
    if not text.strip().isdecimal():
        raise ODataError(400, QUERY_CODE, f"Invalid value '{text}' for {what}.")
    return int(text)


def filter_rows(rows: list[Row], expression: str | None) -> list[Row]:
    """Rows matching every clause; strings compare case-insensitively, as Dataverse's default
    collation does, and ordering comparisons with null are false."""
    if not expression:
        return rows
    clauses: list[tuple[str, str, object]] = []
    position = 0
    while position < len(expression):
        match = _CLAUSE.match(expression, position)
        if match is None or match.end() == position:
            raise ODataError(400, QUERY_CODE, f"Unsupported $filter '{expression}'.")
        clauses.append((match.group(1), match.group(2).lower(), _literal(match.group(3))))
        position = match.end()
    try:
        return [row for row in rows if all(_holds(row, *clause) for clause in clauses)]
    except TypeError:
        message = f"Incompatible types in $filter '{expression}'."
        raise ODataError(400, QUERY_CODE, message) from None


def order_rows(rows: list[Row], orderby: str | None) -> list[Row]:
    """Rows sorted by ``column [asc|desc], ...``; nulls first in ascending order, as in SQL."""
    items = [item.split() for item in (orderby or "").split(",") if item.strip()]
    # Stable sorts from the last key to the first give the combined order.
    for column, *direction in reversed(items):
        descending = bool(direction) and direction[0].lower() == "desc"
        try:
            rows = sorted(rows, key=_sort_key(column), reverse=descending)
        except TypeError:
            message = f"Incompatible types in $orderby '{orderby}'."
            raise ODataError(400, QUERY_CODE, message) from None
    return rows


def shape(row: Row, query: dict[str, str], key: str) -> Row:
    """A record as returned: ``@odata.etag``, the selected columns (all without $select), key."""
    selected = [c.strip() for c in query.get("$select", "").split(",") if c.strip()]
    shaped: Row = {"@odata.etag": f'W/"{row["versionnumber"]}"'} if "versionnumber" in row else {}
    shaped.update({c: row.get(c) for c in selected} if selected else row)
    shaped[key] = row.get(key)
    return shaped


def context(root: str, name: str, query: dict[str, str], suffix: str = "") -> str:
    """The ``@odata.context`` URL: ``{root}/$metadata#accounts(name,...)`` plus suffix."""
    select = query.get("$select", "")
    return (
        f"{root}/$metadata#{name}({select}){suffix}"
        if select
        else f"{root}/$metadata#{name}{suffix}"
    )


def page_number(skiptoken: str | None) -> int:
    """The page a ``$skiptoken`` written by ``next_link`` asks for (1 without one)."""
    if skiptoken is None:
        return 1
    match = re.search(r'pagenumber="(\d+)"', skiptoken)
    if match is None or int(match.group(1)) < 1:
        raise ODataError(400, QUERY_CODE, "Invalid $skiptoken.")
    return int(match.group(1))


def next_link(
    root: str, name: str, query: dict[str, str], page: int, key: str, chunk: list[Row]
) -> str:
    """An absolute link in Dataverse's shape: the query options again, plus a ``$skiptoken``
    holding a percent-encoded paging cookie inside a percent-encoded cookie."""
    first, last = chunk[0].get(key), chunk[-1].get(key)
    cookie = f'<cookie page="{page}"><{key} last="{{{last}}}" first="{{{first}}}" /></cookie>'
    inner = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(cookie, safe=""))
    token = f'<cookie pagenumber="{page + 1}" pagingcookie="{inner}" istracking="False" />'
    kept = [f"{k}={quote(v, safe=_QUERY_SAFE)}" for k, v in query.items() if k != "$skiptoken"]
    kept.append("$skiptoken=" + quote(token, safe="=/"))
    return f"{root}/{name}?" + "&".join(kept)


def _holds(row: Row, column: str, op: str, value: object) -> bool:
    actual = _fold(row.get(column))
    if op in ("eq", "ne"):
        return (actual == value) == (op == "eq")
    return actual is not None and value is not None and _ORDERING[op](actual, value)


def _literal(token: str) -> object:
    if token.startswith("'"):
        return _fold(token[1:-1].replace("''", "'"))
    if token.lower() in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[token.lower()]
    if _GUID.fullmatch(token):
        return token.strip("{}").lower()
    try:
        return float(token) if "." in token else int(token)
    except ValueError:
        raise ODataError(400, QUERY_CODE, f"Unrecognized literal '{token}' in $filter.") from None


def _fold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def _sort_key(column: str) -> Callable[[Row], Any]:
    return lambda row: (row.get(column) is not None, _fold(row.get(column)))
