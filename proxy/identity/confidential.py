"""A confidential client (``msal.ConfidentialClientApplication``): a client secret, a
certificate, or a federated token (workload identity), asking for app tokens with
``acquire_token_for_client``, and for tokens for a signed-in member with
``acquire_token_on_behalf_of`` (:meth:`ConfidentialProvider.token_on_behalf_of`).

The secret file and the federated token file are re-read for every token request, and a
certificate file is read again too, so rotation on disk is picked up: the application is built
anew when the credential's digest changes.
"""

from __future__ import annotations

from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information

from ..credential_files import load_certificate, read_first_line, read_token_file
from ..tokens import Token
from ._msal import MsalProvider, PinnedSession, digest


class ConfidentialProvider(MsalProvider):
    def _credential(self) -> tuple[str, Any]:
        identity = self._identity
        if identity.certificate_path is not None:
            data = identity.certificate_path.read_bytes()
            password = identity.read_certificate_password()
            cert = load_certificate(identity.certificate_path, password)
            key = digest(data + (password or "").encode())  # a new password file: rebuilt too
            return key, cert.msal_credential(send_chain=identity.send_certificate_chain)
        if identity.federated_token_file is not None:
            token_file = identity.federated_token_file
            # MSAL calls this for every token request: the platform rotates the file.
            return "federated", {"client_assertion": lambda: read_token_file(token_file)}
        if identity.client_secret_file is not None:
            secret = read_first_line(identity.client_secret_file)
        else:
            assert identity.client_secret is not None
            secret = identity.client_secret.reveal()
        return digest(secret.encode()), secret

    def _build(self, session: PinnedSession, credential: Any) -> Any:
        return msal.ConfidentialClientApplication(
            self._identity.client_id, client_credential=credential, **self._common(session)
        )

    def _acquire(self, app: Any, scope: str) -> dict[str, Any]:
        result: dict[str, Any] = app.acquire_token_for_client([scope])
        return result

    async def token_on_behalf_of(self, assertion: str, scope: str) -> Token:
        """A token for ``scope`` carrying the member whose access token is ``assertion`` (the
        on-behalf-of flow: the jwt-bearer grant with ``requested_token_use=on_behalf_of``)."""

        def acquire(app: Any) -> dict[str, Any]:
            result: dict[str, Any] = app.acquire_token_on_behalf_of(assertion, [scope])
            return result

        return await self._run(acquire, scope)
