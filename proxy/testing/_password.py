"""The resource owner password credentials grant (RFC 6749 §4.3) for managed users, and
the user-realm lookup MSAL makes before it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from proxy.testing._claims import signed_in_user
from proxy.testing._directory import Directory
from proxy.testing._entra import DEFAULT_SUFFIX, EntraError
from proxy.testing._grant import Call, Granted, Outcome, public_client_only

GRANT = "password"


def check_user(
    *, tenant: str, username: str, password: str, users: Mapping[str, str]
) -> EntraError | None:
    """A managed user's name (case-insensitive) and password."""
    expected = {u.lower(): p for u, p in users.items()}.get(username.lower())
    if expected is None:
        return EntraError(
            400,
            "invalid_grant",
            50034,
            f"The user account {{EmailHidden}} does not exist in the {tenant} directory. To "
            "sign into this application, the account must be added to the directory.",
        )
    # Comparing digests takes the same time wherever the passwords differ.
    digest = hashlib.sha256
    if digest(password.encode()).digest() != digest(expected.encode()).digest():
        return EntraError(
            400,
            "invalid_grant",
            50126,
            "Error validating credentials due to invalid username or password.",
        )
    return None


def check(call: Call, directory: Directory) -> Outcome:
    """A user token for a public client that sends a known user's name and password."""
    username = call.form.get("username", "")
    problem = public_client_only(GRANT, call.client_id, directory.public_clients) or check_user(
        tenant=call.tenant,
        username=username,
        password=call.form.get("password", ""),
        users=directory.users,
    )
    if problem is not None:
        return problem
    return Granted(
        audience=call.scope.removesuffix(DEFAULT_SUFFIX),
        identity=signed_in_user(directory.tenant_id, username),
        scope=call.scope,
    )


def user_realm(username: str, users: Mapping[str, str]) -> dict[str, Any]:
    """The ``/common/userrealm`` answer: Managed for the domain of a known user."""
    domain = username.rpartition("@")[2]
    known = any(u.lower().endswith("@" + domain.lower()) for u in users)
    return {
        "ver": "1.0",
        "account_type": "Managed" if known else "Unknown",
        "domain_name": domain,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_audience_urn": "urn:federation:MicrosoftOnline",
    }
