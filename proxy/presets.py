"""Power Platform hosts, scopes and clouds, in one place.

Sources:
- Power Platform API authentication
  (learn.microsoft.com/power-platform/admin/programmability-authentication-v2):
  token endpoint ``https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`` and the scope
  ``https://service.powerapps.com//.default`` (the double slash is part of the resource ID).
- Power Automate Management API: scope ``https://service.flow.microsoft.com//.default``.
- Power Platform API (api.powerplatform.com): scope ``https://api.powerplatform.com/.default``.
- Dataverse Web API: the environment URL's origin followed by ``/.default``.
- Entra ID authority hosts per cloud:
  learn.microsoft.com/entra/identity-platform/authentication-national-cloud.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    """What a route preset fills in; ``None`` means the user must give it."""

    upstream: str | None
    scope: str | None


POWERAPPS_SCOPE = "https://service.powerapps.com//.default"

PRESETS: dict[str, Preset] = {
    "powerapps": Preset("https://api.powerapps.com", POWERAPPS_SCOPE),
    "bap": Preset("https://api.bap.microsoft.com", POWERAPPS_SCOPE),
    "flow": Preset(
        "https://api.flow.microsoft.com", "https://service.flow.microsoft.com//.default"
    ),
    "powerplatform": Preset(
        "https://api.powerplatform.com", "https://api.powerplatform.com/.default"
    ),
    # Dataverse lives on a per-environment host: the user gives `upstream`, the scope follows it.
    "dataverse": Preset(None, None),
}

# The routes a configuration without [[routes]] gets: every preset that needs no upstream.
DEFAULT_ROUTE_PRESETS = ("powerapps", "bap", "flow", "powerplatform")

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"

# Authority hosts MSAL knows; any other host is used as given, without instance discovery.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",  # public cloud
        "login.microsoftonline.us",  # US Government
        "login.chinacloudapi.cn",  # China (21Vianet)
        "login.partner.microsoftonline.cn",  # China, older name
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    }
)


def default_scope(upstream: str) -> str:
    """The scope for an upstream that names none: its origin followed by ``/.default``."""
    scheme, _, rest = upstream.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/.default"
