"""Method overrides: ``X-HTTP-Method``, ``X-HTTP-Method-Override`` and ``X-Method-Override``.

Some upstreams (Dataverse's OData endpoint among them) act on the method such a header names
instead of the request's own, so a ``POST`` carrying ``X-HTTP-Method: DELETE`` is a delete. A
route refuses them (``400 method_override_refused``) unless it sets
``allow_method_override = true``; then the guard checks the route's ``methods`` and the
client's grants against the request's method *and* the overriding one, since an upstream may
act on either.

Pure: the guard calls :func:`override` for every request that reached a route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import MultiMapping

from .errors import MethodOverrideRefused

HEADERS = ("X-HTTP-Method", "X-HTTP-Method-Override", "X-Method-Override")
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")  # RFC 9110 §9.1: a token
_NEVER = frozenset({"CONNECT", "TRACE", "TRACK"})  # refused as methods by request hygiene


def override(headers: MultiMapping[str], allowed: bool) -> str | None:
    """The overriding method the request carries (upper-cased), or ``None`` when it has none.

    Raises ``MethodOverrideRefused`` when the route does not take overrides, or the headers
    disagree, or name a method the proxy never forwards."""
    if not (HEADERS[0] in headers or HEADERS[1] in headers or HEADERS[2] in headers):
        return None  # the common case: three lookups and nothing else
    return overriding([v for h in HEADERS for v in headers.getall(h, ())], allowed)


def overriding(values: Iterable[str], allowed: bool) -> str:
    """The one method the override header ``values`` (at least one) name, upper-cased: also
    for the inner requests of a ``$batch``. Raises ``MethodOverrideRefused``."""
    if not allowed:
        raise MethodOverrideRefused(
            "method-override headers (X-HTTP-Method, X-HTTP-Method-Override, "
            "X-Method-Override) are not accepted on this route"
        )
    named = {v.strip().upper() for v in values}
    if len(named) != 1:
        raise MethodOverrideRefused("the method-override headers name different methods")
    method = named.pop()
    if not _METHOD.match(method):
        raise MethodOverrideRefused("the method-override header does not name an HTTP method")
    if method in _NEVER:
        raise MethodOverrideRefused(f"{method} is not proxied, overridden or not")
    return method
