"""Route matching: longest prefix, segment boundaries, prefix stripping, byte-exact paths."""

from __future__ import annotations

import pytest

from proxy.config import RouteConfig
from proxy.routing import RouteTable


def route(name: str, prefix: str, upstream: str, *, strip: bool = True) -> RouteConfig:
    return RouteConfig(name, prefix, upstream, "s/.default", "default", strip)


TABLE = RouteTable(
    [
        route("bap", "/bap", "https://api.bap.microsoft.com"),
        route("bapx", "/bap/admin", "https://admin.example"),
        route("dv", "/dv", "https://org.crm.dynamics.com/api/data/v9.2"),
        route("keep", "/keep", "https://keep.example/base", strip=False),
    ]
)


@pytest.mark.parametrize(
    ("raw", "name", "url"),
    [
        ("/bap", "bap", "https://api.bap.microsoft.com"),
        ("/bap/", "bap", "https://api.bap.microsoft.com/"),
        ("/bap/x?y=1", "bap", "https://api.bap.microsoft.com/x?y=1"),
        ("/bap?api-version=1", "bap", "https://api.bap.microsoft.com/?api-version=1"),
        ("/bap/admin/x", "bapx", "https://admin.example/x"),
        ("/bap/administrator", "bap", "https://api.bap.microsoft.com/administrator"),
        ("/dv/accounts?$top=1", "dv", "https://org.crm.dynamics.com/api/data/v9.2/accounts?$top=1"),
        ("/keep/a", "keep", "https://keep.example/base/keep/a"),
        # Byte for byte: no decoding, no dot-segment removal, no re-encoding.
        (
            "/bap/a%2Fb/../c//d?q=%20+x&&z",
            "bap",
            "https://api.bap.microsoft.com/a%2Fb/../c//d?q=%20+x&&z",
        ),
        ("/bap/%E2%82%AC;p=1", "bap", "https://api.bap.microsoft.com/%E2%82%AC;p=1"),
    ],
)
def test_match(raw: str, name: str, url: str) -> None:
    target = TABLE.match(raw)
    assert target is not None
    assert target.route.name == name
    assert str(target.url) == url
    # What goes on the request line upstream:
    assert target.url.raw_path_qs == (url[len(str(target.url.origin())) :] or "/")


@pytest.mark.parametrize("raw", ["/bapx", "/ba", "/", "/other/bap", "*", "http://evil/bap"])
def test_no_match(raw: str) -> None:
    assert TABLE.match(raw) is None


def test_root_prefix_forwards_unchanged() -> None:
    table = RouteTable(
        [route("all", "/", "https://api.powerapps.com"), route("b", "/b", "https://b")]
    )
    target = table.match("/providers/x?a=%2F")
    assert target is not None
    assert str(target.url) == "https://api.powerapps.com/providers/x?a=%2F"
    assert table.match("/b/1").route.name == "b"  # type: ignore[union-attr]
