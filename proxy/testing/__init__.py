"""Local servers for testing the proxy without the network: an HTTPS identity provider
that speaks Microsoft Entra ID's v2 endpoints, an echo upstream, and a Dataverse-like upstream
(CRUD, paging, ``$batch``, service-protection 429s).

All are real aiohttp servers bound to loopback only. Needs the ``testing`` extra
(trustme, PyJWT with cryptography)::

    ca = LocalCA()
    async with IdentityProvider(ca) as idp, EchoUpstream() as upstream:
        ...  # authority f"{idp.authority_host}/{idp.tenant}", upstream at upstream.url
"""

from proxy.testing._assertions import Federation
from proxy.testing.bap import AdminApplications
from proxy.testing.ca import LocalCA
from proxy.testing.connect import ConnectProxy
from proxy.testing.credentials import ClientCertificate, WorkloadIssuer
from proxy.testing.dataverse import DataverseUpstream
from proxy.testing.echo import GZIP_BODY, EchoUpstream, Received, pattern, pattern_sha256
from proxy.testing.idp import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    IdentityProvider,
    TokenRequest,
)
from proxy.testing.msi import ManagedIdentityEndpoint

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "GZIP_BODY",
    "AdminApplications",
    "ClientCertificate",
    "ConnectProxy",
    "DataverseUpstream",
    "EchoUpstream",
    "Federation",
    "IdentityProvider",
    "LocalCA",
    "ManagedIdentityEndpoint",
    "Received",
    "TokenRequest",
    "WorkloadIssuer",
    "pattern",
    "pattern_sha256",
]
