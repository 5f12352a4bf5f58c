"""Who may use the proxy, and for what: client keys, signed-in members' grants, client
grants, and refusing to be reachable by anyone without them.

Pure functions over prepared state; ``proxy.guard`` calls them from its middleware.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import secrets
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from .config import Config, RouteConfig
from .config.access import AccessClient, AccessConfig
from .errors import Forbidden, NotGranted, Unauthenticated
from .peers import is_loopback
from .signin import Caller

KEY_HEADER = "X-Api-Key"
# The client the guard authenticated, on the request for the handlers that need it (the tap).
CLIENT = web.RequestKey("access_client", AccessClient)
# The credential header as the client sent it (name, value), kept on the request (never on the
# exchange) for the one handler that acts as that client again: the tap's resend.
CREDENTIAL = web.RequestKey("access_credential", tuple)
_KEY_PREFIX = "ppk_"  # makes a leaked key easy to recognise for secret scanners


def new_key() -> tuple[str, str]:
    """A new random client key (256 bits) and its ``key_sha256``."""
    key = _KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Presented:
    """The key a request carries and the header it came in (removed before forwarding)."""

    key: str
    header: str
    bearer: bool = False  # Authorization: Bearer (a member's token, when it is a JWT)


def presented_key(headers: Mapping[str, str]) -> Presented | None:
    """The client key from ``X-Api-Key``, ``Authorization: Bearer`` or the Basic password."""
    value = headers.get(KEY_HEADER)
    if value is not None:
        return Presented(value.strip(), KEY_HEADER)
    auth = headers.get("Authorization")
    if auth is None:
        return None
    scheme, _, credentials = auth.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":  # RFC 6750 §2.1; the scheme is case-insensitive
        return Presented(credentials, "Authorization", bearer=True)
    if scheme.lower() == "basic":  # RFC 7617 §2: base64(user-id ":" password)
        try:
            decoded = b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Presented("", "Authorization")
        return Presented(decoded.partition(":")[2], "Authorization")
    return Presented("", "Authorization")


def authenticate(access: AccessConfig, presented: Presented | None) -> AccessClient:
    """The client whose key was presented; ``Unauthenticated`` otherwise."""
    if presented is None:
        signin = " or an Entra ID access token as Authorization: Bearer" if access.entra else ""
        raise Unauthenticated(
            "this gateway needs a client key: send it as X-Api-Key, "
            f"Authorization: Bearer <key>, or as the Basic password{signin}"
        )
    digest = hashlib.sha256(presented.key.encode("utf-8", "surrogateescape")).digest()
    found = None
    # Compare with every client, in constant time, so timing tells nothing about the keys.
    for client in access.clients:
        if client.key_sha256 is None:
            continue
        if hmac.compare_digest(digest, client.key_sha256) and presented.key:
            found = client
    if found is None:
        raise Unauthenticated("the client key is not valid")
    return found


def match_member(access: AccessConfig, caller: Caller) -> AccessClient:
    """The first ``[[access.clients]]`` entry whose ``users``, ``groups`` or ``roles`` name the
    signed-in member; ``NotGranted`` (403) when none does."""
    upn = caller.upn.lower() if caller.upn is not None else None
    for client in access.clients:
        if (
            caller.oid in client.users
            or (upn is not None and upn in client.users)
            or not client.groups.isdisjoint(caller.groups)
            or not client.roles.isdisjoint(caller.roles)
        ):
            return client
    hint = ""
    if caller.groups_overage:
        hint = (
            " (the token lists no groups: the member is in too many for a token to carry, so "
            "grant by app roles, which groups can be assigned to, instead)"
        )
    raise NotGranted(
        f"signed in as {caller.name}, but no [[access.clients]] entry grants this member{hint}",
        caller=caller.name,
    )


def authorize(client: AccessClient, route: RouteConfig, method: str) -> None:
    """``Forbidden`` unless ``client`` may send ``method`` to ``route``."""
    if client.routes is not None and route.name not in client.routes:
        raise Forbidden(f"client {client.name!r} may not use route {route.name!r}")
    if client.methods is not None and method not in client.methods:
        raise Forbidden(f"client {client.name!r} may not send {method} requests")


def exposure_problem(config: Config) -> str | None:
    """Why the proxy must not start on ``server.host``, or ``None`` when it may."""
    host = config.server.host
    if is_loopback(host) or config.access.enabled or config.server.allow_anonymous_remote:
        return None
    return (
        f"refusing to listen on {host}: it is not a loopback address, and anyone who can reach "
        "it would act as the service principal. Add [[access.clients]] (keys from "
        "`ppproxy keygen`), or set server.allow_anonymous_remote = true if the network in front "
        "of it is controlled, or listen on 127.0.0.1."
    )


def anonymous_warning(config: Config) -> str | None:
    """The warning shown at start and on /_proxy/readyz while anyone may use the proxy."""
    if not config.server.allow_anonymous_remote or config.access.enabled:
        return None
    return (
        "server.allow_anonymous_remote is on and [access] has no clients: anyone who can "
        f"reach {config.server.host}:{config.server.port} acts as the service principal"
    )
