"""Dataverse ``$batch``: every inner request checked as if sent alone, inner URLs rewritten both
ways on a ``rewrite_links`` route.

::

    guard ── is_batch (POST .../$batch: one look at the path's end) ── admit:
             refuse a Content-Encoding (the check would read other bytes than the upstream)
             read the body whole (bounded: the route's max_body_bytes, else 16 MiB; and,
             across the process, budget.Budget: server.max_held_batch_bytes)
             └─ check.check ── multipart.read (strict, bounded)
                            ├─ targets.resolve (proxy / upstream / relative URL -> route path)
                            └─ the route's Policy and the client's grants, per inner request
    forwarder ── sends Checked.body (replayable) instead of streaming the request
    relay ── responses.rewrite (inner Location, OData-EntityId, JSON bodies)
    tap ── Exchange.batch (summary.BatchSummary) and responses.summarize of its copy

A ``$batch`` body is the one request body the proxy holds whole before forwarding: it cannot
be checked otherwise, and nothing may reach the upstream half-checked.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from ..config.access import AccessClient
from ..errors import BadBatch, BadRequest, BodyTimeout, PayloadTooLarge, ProxyError
from ..state import State
from .budget import Budget, Reservation
from .check import Checked, check
from .summary import BatchSummary, InnerSummary
from .targets import Place

DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # when the route sets no max_body_bytes
CHECKED = web.RequestKey("batch", Checked)  # the checked batch, for the forwarder

__all__ = [
    "CHECKED",
    "DEFAULT_MAX_BYTES",
    "BatchSummary",
    "Budget",
    "Checked",
    "InnerSummary",
    "admit",
    "is_batch",
    "limit",
]


def is_batch(method: str, path: str) -> bool:
    """Whether a request is a batch: ``POST`` to a (decoded) path whose last segment is
    ``$batch``, in any case, with a trailing slash or ``;parameters`` too (read as a batch
    by some servers, so checked as one)."""
    if method != "POST" or "$" not in path:
        return False
    last = path.rstrip("/").rpartition("/")[2]
    return last.partition(";")[0].lower() == "$batch"


def limit(max_body_bytes: int | None) -> int:
    """The most bytes a batch body may have on a route."""
    return max_body_bytes or DEFAULT_MAX_BYTES


async def admit(
    request: web.Request, state: State, client: AccessClient | None, budget: Budget
) -> Checked | None:
    """Read and check the batch ``request`` carries; None when no route takes it (the
    forwarder answers 404). Raises the error to answer otherwise. The checked batch holds its
    share of ``budget`` until ``Checked.release``, once its request is over."""
    resolved = state.resolver.resolve(request)
    target = resolved.target
    if target is None:
        return None
    for coding in request.headers.getall("Content-Encoding", ()):
        if coding.strip().lower() not in ("", "identity"):
            raise BadBatch(
                f"a $batch with Content-Encoding {coding.strip()[:40]!r} cannot be checked as "
                "the upstream would read it: send it unencoded"
            )
    route = target.route
    held = budget.reserve()
    try:
        most = limit(route.policy.max_body_bytes)
        server = state.config.server
        body = await _read(request, most, held, server.max_held_batch_bytes, server.body_timeout)
        place = Place.of(
            route,
            resolved.listener,
            state.resolver.route_for,
            request.headers.get("Host", ""),
            target.url.raw_path,
        )
        content_type = request.headers.get("Content-Type", "")
        checked = check(
            body,
            content_type,
            place,
            state.policies[route.name],
            client,
            allow_override=route.policy.allow_method_override,
            owns_caller=route.name in state.owns_caller,
        )
    except BaseException:
        held.release()
        raise
    return dataclasses.replace(checked, held=held)


async def _read(
    request: web.Request, most: int, held: Reservation, budget: int, pause: float
) -> bytes:
    """The whole body, at most ``most`` bytes, held under ``budget``; no pause between two
    chunks longer than ``pause`` seconds (``server.body_timeout``: else 408, as for any body)."""
    declared = request.content_length
    if declared is not None and declared > most:
        raise PayloadTooLarge(f"the body is {declared} bytes; a batch on this route takes {most}")
    # Bytes are booked as they arrive, not as declared: a client that declares 16 MiB and
    # sends three bytes holds three bytes of the budget (and server.body_timeout ends it).
    body = bytearray()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(request.content.readany(), pause)
            except TimeoutError:
                raise BodyTimeout(f"the request body paused for more than {pause:g} s") from None
            if not chunk:
                break
            body += chunk
            if len(body) > most:
                raise PayloadTooLarge(f"the body is over {most} bytes, this route's batch limit")
            if len(body) > held.taken:
                held.take(len(body) - held.taken, budget)
    except ProxyError:
        raise
    except Exception:  # the client went away or broke the framing mid-body
        raise BadRequest("the batch body ended early") from None
    return bytes(body)
