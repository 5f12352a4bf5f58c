"""The on-behalf-of grant as Entra serves it: RFC 7523 §2.1's jwt-bearer grant with
``requested_token_use=on_behalf_of``. A confidential client, authenticated as for client
credentials, trades a user's access token whose audience is that client (its client id or
one of its ``app_id_uris``) for a token to another resource carrying the same user.

The user's token is checked in Entra's order: a published signing key (by ``kid``), the
signature, the time range (five minutes of skew before ``nbf``, none after ``exp``), the
tenant, the audience; then the scope (one resource) and the consent. A
``requested_token_use`` other than ``on_behalf_of`` is answered as a missing one."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

from proxy.testing._assertions import iso_time
from proxy.testing._claims import pairwise_subject, v1_issuer, v2_issuer
from proxy.testing._client_credentials import authenticate
from proxy.testing._directory import Directory
from proxy.testing._entra import DEFAULT_SUFFIX, EntraError, missing
from proxy.testing._grant import Call, Granted, Outcome, resource_of

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_SKEW = 300.0


def assertion_oid(form: Mapping[str, str]) -> str | None:
    """The ``oid`` of the user's token in an on-behalf-of request, read without checking
    it (for the record), or None."""
    try:
        claims = jwt.decode(form.get("assertion", ""), options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    oid = claims.get("oid")
    return oid if isinstance(oid, str) else None


def _invalid_grant(code: int, text: str, suberror: str | None = None) -> EntraError:
    return EntraError(400, "invalid_grant", code, text, suberror=suberror)


def check_user_assertion(
    assertion: str, *, client_id: str, directory: Directory, now: float
) -> dict[str, Any] | EntraError:
    """The claims of a user's token fit for on-behalf-of by ``client_id``, or Entra's error."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims: dict[str, Any] = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return _invalid_grant(50027, "JWT token is invalid or malformed.")
    kid = header.get("kid")
    key = directory.signing_key_for(kid)
    if key is None:
        return _invalid_grant(
            50013,
            "Assertion failed signature validation. [Reason - The key was not found., "
            f"Thumbprint of key used by client: '{kid}']",
        )
    try:
        jwt.decode(assertion, key, algorithms=["RS256"], options={"verify_aud": False,
                   "verify_exp": False, "verify_nbf": False, "verify_iat": False})  # fmt: skip
    except jwt.InvalidTokenError:
        return _invalid_grant(
            50013,
            "Assertion failed signature validation. [Reason - The provided signature value "
            f"did not match the expected signature value., Thumbprint of key used by client: "
            f"'{kid}']",
        )
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if (
        not isinstance(exp, int | float)
        or exp <= now
        or not isinstance(nbf, int | float)
        or nbf > now + _SKEW
    ):
        return _invalid_grant(
            500133,
            "Assertion is not within its valid time range. Ensure that the access token is not "
            "expired before using it for user assertion, or request a new token. Current time: "
            f"{iso_time(now)}, expiry time of assertion {iso_time(exp)}.",
        )
    tenant = directory.tenant_id
    issuers = (v1_issuer(tenant), v2_issuer(directory.authority_host, tenant))
    if claims.get("tid") != tenant or claims.get("iss") not in issuers:
        return _invalid_grant(7000012, "The grant was obtained for a different tenant.")
    audience = claims.get("aud")
    if audience != client_id and audience not in directory.app_id_uris.get(client_id, ()):
        return _invalid_grant(
            500131,
            "Assertion audience does not match the Client app presenting the assertion. The "
            f"audience in the assertion was '{audience}' and the expected audience is "
            f"'{client_id}' or one of the Application Uris of this application with App ID "
            f"'{client_id}'. The downstream client must request a token for the expected "
            "audience (the application that made the OBO request) and this application "
            "should use that token as the assertion.",
        )
    if not isinstance(claims.get("oid"), str):
        return _invalid_grant(50013, "Assertion contains no user object id (oid).")
    return claims


def _scope(scope: str) -> tuple[str, str] | EntraError:
    """The one resource the scopes name and the permissions asked of it."""
    scopes = scope.split()
    if not scopes:
        return EntraError(
            400,
            "invalid_scope",
            70011,
            "The provided request must include a 'scope' input parameter.",
        )
    parsed = [resource_of(s) for s in scopes]
    resources = {resource for resource, _ in parsed}
    if "" in resources or any(not p for _, p in parsed):
        return EntraError(
            400,
            "invalid_scope",
            70011,
            f"The provided value for the input parameter 'scope' is not valid. The scope "
            f"{scope} is not valid.",
        )
    if len(resources) > 1:
        return EntraError(
            400,
            "invalid_scope",
            28000,
            "Provided value for the input parameter scope is not valid because it contains "
            f"more than one resource. Scope {scope} is not valid.",
        )
    # ".default" asks for what was consented; here that is user_impersonation.
    permissions = dict.fromkeys(
        "user_impersonation" if p == DEFAULT_SUFFIX[1:] else p for _, p in parsed
    )
    return resources.pop(), " ".join(permissions)


def check(call: Call, directory: Directory, *, now: float | None = None) -> Outcome:
    """A token for the scope's resource carrying the user of the ``assertion``."""
    if call.form.get("requested_token_use") != "on_behalf_of":
        return missing("requested_token_use")
    assertion = call.form.get("assertion", "")
    if not assertion:
        return missing("assertion")
    problem = authenticate(call, directory)
    if problem is not None:
        return problem
    now = time.time() if now is None else now
    user = check_user_assertion(assertion, client_id=call.client_id, directory=directory, now=now)
    if isinstance(user, EntraError):
        return user
    scope = _scope(call.scope)
    if isinstance(scope, EntraError):
        return scope
    resource, permissions = scope
    if not directory.has_consent(call.client_id, resource):
        return _invalid_grant(
            65001,
            f"The user or administrator has not consented to use the application with ID "
            f"'{call.client_id}' named '{call.client_id}'. Send an interactive authorization "
            "request for this user and resource.",
            suberror="consent_required",
        )
    upn = user.get("upn") or user.get("preferred_username") or user.get("unique_name")
    identity = {
        "oid": user["oid"],
        "sub": pairwise_subject(user["oid"], resource),
        "idtyp": "user",
        "scp": permissions,
        "amr": user.get("amr", ["pwd"]),
        **({"upn": upn, "unique_name": upn} if upn else {}),
        **({"name": user["name"]} if "name" in user else {}),
    }
    return Granted(
        audience=resource,
        identity=identity,
        scope=call.scope,
        lifetime=directory.obo_token_lifetime,
    )
