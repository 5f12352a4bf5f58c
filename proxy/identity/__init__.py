"""Token providers that ask Microsoft Entra ID through MSAL: one small class per kind of MSAL
application, all behind :class:`proxy.tokens.TokenProvider`.

============================  ==========================  ==================================
identity (config)             provider                    MSAL application
============================  ==========================  ==================================
client secret, certificate,   :class:`ConfidentialProvider`  ``ConfidentialClientApplication``
workload identity
username and password         :class:`UsernamePasswordProvider`  ``PublicClientApplication``
managed identity              :class:`ManagedIdentityProvider`  ``ManagedIdentityClient``
============================  ==========================  ==================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from ..config import IdentityConfig, OutboundConfig
from ..credential_files import literal_secret_warning
from ._msal import (
    MsalProvider,
    NoHttpCache,
    NoStoreCache,
    PinnedSession,
    parse_retry_after,
)
from .confidential import ConfidentialProvider
from .managed import ManagedIdentityProvider
from .public import UsernamePasswordProvider

__all__ = [
    "ConfidentialProvider",
    "ManagedIdentityProvider",
    "MsalProvider",
    "NoHttpCache",
    "NoStoreCache",
    "PinnedSession",
    "UsernamePasswordProvider",
    "msal_provider",
    "parse_retry_after",
    "warn_about_literal_secrets",
]


def msal_provider(identity: IdentityConfig, outbound: OutboundConfig) -> MsalProvider:
    """The uncached provider for ``identity`` (wrap it in ``CachingProvider`` to serve)."""
    if identity.managed_identity is not None:
        return ManagedIdentityProvider(identity, outbound)
    if identity.username is not None:
        return UsernamePasswordProvider(identity, outbound)
    return ConfidentialProvider(identity, outbound)


def warn_about_literal_secrets(
    path: Path, identities: Mapping[str, IdentityConfig], others: Sequence[str] = ()
) -> None:
    """Warn once when the config file holds literal secrets (the identities', and ``others``:
    their key paths) that other users can read."""
    keys = [key for identity in identities.values() for key in identity.literal_secrets]
    keys.extend(others)
    text = literal_secret_warning(path, keys)
    if text is not None:
        structlog.get_logger("proxy.identity").warning(
            "config.secrets_readable", path=str(path), message=text
        )
