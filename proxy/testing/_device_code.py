"""The device authorization grant (RFC 8628): the authorization request (§3.1) and the
token request (§3.4), approved by ``device_sign_in``."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from proxy.testing._claims import signed_in_user
from proxy.testing._directory import Directory
from proxy.testing._entra import DEFAULT_SUFFIX, EntraError
from proxy.testing._grant import Call, Granted, Outcome, public_client_only, resource_scope

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class DeviceCodes:
    """Device codes handed out, each with the client and resource scope it was asked for."""

    def __init__(self) -> None:
        self._codes: dict[str, tuple[str, str]] = {}

    def authorize(self, form: Mapping[str, str], authority_host: str) -> dict[str, Any]:
        """Hand out a code (RFC 8628 §3.2) for the form's client and scope."""
        code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        self._codes[code] = (form.get("client_id", ""), resource_scope(form.get("scope", "")))
        uri = f"{authority_host}/devicelogin"
        return {
            "device_code": code,
            "user_code": user_code,
            "verification_uri": uri,
            "expires_in": 900,
            "interval": 1,
            "message": f"To sign in, use a web browser to open the page {uri} and enter "
            f"the code {user_code} to authenticate.",
        }

    def scope(self, code: str) -> str:
        """The resource scope the code was asked for ("" for an unknown code)."""
        return self._codes.get(code, ("", ""))[1]

    def check(self, call: Call, directory: Directory) -> Outcome:
        """A user token once ``device_sign_in`` approves; pending until then."""
        problem = public_client_only(GRANT, call.client_id, directory.public_clients)
        if problem is not None:
            return problem
        if call.form.get("device_code") not in self._codes:
            return EntraError(
                400,
                "expired_token",
                70020,
                "The provided value for the input parameter 'device_code' is not valid.",
            )
        if directory.device_sign_in is None:
            return EntraError(
                400,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        return Granted(
            audience=call.scope.removesuffix(DEFAULT_SUFFIX),
            identity=signed_in_user(directory.tenant_id, directory.device_sign_in),
            scope=call.scope,
        )
