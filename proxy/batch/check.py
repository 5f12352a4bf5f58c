"""The check of a ``$batch`` body: every inner request, change sets included, against the
route's policy and the client's grants exactly as if it had been sent alone.

Pure: bytes in, the body to forward (inner URLs rewritten on a ``rewrite_links`` route) and
a bounded summary out, or an error that names the inner request. Nothing is forwarded unless
every inner request passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .. import access
from ..acting import CALLER_HEADERS
from ..config.access import AccessClient
from ..errors import BadBatch, BatchError, BatchForbidden, ProxyError
from ..overrides import overriding
from ..policy import Policy
from . import multipart, targets
from .budget import Reservation
from .summary import KEEP, BatchSummary, InnerSummary, cut

# Headers that make a server run another method than the request line's.
OVERRIDE_HEADERS = ("X-HTTP-Method", "X-HTTP-Method-Override", "X-Method-Override")
_OVERRIDES = frozenset(h.lower() for h in OVERRIDE_HEADERS)
# "$1" or "$1/primarycontactid": the record made by the request with Content-ID 1 (OData 4.0
# Part 1 §11.7.3.1); the characters are those servers read as a Content-ID.
_REFERENCE = re.compile(r"\$([A-Za-z0-9_.~-]+)(.*)", re.DOTALL)
_CONTENT_ID = re.compile(r"[A-Za-z0-9_.~-]{1,128}")
# OData's own resources below the service root (OData 4.0 Part 2 §4.8, §4.12, §4.14, Part 1
# §11.7): "$metadata" and the like are relative URLs, not references; a Content-ID may not take
# these names, or a server that looks references up first would read one as the other.
_SERVICE_RESOURCES = frozenset({"metadata", "entity", "crossjoin", "all", "batch"})
# Inner headers the proxy never forwards for a client, whatever the route: the proxy's own
# credentials are the only ones the upstream sees (also dropped from standalone requests).
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class Checked:
    """A batch that passed: the body to send upstream and what the tap shows of it."""

    body: bytes
    summary: BatchSummary
    held: Reservation | None = None  # its share of the process's batch budget, while held

    def release(self) -> None:
        """Give its bytes back to the budget: its request is over."""
        if self.held is not None:
            self.held.release()


def check(
    body: bytes,
    content_type: str,
    place: targets.Place,
    policy: Policy,
    client: AccessClient | None,
    *,
    allow_override: bool = False,
    owns_caller: bool = False,
) -> Checked:
    """Check every inner request of ``body``; ``BadBatch``, ``MethodOverrideRefused`` or
    ``BatchForbidden`` for the first that fails. ``allow_override``: the route accepts
    method-override headers, and both the inner method and the overriding one are checked.
    ``owns_caller``: only the proxy may say whom Dataverse acts for on the route, so an inner
    ``CallerObjectId`` or ``MSCRMCallerID`` is refused (the body is never rewritten)."""
    requests = multipart.read(body, content_type)
    # (change set, Content-ID) -> the path of the record that request makes or changes.
    records: dict[tuple[int, str], str] = {}
    edits: list[tuple[tuple[int, int], str]] = []
    kept: list[InnerSummary] = []
    removed = _CREDENTIAL_HEADERS | place.route.edits.remove_request_headers
    for position, inner in enumerate(requests, start=1):
        try:
            if owns_caller:
                _no_caller_header(inner)
            _no_removed_header(inner, removed)
            method, path, sent = _one(inner, place, policy, client, records, allow_override)
        except ProxyError as e:
            raise _located(e, position, inner) from None
        if sent is not None:
            edits.append((inner.target_span, sent))
        if len(kept) < KEEP:
            kept.append(
                InnerSummary(
                    method,
                    cut(inner.target),
                    cut(path),
                    None if sent is None else cut(sent),
                    inner.changeset,
                    inner.content_id,
                )
            )
    changesets = max((r.changeset or 0 for r in requests), default=0)
    summary = BatchSummary(tuple(kept), len(requests), changesets)
    return Checked(_spliced(body, edits) if edits else body, summary)


def _one(
    inner: multipart.InnerRequest,
    place: targets.Place,
    policy: Policy,
    client: AccessClient | None,
    records: dict[tuple[int, str], str],
    allow_override: bool,
) -> tuple[str, str, str | None]:
    """(method checked, route path, URL sent in its place or None) of one inner request."""
    method = _method(inner, allow_override)
    if inner.header("Host") is not None:
        raise BadBatch("an inner request must not carry Host: write its URL absolute or relative")
    content_id = inner.content_id
    if content_id is not None and not _CONTENT_ID.fullmatch(content_id):
        raise BadBatch("a Content-ID must be letters, digits, '_', '.', '~' or '-'")
    if content_id is not None and content_id.lower() in _SERVICE_RESOURCES:
        raise BadBatch(f"Content-ID {content_id} would read as the service's ${content_id}")
    reference = _REFERENCE.fullmatch(inner.target)
    if reference is not None and reference.group(1).lower() not in _SERVICE_RESOURCES:
        path, sent = _referenced(reference, inner.changeset, records), None
    else:
        _no_reference_inside(inner.target, inner.changeset, records)
        resolved = targets.resolve(inner.target, place)
        path, sent = resolved.path, resolved.sent
    if path.rstrip("/").rpartition("/")[2].partition(";")[0].lower() == "$batch":
        raise BadBatch("a batch cannot hold another batch")
    # With an override the upstream may act on either method: both must pass, as outside.
    methods = (method,) if method == inner.method.upper() else (inner.method.upper(), method)
    try:
        for one in methods:
            policy.check(one, path, prefixed=False)
            if client is not None:
                access.authorize(client, place.route, one)
    except ProxyError as e:
        raise BatchForbidden(e.message, where={"reason": e.code, "path": path}) from None
    if content_id is not None and inner.changeset is not None:
        key = (inner.changeset, content_id)
        if key in records:
            raise BadBatch(f"Content-ID {content_id} appears twice in one change set")
        # A create's record is "{set}({key})": stand the key in as ($n) so a glob such as
        # "/accounts(*)" matches what "$n" will name.
        records[key] = path if path.endswith(")") else f"{path}(${content_id})"
    return method, path, sent


def _no_caller_header(inner: multipart.InnerRequest) -> None:
    for name in CALLER_HEADERS:
        if inner.header(name) is not None:
            raise BatchForbidden(
                f"{name} is refused inside a batch on this route: only the proxy says whom "
                "Dataverse acts for here",
                where={"reason": "caller_header"},
            )


def _method(inner: multipart.InnerRequest, allow_override: bool) -> str:
    """The method the upstream may run for ``inner``: its own, or the one its override headers
    name, judged exactly as outside a batch (``proxy.overrides``)."""
    values = [v for k, v in inner.headers if k.lower() in _OVERRIDES]
    if not values:
        return inner.method.upper()  # checked upper-cased: the policy's methods are
    return overriding(values, allow_override)


def _referenced(
    reference: re.Match[str], changeset: int | None, records: dict[tuple[int, str], str]
) -> str:
    """The route path a ``$n`` reference stands for: the record request ``n`` made."""
    name, rest = reference.group(1), reference.group(2)
    record = records.get((changeset, name)) if changeset is not None else None
    if record is None:
        raise BadBatch(f"${name} does not name an earlier request of its change set")
    path = rest.partition("?")[0]
    if rest and not rest.startswith(("/", "?")):
        raise BadBatch(f"${name} must be followed by '/', '?' or nothing")
    if path:
        targets.check_inner_path(path)
    return record + path


def _no_reference_inside(
    target: str, changeset: int | None, records: dict[tuple[int, str], str]
) -> None:
    """Refuse a ``$n`` of this change set anywhere but at the start: some servers replace it
    wherever it appears, and the URL would then not be the one checked."""
    if changeset is None or "$" not in target:
        return
    for found in re.finditer(r"\$([A-Za-z0-9_.~-]+)", target):
        if (changeset, found.group(1)) in records:
            raise BadBatch(f"${found.group(1)} may only stand at the start of a URL")


def _located(error: ProxyError, position: int, inner: multipart.InnerRequest) -> ProxyError:
    """``error`` naming the inner request: its position, method and path (never its query)."""
    extra = error.where or {} if isinstance(error, BatchError) else {}
    where: dict[str, Any] = {"position": position, "method": inner.method}
    where["path"] = extra.get("path") or cut(inner.target.partition("?")[0])
    if inner.changeset is not None:
        where["changeset"] = inner.changeset
    if inner.content_id is not None:
        where["content_id"] = inner.content_id
    where["reason"] = extra.get("reason", error.code)
    message = f"batch request {position} ({inner.method} {where['path']}): {error.message}"
    if isinstance(error, BatchError):
        return type(error)(message, where=where)
    return BatchForbidden(message, where=where)


def _spliced(body: bytes, edits: list[tuple[tuple[int, int], str]]) -> bytes:
    """``body`` with each span replaced; every other byte as the client sent it."""
    out = bytearray()
    last = 0
    for (start, end), text in edits:
        out += body[last:start]
        out += text.encode("utf-8")
        last = end
    out += body[last:]
    return bytes(out)


def _no_removed_header(inner: multipart.InnerRequest, removed: frozenset[str]) -> None:
    """Refuse an inner header the proxy would not forward on a standalone request (client
    credentials, the route's ``remove_request_headers``): it cannot be taken out without
    rewriting the part, and passing it would give the inner request what the outer one lost."""
    for name, _ in inner.headers:
        if name.lower() in removed:
            raise BatchForbidden(
                f"an inner request must not carry {name[:100]}: the proxy does not forward it",
                where={"reason": "header_not_allowed"},
            )
