"""Outbound proxies (issue 13, item 3): remote hosts go through the configured proxy; loopback
destinations (upstreams and identity providers) and plain-http upstreams never do.

Remote hosts are names under ppproxy.test, which the CONNECT proxy (proxy.testing) maps to
127.0.0.1 (and the local CA's certificate covers): nothing leaves this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError, OutboundConfig, from_dict
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import CLIENT, SECRET, StartProxy, config_dict
from .forward_proxy import ConnectProxy


def remote(url: str, name: str) -> str:
    """``url`` (https://127.0.0.1:PORT) under a name the forward proxy maps to loopback."""
    return url.replace("127.0.0.1", f"{name}.ppproxy.test")


def remote_config(
    idp: IdentityProvider, ca_file: Path, upstream: str, **tables: Any
) -> dict[str, Any]:
    raw = config_dict(idp, ca_file, [{"name": "t", "prefix": "/t", "upstream": upstream}])
    raw["identities"]["default"]["authority_host"] = remote(idp.authority_host, "login")
    for key, value in tables.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1]


@pytest.mark.parametrize(
    ("env", "outbound"),
    [
        ({"HTTPS_PROXY": "{proxy}"}, {}),
        ({"all_proxy": "{proxy}"}, {}),
        ({"NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9"}, {"proxy": "{proxy}"}),
    ],
)
async def test_remote_hosts_go_through_the_proxy(
    start_proxy: StartProxy,
    tls_echo: EchoUpstream,
    idp: IdentityProvider,
    ca_file: Path,
    client: aiohttp.ClientSession,
    env: dict[str, str],
    outbound: dict[str, str],
) -> None:
    """The identity provider's and the upstream's remote names are reached through the proxy
    (the environment's, or outbound.proxy whatever the environment says)."""
    async with ConnectProxy() as corp:
        env = {k: v.format(proxy=corp.url) for k, v in env.items()}
        outbound = {k: v.format(proxy=corp.url) for k, v in outbound.items()}
        raw = remote_config(idp, ca_file, remote(tls_echo.url, "upstream"), outbound=outbound)
        proxy = await start_proxy(raw=raw, env=env)
        async with client.get(f"{proxy.url}/t/x") as resp:
            assert resp.status == 200
    assert f"login.ppproxy.test:{port_of(idp.authority_host)}" in corp.tunnels
    assert f"upstream.ppproxy.test:{port_of(tls_echo.url)}" in corp.tunnels


@pytest.mark.parametrize(
    ("env", "outbound"),
    [
        ({"HTTPS_PROXY": "{proxy}", "HTTP_PROXY": "{proxy}"}, {}),
        ({"ALL_PROXY": "{proxy}"}, {}),
        ({}, {"proxy": "{proxy}"}),
    ],
)
async def test_loopback_and_plain_http_never_through_a_proxy(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    tls_echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
    env: dict[str, str],
    outbound: dict[str, str],
) -> None:
    """A loopback identity provider, a loopback https upstream and a plain-http upstream are
    reached directly: the proxy never sees a request, so never a token in clear."""
    async with ConnectProxy() as corp:
        routes = [
            {"name": "plain", "prefix": "/plain", "upstream": echo.url},
            {"name": "tls", "prefix": "/tls", "upstream": tls_echo.url},
        ]
        proxy = await start_proxy(
            routes,
            env={k: v.format(proxy=corp.url) for k, v in env.items()},
            outbound={k: v.format(proxy=corp.url) for k, v in outbound.items()},
        )
        for path in ("/plain/x", "/tls/x"):
            async with client.get(f"{proxy.url}{path}") as resp:
                assert resp.status == 200, path
    assert corp.requests == []
    assert len(echo.requests) == len(tls_echo.requests) == 1
    assert idp.requests[-1].client_id == CLIENT


@pytest.mark.parametrize(
    ("outbound", "env", "named"),
    [
        ({"proxy": "http://corp-proxy.example:3128"}, {}, "outbound.proxy"),
        ({}, {"HTTP_PROXY": "http://corp-proxy.example:3128"}, "HTTP_PROXY"),
    ],
)
def test_plain_http_remote_upstream_with_a_proxy_names_both_keys(
    outbound: dict[str, str], env: dict[str, str], named: str
) -> None:
    raw = {
        "identities": {"a": {"tenant_id": "t", "client_id": "c", "client_secret": SECRET}},
        "routes": [{"name": "r", "upstream": "http://upstream.example"}],
        "outbound": outbound,
    }
    with pytest.raises(ConfigError) as e:
        from_dict(raw, env, base_dir=Path())
    assert any("routes[0].upstream" in p and named in p for p in e.value.problems), e.value


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://api.bap.microsoft.com", {"https_proxy": "http://p:1"}, "http://p:1"),
        ("https://api.bap.microsoft.com", {"all_proxy": "http://p:1"}, "http://p:1"),
        ("https://api.bap.microsoft.com", {"http_proxy": "http://p:1"}, None),  # https only
        (
            "https://api.bap.microsoft.com",
            {"https_proxy": "http://p:1", "no_proxy": ".microsoft.com"},
            None,
        ),
    ],
)
def test_proxy_from_the_environment(url: str, env: dict[str, str], expected: str | None) -> None:
    assert OutboundConfig(proxy_env=env).proxy_for(url) == expected
    assert OutboundConfig(proxy="http://p:2", proxy_env=env).proxy_for(url) == "http://p:2"


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443",
        "https://localhost",
        "https://[::1]:9",
        "https://[::ffff:127.0.0.1]:9",
        "http://127.0.0.1:80",
        "http://other.example",  # never plain http, wherever it goes
    ],
)
def test_never_a_proxy_for_loopback_or_plain_http(url: str) -> None:
    env = {"https_proxy": "http://p:1", "http_proxy": "http://p:1", "all_proxy": "http://p:1"}
    assert OutboundConfig(proxy_env=env).proxy_for(url) is None
    assert OutboundConfig(proxy="http://p:2", proxy_env=env).proxy_for(url) is None
