"""What an exchange keeps of a ``$batch``: a bounded list of its inner requests, for the tap."""

from __future__ import annotations

from dataclasses import dataclass

KEEP = 200  # inner requests listed per exchange; the rest are only counted
TEXT = 500  # characters kept of each URL


@dataclass(frozen=True, slots=True)
class InnerSummary:
    method: str  # the method checked (an allowed override's, else the request line's)
    target: str  # as the client wrote it, cut at TEXT characters
    path: str  # the path after the route's prefix that the policy checked
    sent: str | None  # the URL sent upstream in its place, when rewritten
    changeset: int | None
    content_id: str | None


@dataclass(frozen=True, slots=True)
class BatchSummary:
    requests: tuple[InnerSummary, ...]  # the first KEEP inner requests
    total: int  # inner requests in the batch
    changesets: int


def cut(text: str) -> str:
    return text if len(text) <= TEXT else text[:TEXT] + "…"
