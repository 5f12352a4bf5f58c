"""Presets follow the cloud of the route's identity: hosts, audiences and authority."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, from_dict

EXPECTED = {
    "public": (
        "https://login.microsoftonline.com",
        {
            "powerapps": ("https://api.powerapps.com", "https://service.powerapps.com//.default"),
            "bap": ("https://api.bap.microsoft.com", "https://service.powerapps.com//.default"),
            "flow": (
                "https://api.flow.microsoft.com",
                "https://service.flow.microsoft.com//.default",
            ),
            "powerplatform": (
                "https://api.powerplatform.com",
                "https://api.powerplatform.com/.default",
            ),
        },
    ),
    "gcc": (
        "https://login.microsoftonline.com",
        {
            "powerapps": (
                "https://gov.api.powerapps.us",
                "https://gov.service.powerapps.us//.default",
            ),
            "bap": (
                "https://gov.api.bap.microsoft.us",
                "https://gov.service.powerapps.us//.default",
            ),
            "flow": (
                "https://gov.api.flow.microsoft.us",
                "https://gov.service.flow.microsoft.us//.default",
            ),
            "powerplatform": (
                "https://api.gov.powerplatform.microsoft.us",
                "https://api.gov.powerplatform.microsoft.us/.default",
            ),
        },
    ),
    "gcc-high": (
        "https://login.microsoftonline.us",
        {
            "powerapps": (
                "https://high.api.powerapps.us",
                "https://high.service.powerapps.us//.default",
            ),
            "bap": (
                "https://high.api.bap.microsoft.us",
                "https://high.service.powerapps.us//.default",
            ),
            "flow": (
                "https://high.api.flow.microsoft.us",
                "https://high.service.flow.microsoft.us//.default",
            ),
            "powerplatform": (
                "https://api.high.powerplatform.microsoft.us",
                "https://api.high.powerplatform.microsoft.us/.default",
            ),
        },
    ),
    "dod": (
        "https://login.microsoftonline.us",
        {
            "powerapps": (
                "https://api.apps.appsplatform.us",
                "https://service.apps.appsplatform.us//.default",
            ),
            "bap": (
                "https://api.bap.appsplatform.us",
                "https://service.apps.appsplatform.us//.default",
            ),
            "flow": (
                "https://api.flow.appsplatform.us",
                "https://service.flow.appsplatform.us//.default",
            ),
            "powerplatform": (
                "https://api.appsplatform.us",
                "https://api.appsplatform.us/.default",
            ),
        },
    ),
    "china": (
        "https://login.chinacloudapi.cn",
        {
            "powerapps": ("https://api.powerapps.cn", "https://service.powerapps.cn//.default"),
            "bap": (
                "https://api.bap.partner.microsoftonline.cn",
                "https://service.powerapps.cn//.default",
            ),
            "flow": ("https://api.powerautomate.cn", "https://service.powerautomate.cn//.default"),
            "powerplatform": (
                "https://api.powerplatform.partner.microsoftonline.cn",
                "https://api.powerplatform.partner.microsoftonline.cn/.default",
            ),
        },
    ),
}
DATAVERSE = {
    "public": "https://contoso.crm.dynamics.com",
    "gcc": "https://contoso.crm9.dynamics.com",
    "gcc-high": "https://contoso.crm.microsoftdynamics.us",
    "dod": "https://contoso.crm.appsplatform.us",
    "china": "https://contoso.crm.dynamics.cn",
}
CASES = [
    (cloud, preset, upstream, scope)
    for cloud, (_, table) in EXPECTED.items()
    for preset, (upstream, scope) in table.items()
]


def identity(cloud: str, **extra: str) -> dict[str, str]:
    return {"tenant_id": "t", "client_id": "c", "client_secret": "s", "cloud": cloud, **extra}


@pytest.mark.parametrize(("cloud", "preset", "upstream", "scope"), CASES)
def test_preset_resolves_per_cloud(cloud: str, preset: str, upstream: str, scope: str) -> None:
    config = from_dict(
        {"identities": {"x": identity(cloud)}, "routes": [{"preset": preset}]},
        {},
        base_dir=Path.cwd(),
    )
    [route] = config.routes
    assert (route.upstream, route.scope) == (upstream, scope)


@pytest.mark.parametrize("cloud", list(EXPECTED))
def test_authority_host_and_dataverse_per_cloud(cloud: str) -> None:
    upstream = f"{DATAVERSE[cloud]}/api/data/v9.2"
    config = from_dict(
        {
            "identities": {"x": identity(cloud)},
            "routes": [{"preset": "dataverse", "upstream": upstream}],
        },
        {},
        base_dir=Path.cwd(),
    )
    assert config.identities["x"].authority_host == EXPECTED[cloud][0]
    assert config.routes[0].scope == f"{DATAVERSE[cloud]}/.default"


def test_default_routes_follow_the_only_identity() -> None:
    config = from_dict({"identities": {"x": identity("gcc-high")}}, {}, base_dir=Path.cwd())
    assert [r.upstream for r in config.routes] == [
        "https://high.api.powerapps.us",
        "https://high.api.bap.microsoft.us",
        "https://high.api.flow.microsoft.us",
        "https://api.high.powerplatform.microsoft.us",
    ]


def test_each_route_follows_its_own_identity() -> None:
    config = from_dict(
        {
            "identities": {"pub": identity("public"), "cn": identity("china")},
            "routes": [
                {"name": "a", "preset": "bap", "identity": "pub"},
                {"name": "b", "preset": "bap", "identity": "cn"},
            ],
        },
        {},
        base_dir=Path.cwd(),
    )
    assert [r.upstream for r in config.routes] == [
        "https://api.bap.microsoft.com",
        "https://api.bap.partner.microsoftonline.cn",
    ]


def test_cloud_and_a_disagreeing_authority_host_is_an_error_naming_both() -> None:
    """cloud = "gcc-high" with the commercial host would send GCC High sign-ins there."""
    raw = {
        "identities": {
            "x": identity("gcc-high", authority_host="https://login.microsoftonline.com")
        }
    }
    with pytest.raises(ConfigError) as e:
        from_dict(raw, {}, base_dir=Path.cwd())
    [problem] = e.value.problems
    assert problem.startswith("identities.x.authority_host: 'https://login.microsoftonline.com'")
    assert "cloud = 'gcc-high' (https://login.microsoftonline.us)" in problem


@pytest.mark.parametrize(
    ("cloud", "host"),
    [
        ("gcc-high", "https://login.microsoftonline.us/"),
        ("gcc", "https://login.microsoftonline.com"),
        ("china", "https://login.partner.microsoftonline.cn"),
    ],
)
def test_cloud_and_its_own_authority_host_agree(cloud: str, host: str) -> None:
    config = from_dict(
        {"identities": {"x": identity(cloud, authority_host=host)}}, {}, base_dir=Path.cwd()
    )
    assert config.identities["x"].authority_host == host.rstrip("/")


def test_authority_host_alone_is_used_as_given() -> None:
    """Without cloud, any https origin is the authority (a private or test authority)."""
    raw = {"identities": {"x": {"tenant_id": "t", "client_id": "c", "client_secret": "s",
                                "authority_host": "https://login.example.test/"}}}  # fmt: skip
    config = from_dict(raw, {}, base_dir=Path.cwd())
    assert config.identities["x"].authority_host == "https://login.example.test"
    assert config.routes[0].upstream == "https://api.powerapps.com"
