"""Dataverse ``$batch``: every inner request checked as if sent alone, inner URLs rewritten both
ways on a ``rewrite_links`` route.

::

    guard ── is_batch (POST .../$batch: one look at the path's end) ── admit:
             read the body whole (bounded: the route's max_body_bytes, else 16 MiB)
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

from aiohttp import web

from ..config.access import AccessClient
from ..errors import BadRequest, PayloadTooLarge
from ..state import State
from .check import Checked, check
from .summary import BatchSummary, InnerSummary
from .targets import Place

DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # when the route sets no max_body_bytes
CHECKED = web.RequestKey("batch", Checked)  # the checked batch, for the forwarder

__all__ = [
    "CHECKED",
    "DEFAULT_MAX_BYTES",
    "BatchSummary",
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


async def admit(request: web.Request, state: State, client: AccessClient | None) -> Checked | None:
    """Read and check the batch ``request`` carries; None when no route takes it (the
    forwarder answers 404). Raises the error to answer otherwise."""
    resolved = state.resolver.resolve(request)
    target = resolved.target
    if target is None:
        return None
    route = target.route
    body = await _read(request, limit(route.policy.max_body_bytes))
    place = Place.of(
        route,
        resolved.listener,
        state.resolver.route_for,
        request.headers.get("Host", ""),
        target.url.raw_path,
    )
    content_type = request.headers.get("Content-Type", "")
    policy = state.policies[route.name]
    return check(
        body,
        content_type,
        place,
        policy,
        client,
        allow_override=route.policy.allow_method_override,
        owns_caller=route.name in state.owns_caller,
    )


async def _read(request: web.Request, most: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > most:
        raise PayloadTooLarge(f"the body is {declared} bytes; a batch on this route takes {most}")
    held = bytearray()
    try:
        async for chunk in request.content.iter_any():
            held += chunk
            if len(held) > most:
                raise PayloadTooLarge(f"the body is over {most} bytes, this route's batch limit")
    except PayloadTooLarge:
        raise
    except Exception:  # the client went away or broke the framing mid-body
        raise BadRequest("the batch body ended early") from None
    return bytes(held)
