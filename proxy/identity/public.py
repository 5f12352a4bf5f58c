"""A public client (``msal.PublicClientApplication``) signing a user in with a username and
password (ROPC): the first flow of Microsoft's Power Platform authentication doc.

Microsoft deprecates ROPC and it cannot pass multi-factor authentication: the provider says so
once, at start. MSAL also emits a DeprecationWarning on every call; Python hides warnings raised
inside a library by default, so nothing is changed about warning filters here.
"""

from __future__ import annotations

from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information
import structlog

from ..config import IdentityConfig, OutboundConfig
from ..credential_files import read_first_line
from ._msal import MsalProvider, PinnedSession


class UsernamePasswordProvider(MsalProvider):
    def __init__(self, identity: IdentityConfig, outbound: OutboundConfig) -> None:
        super().__init__(identity, outbound)
        # Looked up here, not at import: a logger cached before logging was configured would
        # write to a stale stream.
        structlog.get_logger("proxy.identity").warning(
            "identity.password_flow_deprecated",
            identity=identity.name,
            message="username/password (ROPC) is deprecated by Microsoft and cannot pass "
            "multi-factor authentication; use a certificate, managed identity or workload "
            "identity federation instead",
        )

    def _build(self, session: PinnedSession, credential: Any) -> Any:
        return msal.PublicClientApplication(self._identity.client_id, **self._common(session))

    def _acquire(self, app: Any, scope: str) -> dict[str, Any]:
        identity = self._identity
        if identity.password_file is not None:
            password = read_first_line(identity.password_file)
        else:
            password = identity.password.reveal() if identity.password is not None else ""
        result: dict[str, Any] = app.acquire_token_by_username_password(
            identity.username, password, [scope]
        )
        return result
