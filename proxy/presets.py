"""Power Platform hosts, scopes and clouds, in one place.

Sources (the table :data:`CLOUDS` follows them; where they disagree it says so):

- Power Platform API authentication
  (learn.microsoft.com/power-platform/admin/programmability-authentication-v2): token endpoint
  ``https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`` and the scope
  ``https://service.powerapps.com//.default`` (the double slash is part of the resource ID).
- Power Automate Management API: scope ``https://service.flow.microsoft.com//.default``.
- Power Platform API (api.powerplatform.com): scope ``https://api.powerplatform.com/.default``.
- Dataverse Web API: the environment URL's origin followed by ``/.default``.
- Entra ID authority hosts per cloud:
  learn.microsoft.com/entra/identity-platform/authentication-national-cloud. GCC uses the public
  Entra ID (login.microsoftonline.com); GCC High and DoD use login.microsoftonline.us; China
  (21Vianet) login.chinacloudapi.cn (login.partner.microsoftonline.cn is the newer name).
- Sovereign-cloud API hosts: Microsoft.PowerApps.Administration.PowerShell's
  ``Add-PowerAppsAccount -Endpoint usgov|usgovhigh|dod|china`` (AuthModule.psm1: flow, powerApps
  and bap endpoints and their audiences ``https://gov.service.powerapps.us/`` ...), the Power
  Platform Build Tools (``api.bap.partner.microsoftonline.cn`` for China) and Power Automate's
  "IP addresses and URLs" page (learn.microsoft.com/power-automate/ip-address-configuration:
  ``*.api.gov.powerplatform.microsoft.us``, ``*.api.high.powerplatform.microsoft.us``,
  ``*.api.appsplatform.us``, ``*.api.powerplatform.partner.microsoftonline.cn``).
- Issuers of v1 access tokens per cloud (``iss`` = ``https://<host>/<tenant id>/``):
  ``sts.windows.net`` in the public cloud and in Azure Government (GCC, GCC High, DoD),
  ``sts.chinacloudapi.cn`` in China; v2 tokens name the issuer the tenant's OpenID metadata
  gives (learn.microsoft.com/entra/identity-platform/access-token-claims-reference, and
  Microsoft Q&A "What are the token issuers for the sovereign clouds").
- Dataverse hosts per cloud (the scope follows the upstream, so nothing to table):
  ``*.crm.dynamics.com``, ``*.crm9.dynamics.com`` (GCC), ``*.crm.microsoftdynamics.us``
  (GCC High), ``*.crm.appsplatform.us`` (DoD), ``*.crm.dynamics.cn`` (China).

Where the sources disagree:

- The PowerShell module names the sovereign Power Apps and Flow audiences with a trailing slash
  (``https://gov.service.powerapps.us/``), so their scopes get the same double slash as the public
  ``https://service.powerapps.com//.default``; the Power Platform Terraform provider asks for
  ``https://gov.service.powerapps.us/.default`` (single slash). Entra accepts the audience only as
  registered, so the double slash, as the public documentation prescribes, is used throughout.
- China's Flow API: the PowerShell module and the PAC CLI use ``api.powerautomate.cn`` with
  audience ``https://service.powerautomate.cn/``; some community scripts guess
  ``api.flow.microsoft.cn``, which does not exist in any Microsoft source.
- The Power Platform API's sovereign audiences are not documented separately; like the public
  cloud, each is taken to be the host itself (``https://<host>/.default``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    """What a route preset fills in; ``None`` means the user must give it."""

    upstream: str | None
    scope: str | None


@dataclass(frozen=True, slots=True)
class Cloud:
    """One Microsoft cloud: its Entra ID host and the Power Platform presets there."""

    name: str
    authority_host: str
    presets: dict[str, Preset]

    @property
    def bap_url(self) -> str:
        return self.presets["bap"].upstream or ""

    @property
    def bap_scope(self) -> str:
        return self.presets["bap"].scope or ""


def _cloud(
    name: str, authority: str, powerapps: str, service: str, bap: str, flow: str, flow_aud: str,
    platform: str,
) -> Cloud:  # fmt: skip
    powerapps_scope = f"https://{service}//.default"
    return Cloud(
        name,
        f"https://{authority}",
        {
            "powerapps": Preset(f"https://{powerapps}", powerapps_scope),
            "bap": Preset(f"https://{bap}", powerapps_scope),
            "flow": Preset(f"https://{flow}", f"https://{flow_aud}//.default"),
            "powerplatform": Preset(f"https://{platform}", f"https://{platform}/.default"),
            # Dataverse lives on a per-environment host: the user gives `upstream`, the scope
            # follows it.
            "dataverse": Preset(None, None),
        },
    )


# name, authority host, Power Apps API, Power Apps audience host, BAP API, Flow API,
# Flow audience host, Power Platform API.
CLOUDS: dict[str, Cloud] = {
    c.name: c
    for c in (
        _cloud(
            "public", "login.microsoftonline.com", "api.powerapps.com", "service.powerapps.com",
            "api.bap.microsoft.com", "api.flow.microsoft.com", "service.flow.microsoft.com",
            "api.powerplatform.com",
        ),
        _cloud(
            "gcc", "login.microsoftonline.com", "gov.api.powerapps.us", "gov.service.powerapps.us",
            "gov.api.bap.microsoft.us", "gov.api.flow.microsoft.us",
            "gov.service.flow.microsoft.us", "api.gov.powerplatform.microsoft.us",
        ),
        _cloud(
            "gcc-high", "login.microsoftonline.us", "high.api.powerapps.us",
            "high.service.powerapps.us", "high.api.bap.microsoft.us",
            "high.api.flow.microsoft.us", "high.service.flow.microsoft.us",
            "api.high.powerplatform.microsoft.us",
        ),
        _cloud(
            "dod", "login.microsoftonline.us", "api.apps.appsplatform.us",
            "service.apps.appsplatform.us", "api.bap.appsplatform.us", "api.flow.appsplatform.us",
            "service.flow.appsplatform.us", "api.appsplatform.us",
        ),
        _cloud(
            "china", "login.chinacloudapi.cn", "api.powerapps.cn", "service.powerapps.cn",
            "api.bap.partner.microsoftonline.cn", "api.powerautomate.cn",
            "service.powerautomate.cn", "api.powerplatform.partner.microsoftonline.cn",
        ),
    )
}  # fmt: skip

DEFAULT_CLOUD = "public"
PRESETS: dict[str, Preset] = CLOUDS[DEFAULT_CLOUD].presets
POWERAPPS_SCOPE = "https://service.powerapps.com//.default"

# The routes a configuration without [[routes]] gets: every preset that needs no upstream.
DEFAULT_ROUTE_PRESETS = ("powerapps", "bap", "flow", "powerplatform")

DEFAULT_AUTHORITY_HOST = CLOUDS[DEFAULT_CLOUD].authority_host

# The host in the issuer of v1 access tokens, per cloud (see the sources above).
V1_ISSUER_HOSTS = {
    "public": "sts.windows.net",
    "gcc": "sts.windows.net",
    "gcc-high": "sts.windows.net",
    "dod": "sts.windows.net",
    "china": "sts.chinacloudapi.cn",
}

# Authority hosts MSAL knows; any other host is used as given, without instance discovery.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",  # public cloud
        "login.microsoftonline.us",  # US Government
        "login.chinacloudapi.cn",  # China (21Vianet)
        "login.partner.microsoftonline.cn",  # China, newer name
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    }
)


# Other names of a cloud's Entra ID host (the same service): accepted next to ``cloud``.
AUTHORITY_ALIASES: dict[str, frozenset[str]] = {
    "public": frozenset({"https://login.microsoft.com", "https://login.windows.net"}),
    "china": frozenset({"https://login.partner.microsoftonline.cn"}),
}


def cloud_accepts(cloud: str, authority_host: str) -> bool:
    """Whether ``authority_host`` (an origin) is ``cloud``'s Entra ID host or another name of it."""
    host = authority_host.rstrip("/").lower()
    return host == CLOUDS[cloud].authority_host or host in AUTHORITY_ALIASES.get(cloud, ())


def resource_to_scope(resource: str) -> str:
    """The ``.default`` scope for a v1 resource, as ``az account get-access-token --resource``
    builds it: ``/.default`` appended, so ``https://service.powerapps.com/`` keeps its double
    slash."""
    return f"{resource}/.default"


def preset_for(name: str, cloud: str = DEFAULT_CLOUD) -> Preset | None:
    """The preset ``name`` in ``cloud``; None for an unknown preset (or cloud)."""
    c = CLOUDS.get(cloud)
    return c.presets.get(name) if c is not None else None


def default_scope(upstream: str) -> str:
    """The scope for an upstream that names none: its origin followed by ``/.default``."""
    scheme, _, rest = upstream.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/.default"


def scope_to_resource(scope: str) -> str:
    """The v1 resource for a v2 ``.default`` scope, as managed identity endpoints want it.

    Only the ``/.default`` suffix goes, so ``https://service.powerapps.com//.default`` becomes
    ``https://service.powerapps.com/`` (that resource ID ends in a slash) and
    ``https://api.powerplatform.com/.default`` becomes ``https://api.powerplatform.com``.
    """
    return scope.removesuffix("/.default")
