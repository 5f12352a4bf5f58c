"""The proxy's exceptions and the one place that turns them into HTTP responses.

::

    ConfigError                  bad configuration; never reaches HTTP
    ProxyError                   answered to the client as JSON {"error": code, "message": ...}
    ├── NoRoute                  404 no_route
    ├── NotRecorded              404 not_recorded: `ppproxy replay` has no such request
    │                            (+ "nearest": the recorded requests closest to it)
    ├── NotResendable            409 not_resendable: the tap did not capture the body whole
    ├── PayloadTooLarge          413 payload_too_large (the route's max_body_bytes)
    ├── ExpectationFailed        417 expectation_failed (an Expect other than 100-continue)
    ├── BadRequest               400 bad_request
    ├── BadBatch                 400 bad_batch: a $batch body that cannot be checked whole
    ├── MethodOverrideRefused    400 method_override_refused (X-HTTP-Method and friends)
    ├── TokenUnavailable         503 token_unavailable (+ Entra's error code and description)
    ├── UpstreamUnreachable      502 upstream_unreachable
    ├── UpstreamTimeout          504 upstream_timeout
    ├── UpstreamBusy             503 upstream_busy (the route's max_concurrency queue is full)
    ├── SignInUnavailable        503 signin_unavailable: the tenant's signing keys cannot be had
    ├── ClientBusy               429 client_busy (the access client's max_concurrency)
    ├── RateLimited              429 rate_limited (+ RateLimit-Policy, RateLimit): the client's
    │                            rate_limit
    ├── UpstreamThrottled        429 upstream_throttled: the upstream's cool-down is longer than
    │                            the route's max_throttle_wait
    ├── BodyTimeout              408 body_timeout (the body paused past server.body_timeout)
    ├── Unauthenticated          401 unauthenticated (+ WWW-Authenticate): no or a wrong key
    │   └── InvalidToken         401 invalid_token: a member's token that does not sign in
    ├── Forbidden                403 forbidden: the access client may not use this route or method
    │   ├── NotGranted           403 forbidden: a signed-in member no [[access.clients]] matches
    │   ├── OnBehalfOfRefused    403 on_behalf_of_refused: Entra refused a token for the member
    │   │   └── ConsentRequired  403 consent_required: AADSTS65001, nobody consented
    │   ├── HostNotAllowed       403 host_not_allowed: Host not allowed (DNS rebinding)
    │   ├── CrossSiteRequest     403 cross_site_request: a browser page from another site
    │   ├── PathNotAllowed       403 path_not_allowed: the route's allow_paths/deny_paths
    │   └── BatchForbidden       403 forbidden: a $batch inner request the route or client may
    │                            not send alone (+ "batch": where it is and why)
    ├── MethodNotAllowed         405 method_not_allowed (+ Allow): the route's methods
    └── NotProxied               501 not_implemented: Upgrade (WebSockets) and TRACE

Messages are written for the client: they never hold a token, a secret, a query string or the
``repr()`` of an aiohttp client error (which contains the request headers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from aiohttp import web

from . import aadsts


class ConfigError(Exception):
    """Configuration is invalid; ``problems`` lists every one as ``key.path: message``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"invalid configuration ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ProxyError(Exception):
    """An error answered to the client with ``status`` and a JSON body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    # Close the client's connection after the answer: what it was sending cannot be trusted
    # to end where the next request starts.
    closes_connection: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        return {}


class NoRoute(ProxyError):
    """No route takes the path; ``prefixes`` are those the client could use instead."""

    status = 404
    code = "no_route"

    def __init__(self, message: str, *, prefixes: Sequence[str] = ()) -> None:
        if prefixes:
            message = f"{message}; routes: {', '.join(prefixes)}"
        super().__init__(message)
        self.prefixes = tuple(prefixes)

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.prefixes:
            body["prefixes"] = list(self.prefixes)
        return body


class NotRecorded(ProxyError):
    """``ppproxy replay``: no recorded exchange matches; ``nearest`` are the closest ones."""

    status = 404
    code = "not_recorded"

    def __init__(self, message: str, *, nearest: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.nearest = tuple(nearest)

    def body(self) -> dict[str, Any]:
        return {**super().body(), "nearest": list(self.nearest)}


class NotResendable(ProxyError):
    status = 409
    code = "not_resendable"


class PayloadTooLarge(ProxyError):
    status = 413
    code = "payload_too_large"


class ExpectationFailed(ProxyError):
    status = 417
    code = "expectation_failed"


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"


class BatchError(ProxyError):
    """An error about one inner request of a ``$batch``: ``where`` (its position, method, path,
    change set, Content-ID, ...) is added to the body as ``"batch"``."""

    def __init__(self, message: str, *, where: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.where = where

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.where:
            body["batch"] = self.where
        return body


class BadBatch(BatchError):
    """A ``$batch`` body the proxy cannot read whole and unambiguously: never forwarded."""

    status = 400
    code = "bad_batch"


class MethodOverrideRefused(BatchError):
    """``X-HTTP-Method``, ``X-HTTP-Method-Override`` or ``X-Method-Override``: a method the
    policy would not see."""

    status = 400
    code = "method_override_refused"


class UpstreamUnreachable(ProxyError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"


class UpstreamBusy(ProxyError):
    """The route's concurrency cap is reached and its queue is full or the wait was too long."""

    status = 503
    code = "upstream_busy"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ClientBusy(ProxyError):
    """The [access] client has ``max_concurrency`` requests in flight already."""

    status = 429
    code = "client_busy"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


