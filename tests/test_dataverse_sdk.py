"""Microsoft's Dataverse SDK for Python (powerplatform-dataverse-client), as its users write it,
pointed at the proxy's HTTPS listener: nothing private changed, every request through the
proxy to the Dataverse stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse.client import DataverseClient

from proxy import cli
from proxy.testing import DataverseUpstream, LocalCA

from .conftest import StartProxy


class StaticCredential:
    """A TokenCredential (the SDK checks the protocol): the proxy replaces its token anyway."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("sdk-token", int(time.time()) + 3600)


@pytest.fixture
async def dv() -> AsyncIterator[DataverseUpstream]:
    async with DataverseUpstream() as server:
        yield server


async def test_dataverse_sdk_through_the_https_listener(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    ca: LocalCA,
    ca_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Create, retrieve, update, delete and a list over three pages. The route is configured as
    proxy.example.toml's: the environment's origin, rewrite_links, and a default page size
    that the SDK's own Prefer overrides."""
    cert, key = ca.write_server_files(tmp_path)
    route = {
        "name": "dv",
        "prefix": "/dv",
        "upstream": dv.url,
        "rewrite_links": True,
        "default_request_headers": {"Prefer": "odata.maxpagesize=500"},
    }
    proxy = await start_proxy([route], server={"tls_cert": str(cert), "tls_key": str(key)})
    base = f"{proxy.url}/dv"
    assert base.startswith("https://127.0.0.1:")
    # The SDK uses requests, which trusts REQUESTS_CA_BUNDLE only (monkeypatch restores it).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))

    def use_sdk() -> dict[str, Any]:
        with DataverseClient(base, StaticCredential()) as client:
            ids = [client.records.create("account", {"name": n}) for n in "abcde"]
            first = client.records.retrieve("account", ids[0], select=["name"])
            client.records.update("account", ids[0], {"name": "a2"})
            pages = [
                [r["name"] for r in page]
                for page in client.records.list_pages(
                    "account", select=["name"], orderby=["name"], page_size=2
                )
            ]
            client.records.delete("account", ids[1])
            gone = client.records.retrieve("account", ids[1])
            name = first["name"] if first else None
            return {"ids": ids, "first": name, "pages": pages, "gone": gone}

    seen = await asyncio.to_thread(use_sdk)
    assert seen["first"] == "a"
    assert seen["pages"] == [["a2", "b"], ["c", "d"], ["e"]]
    assert seen["gone"] is None
    assert set(dv.records("accounts")) == set(seen["ids"]) - {seen["ids"][1]}
    # Every request came through the proxy (its token, never the SDK's), the later pages by
    # the nextLinks the proxy rewrote to itself.
    (token,) = {r.header("Authorization") for r in dv.requests}
    assert token is not None
    assert token.startswith("Bearer ey")  # the identity provider's JWT, not "sdk-token"
    listed = [r for r in dv.requests if r.method == "GET" and "/accounts?" in r.raw_path]
    assert len(listed) == 3
    assert all("$skiptoken=" in r.raw_path for r in listed[1:])
    assert {r.header("Prefer") for r in listed} == {"odata.maxpagesize=2"}


async def test_readme_recipe_local_tls_and_requests_ca_bundle_from_ppproxy_ca_path(
    start_proxy: StartProxy,
    dv: DataverseUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README's recipe as written: tls = "local", REQUESTS_CA_BUNDLE="$(ppproxy ca --path)",
    the SDK at https://localhost:PORT/<prefix>; it verifies the local CA's certificate."""
    config = tmp_path / "proxy.toml"
    config.write_text('[server]\nstate_dir = "state"\n')
    assert cli.main(["ca", "--path", "--config", str(config)], {}) == 0
    bundle = capsys.readouterr().out.strip()
    assert bundle == str(tmp_path / "state" / "tls" / "ca.pem")
    route = {"name": "dataverse", "prefix": "/dataverse", "upstream": dv.url, "rewrite_links": True}
    server = {"tls": "local", "state_dir": str(tmp_path / "state")}
    proxy = await start_proxy([route], server=server)
    base = f"https://localhost:{proxy.url.rsplit(':', 1)[1]}/dataverse"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)

    def use_sdk() -> list[str]:
        with DataverseClient(base, ProxyHasTheToken()) as client:
            client.records.create("account", {"name": "Contoso"})
            return [
                account["name"]
                for page in client.records.list_pages("account", select=["name"], page_size=500)
                for account in page
            ]

    assert await asyncio.to_thread(use_sdk) == ["Contoso"]
    assert {r.header("Authorization") for r in dv.requests} != {"Bearer unused"}
    # Without the bundle requests refuses the listener: the trust really comes from that file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with pytest.raises(requests.exceptions.SSLError):
        await asyncio.to_thread(requests.get, f"{base}/api/data/v9.2/accounts", timeout=10)


class ProxyHasTheToken:  # README's credential, word for word
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("unused", int(time.time()) + 3600)
