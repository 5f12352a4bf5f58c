"""The ring buffer as HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/), which Chrome
DevTools, Firefox and Fiddler import. Built from the redacted records only.

The request is the one sent upstream (after the proxy's header hygiene and the token, shown
redacted); the proxy's own fields use the spec's ``_`` prefix for custom fields, among them
``_clientUrl``: the URL the client called (the proxy's address, the route's prefix), which
``ppproxy replay`` answers at. Bodies are the captured bytes (``export.py``): text as text,
binary as base64 (``content.encoding``; ``postData._encoding`` for a request), redacted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .. import __version__
from .capture import Record
from .export import Exported

# A record with its request's and its response's exported bodies.
Entry = tuple[Record, Exported, Exported]


def har(items: Iterable[Entry], proxy_base: str) -> dict[str, Any]:
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "ppproxy", "version": __version__},
            "pages": [],
            "entries": [_entry(*item, proxy_base) for item in items],
        }
    }


def _entry(r: Record, sent: Exported, answer: Exported, proxy_base: str) -> dict[str, Any]:
    url = r["upstream_url"] or proxy_base + r["target"]
    request_headers = (
        r["upstream_headers"] if r["upstream_headers"] is not None else r["client_headers"]
    )
    request: dict[str, Any] = {
        "method": r["method"],
        "url": url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],  # cookie values are redacted, and the client's never go upstream
        "headers": _headers(request_headers),
        "queryString": [
            {"name": k, "value": v}
            for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)
        ],
        "headersSize": -1,
        "bodySize": r["request_body"]["size"],
    }
    if r["request_body"]["size"]:
        request["postData"] = {
            "mimeType": r["request_body"]["mime_type"],
            "text": sent.get("text", ""),
            **({"_encoding": "base64"} if sent.get("encoding") == "base64" else {}),
            **_comment(r["request_body"], sent),
        }
    body = r["response_body"]
    content: dict[str, Any] = {"size": body["size"], "mimeType": body["mime_type"]}
    if "text" in answer:
        content["text"] = answer["text"]
        if answer.get("encoding") == "base64":
            content["encoding"] = "base64"
    content.update(_comment(body, answer))
    location = next((v for k, v in r["response_headers"] if k.lower() == "location"), "")
    timings = r["timings"]
    total = float(timings["total_ms"] or 0)
    blocked = float(timings["token_wait_ms"] or 0)
    wait = float(timings["upstream_ttfb_ms"] or 0)
    receive = max(total - blocked - wait, 0.0)
    return {
        "startedDateTime": r["time"],
        "time": round(blocked + wait + receive, 3),
        "request": request,
        "response": {
            "status": r["status"],
            "statusText": r["reason"],
            "httpVersion": r["http_version"],
            "cookies": [],
            "headers": _headers(r["response_headers"]),
            "content": content,
            "redirectURL": location,
            "headersSize": -1,
            "bodySize": r["bytes_out"] if isinstance(r["bytes_out"], int) else -1,
        },
        "cache": {},
        "timings": {
            "blocked": round(blocked, 3),  # waiting for the token (and a route's queue)
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": 0,
            "wait": round(wait, 3),
            "receive": round(receive, 3),
        },
        "_clientUrl": proxy_base + r["target"],
        "_route": r["route"],
        "_requestId": r["request_id"],
        "_proxyTarget": r["target"],
        "_tokenSource": r["token_source"],
        "_claims": r["claims"],
        "_error": r["error"],
        "_resendOf": r["resend_of"],
    }


def _headers(pairs: list[list[str]]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in pairs]


def _comment(body: Record, exported: Exported) -> dict[str, str]:
    if "note" in exported:
        return {"comment": f"{body['size']} bytes, {exported['note']}"}
    if body["truncated"]:
        return {"comment": f"only the first bytes of {body['size']} were captured"}
    if "decoded" in exported:
        return {"comment": f"decoded from {exported['decoded']}"}
    return {}
