"""``[access.entra]``: members sign in with Entra ID access tokens for the gateway app; and the
route keys that say how the upstream sees a signed-in caller (``act_as``, ``impersonate``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import presets
from .parse import Problems, cloud_and_authority, get, only, show

if TYPE_CHECKING:  # the model imports [access], which imports this module
    from .model import IdentityConfig, RouteConfig

ACT_AS = ("service", "user")
# Identity kinds that are confidential clients, the only ones the on-behalf-of flow accepts.
CONFIDENTIAL_KINDS = frozenset({"client_secret", "certificate", "workload_identity"})
_KEYS = {"tenant_id", "audience", "cloud", "authority_host", "clock_skew"}


@dataclass(frozen=True, slots=True)
class EntraConfig:
    """Which access tokens sign a member in: from ``tenant_id``, for one of ``audience``."""

    tenant_id: str  # the tenant's GUID, lower case, as tokens carry it in tid and iss
    audience: tuple[str, ...]  # the gateway app's Application ID URI and/or client id
    authority_host: str = presets.DEFAULT_AUTHORITY_HOST
    cloud: str = presets.DEFAULT_CLOUD
    clock_skew: float = 300.0  # seconds allowed around exp and nbf

    @property
    def metadata_url(self) -> str:
        """The tenant's OpenID Connect metadata (it names the v2 issuer and the keys)."""
        return f"{self.authority_host}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def v1_issuer(self) -> str:
        """``iss`` of the tenant's v1 access tokens."""
        return f"https://{presets.V1_ISSUER_HOSTS[self.cloud]}/{self.tenant_id}/"


def parse_entra(raw: Any, p: Problems) -> EntraConfig | None:
    """``[access.entra]``, or None when absent."""
    path = "access.entra"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        p.add(path, "must be a table")
        return None
    only(raw, _KEYS, path, p)
    tenant = get(raw, "tenant_id", str, path, p, "")
    try:
        tenant = str(uuid.UUID(tenant))
    except ValueError:
        # A domain name would do for signing in to Entra, but tokens name the tenant by GUID.
        p.add(
            f"{path}.tenant_id",
            "is required: the tenant's ID, a GUID (Entra ID → Overview → Tenant ID), which "
            f"tokens carry in tid; got {show(tenant) if tenant else 'nothing'}",
        )
    audience = _audience(raw.get("audience"), f"{path}.audience", p)
    cloud, authority = cloud_and_authority(raw, path, p)
    skew = get(raw, "clock_skew", float, path, p, 300.0)
    if not 0 <= skew <= 3600:
        p.add(f"{path}.clock_skew", f"must be between 0 and 3600 seconds, got {skew:g}")
    return EntraConfig(tenant, audience, authority, cloud, skew)


def _audience(value: Any, path: str, p: Problems) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        p.add(
            path,
            'is required: the gateway app\'s Application ID URI (e.g. "api://ppproxy") and its '
            "client id, as a string or a list",
        )
        return ()
    return tuple(dict.fromkeys(v.strip() for v in value))


def check_route_callers(
    raw_routes: Any,
    routes: Sequence[RouteConfig],
    identities: Mapping[str, IdentityConfig],
    entra: EntraConfig | None,
    p: Problems,
) -> None:
    """What ``act_as = "user"`` and ``impersonate = true`` need from the rest of the file."""
    if not isinstance(raw_routes, list):
        return
    # Routes are parsed in order and dropped only when not a table: find each one's index.
    indexes = [i for i, t in enumerate(raw_routes) if isinstance(t, Mapping)]
    for i, route in zip(indexes, routes, strict=False):
        path = f"routes[{i}]"
        if route.act_as == "user":
            _check_user_route(route, identities, entra, f"{path}.act_as", p)
        if route.impersonate and entra is None:
            p.add(
                f"{path}.impersonate",
                "needs [access.entra]: only a signed-in member has an object id to name",
            )


def _check_user_route(
    route: RouteConfig,
    identities: Mapping[str, IdentityConfig],
    entra: EntraConfig | None,
    path: str,
    p: Problems,
) -> None:
    if entra is None:
        p.add(
            path, '"user" needs [access.entra]: members must sign in for the proxy to act as them'
        )
    identity = identities.get(route.identity)
    if identity is None:
        return
    if identity.kind not in CONFIDENTIAL_KINDS:
        p.add(
            path,
            f'"user" needs a confidential client as the route\'s identity (client_secret, '
            f"certificate_path or federated_token_file); identities.{identity.name} is "
            f"{identity.kind.replace('_', ' ')}",
        )
    elif entra is not None and entra.audience and identity.client_id not in entra.audience:
        # On-behalf-of takes only tokens whose audience is the client asking: the gateway app.
        p.add(
            path,
            f'"user" exchanges members\' tokens as identities.{identity.name} (client id '
            f"{identity.client_id}); members' tokens are for the gateway app, so that client id "
            "must be the gateway app's and be listed in access.entra.audience",
        )