def _seconds(value: float) -> str:
    """Whole seconds for Retry-After (RFC 9110 §10.2.3), rounded up, at least 1."""
    return str(max(1, math.ceil(value)))


class RateLimited(ProxyError):
    """The [access] client went over its ``rate_limit``; the IETF RateLimit header fields
    (draft-ietf-httpapi-ratelimit-headers-10) say which quota and when it frees up."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, quota: int, window: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.quota = quota
        self.window = window

    def headers(self) -> dict[str, str]:
        wait = _seconds(self.retry_after)
        window = max(1, math.ceil(self.window))
        return {
            "Retry-After": wait,
            "RateLimit-Policy": f'"client";q={self.quota};w={window}',
            "RateLimit": f'"client";r=0;t={wait}',
        }


class UpstreamThrottled(ProxyError):
    """The upstream throttled this route's identity (429 + Retry-After) and the rest of that
    cool-down is longer than the route's ``max_throttle_wait``: answered without sending."""

    status = 429
    code = "upstream_throttled"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": _seconds(self.retry_after)}


class BodyTimeout(ProxyError):
    """The request body paused longer than ``server.body_timeout`` (RFC 9110 §15.5.9)."""

    status = 408
    code = "body_timeout"
    closes_connection = True


class TokenUnavailable(ProxyError):
    """No valid token could be had; carries Entra's error, never the credential."""

    status = 503
    code = "token_unavailable"

    def __init__(
        self,
        message: str,
        *,
        entra_error: str | None = None,
        entra_description: str | None = None,
        entra_codes: Sequence[int] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.entra_error = entra_error
        self.entra_description = entra_description
        self.entra_codes = tuple(entra_codes)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.entra_error:
            body["entra_error"] = self.entra_error
        if self.entra_description:
            body["entra_error_description"] = self.entra_description
        if self.entra_codes:
            body["entra_error_codes"] = list(self.entra_codes)
        fix = aadsts.hint(self.entra_codes, self.entra_description or "")
        if fix:
            body["hint"] = fix
        return body

    def headers(self) -> dict[str, str]:
        retry = 5 if self.retry_after is None else max(1, math.ceil(self.retry_after))
        return {"Retry-After": str(retry)}


class Unauthenticated(ProxyError):
    """[access] is on and the request carries no key, or a wrong one (RFC 9110 §15.5.2)."""

    status = 401
    code = "unauthenticated"

    def headers(self) -> dict[str, str]:
        # Basic too, so tools that only do Basic know to send the key as the password.
        return {"WWW-Authenticate": 'Bearer realm="ppproxy", Basic realm="ppproxy"'}


class InvalidToken(Unauthenticated):
    """A member's Entra ID token that does not sign in: RFC 6750 §3.1 ``invalid_token``, with
    the reason (never the token) as ``error_description``."""

    code = "invalid_token"

    def headers(self) -> dict[str, str]:
        reason = self.message.replace("\\", "").replace('"', "'")
        return {
            "WWW-Authenticate": (
                f'Bearer realm="ppproxy", error="invalid_token", error_description="{reason}"'
            )
        }


class SignInUnavailable(ProxyError):
    """The tenant's OpenID metadata or signing keys could not be fetched: nobody can sign in
    until they can (keys keep working)."""

    status = 503
    code = "signin_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class Forbidden(ProxyError):
    status = 403
    code = "forbidden"


class NotGranted(Forbidden):
    """A valid member's token that no ``[[access.clients]]`` entry matches; names the member for
    the access log."""

    def __init__(self, message: str, *, caller: str) -> None:
        super().__init__(message)
        self.caller = caller


class OnBehalfOfRefused(Forbidden):
    """Entra ID would not give the route's identity a token for the signed-in member; carries
    Entra's error and what to do about it."""

    code = "on_behalf_of_refused"

    def __init__(
        self,
        message: str,
        *,
        entra_error: str,
        entra_description: str = "",
        entra_codes: Sequence[int] = (),
    ) -> None:
        super().__init__(message)
        self.entra_error = entra_error
        self.entra_description = entra_description
        self.entra_codes = tuple(entra_codes)

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["entra_error"] = self.entra_error
        if self.entra_description:
            body["entra_error_description"] = self.entra_description
        if self.entra_codes:
            body["entra_error_codes"] = list(self.entra_codes)
        return body


class ConsentRequired(OnBehalfOfRefused):
    code = "consent_required"


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class CrossSiteRequest(Forbidden):
    code = "cross_site_request"


class PathNotAllowed(Forbidden):
    code = "path_not_allowed"


class BatchForbidden(Forbidden, BatchError):
    """An inner request of a ``$batch`` that would be refused if sent alone."""

    code = "forbidden"


class MethodNotAllowed(ProxyError):
    """The route's ``methods`` policy; ``Allow`` lists what it takes (RFC 9110 §15.5.6)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: Sequence[str]) -> None:
        super().__init__(message)
        self.allow = tuple(allow)

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}


class NotProxied(ProxyError):
    status = 501
    code = "not_implemented"


def to_response(error: ProxyError, *, request_id: str | None = None) -> web.Response:
    """The HTTP response for ``error``; the only place errors become responses."""
    body = error.body()
    headers = {"Content-Type": "application/json", **error.headers()}
    if request_id:
        body["request_id"] = request_id
        headers["x-ms-client-request-id"] = request_id
    response = web.Response(status=error.status, text=json.dumps(body), headers=headers)
    if error.closes_connection:
        response.force_close()
    return response
