"""A real third-party client, not written here, pointed at the proxy with no credentials.

The client is Microsoft's Power Platform management SDK from PyPI (``powerplatform-management``,
Kiota-generated, httpx underneath). Its base URL is set on the request adapter, it
authenticates with Kiota's anonymous provider (it sends no Authorization header of its own),
and it pages the way Kiota SDKs do: read ``@odata.nextLink`` from the page, then
``with_url(next_link).get()``. The upstream hands back links to its own absolute address, so
the client stays on the proxy only because the route rewrites them.
"""

from __future__ import annotations

import uuid
import warnings

import httpx
import pytest
from aiohttp import web
from kiota_abstractions.api_error import APIError
from kiota_abstractions.authentication import AnonymousAuthenticationProvider
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_http.httpx_request_adapter import HttpxRequestAdapter
from kiota_http.kiota_client_factory import KiotaClientFactory
from mspp_management.service_client_base import ServiceClientBase  # type: ignore[import-untyped]

from .conftest import StartProxy
from .upstreams import upstream

# Importing the SDK's request builder warns, at import time, about the library's own
# deprecated classes: kiota_abstractions.default_query_parameters defines GetQueryParameters and
# each generated builder defines *RequestConfiguration classes whose bodies call
# warnings.warn(DeprecationWarning). Nothing here uses them, and the SDK would import the
# module lazily inside the test, where filterwarnings=error turns the notice into a failure.
# So import it here, once, ignoring exactly those two notices from those two packages.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore",
        message=r"(GetQueryParameters|This class) is deprecated",
        category=DeprecationWarning,
        module=r"(kiota_abstractions|mspp_management)\.",
    )
    from mspp_management.environmentmanagement.environment_groups import (  # type: ignore[import-untyped]
        environment_groups_request_builder,  # noqa: F401  (imported for its side effect)
    )

API_VERSION = "2022-03-01-preview"
PATH = "/environmentmanagement/environmentGroups"
PAGES = 3
PER_PAGE = 2


def group_id(page: int, n: int) -> str:
    return str(uuid.UUID(int=page * 100 + n))


class PowerPlatformApi:
    """Answers like api.powerplatform.com's environment groups list, paged by @odata.nextLink."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[tuple[str, str, str, str]] = []  # method, path+query, auth, request id

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            (
                request.method,
                request.path_qs,
                request.headers.get("Authorization", ""),
                request.headers.get("x-ms-client-request-id", ""),
            )
        )
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"code": "Unauthorized"}}, status=401)
        if request.path != PATH or request.query.get("api-version") != API_VERSION:
            return web.json_response({"title": "Bad Request", "status": 400}, status=400)
        page = int(request.query.get("$skiptoken", "1"))
        body: dict[str, object] = {
            "value": [
                {
                    "id": group_id(page, n),
                    "displayName": f"group {page}.{n}",
                    "createdTime": "2024-05-01T10:00:00Z",
                }
                for n in range(1, PER_PAGE + 1)
            ]
        }
        if page < PAGES:
            body["@odata.nextLink"] = (
                f"{self.url}{PATH}?api-version={API_VERSION}&$skiptoken={page + 1}"
            )
        return web.json_response(body)


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The socket-level transport under Kiota's middleware: sees every request actually sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.request_ids: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(str(request.url))
        response = await super().handle_async_request(request)
        self.request_ids.append(response.headers.get("x-ms-client-request-id", ""))
        return response


class Listing:
    """What the SDK read while paging."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []


async def list_environment_groups(base_url: str, transport: RecordingTransport) -> Listing:
    """Page through every environment group the way a Kiota SDK user does."""
    http_client = KiotaClientFactory.create_with_default_middleware(
        httpx.AsyncClient(transport=transport)
    )
    listing = Listing()
    try:
        # No credentials: the anonymous provider adds no Authorization header.
        adapter = HttpxRequestAdapter(AnonymousAuthenticationProvider(), http_client=http_client)
        adapter.base_url = base_url
        groups = ServiceClientBase(adapter).environmentmanagement.environment_groups
        query = groups.EnvironmentGroupsRequestBuilderGetQueryParameters(api_version=API_VERSION)
        page = await groups.get(RequestConfiguration(query_parameters=query))
        while page is not None:
            listing.names += [g.display_name or "" for g in page.value or []]
            listing.ids += [str(g.id) for g in page.value or []]
            if not page.odata_next_link:
                break
            listing.links.append(page.odata_next_link)
            page = await groups.with_url(page.odata_next_link).get()
    finally:
        await http_client.aclose()
    return listing


async def test_powerplatform_sdk_pages_through_the_proxy(start_proxy: StartProxy) -> None:
    api = PowerPlatformApi()
    transport = RecordingTransport()
    async with upstream(api.handle) as url:
        api.url = url
        proxy = await start_proxy(
            [{"name": "pp", "prefix": "/pp", "upstream": url, "rewrite_links": True}]
        )
        listing = await list_environment_groups(f"{proxy.url}/pp", transport)

    every = [(p, n) for p in range(1, PAGES + 1) for n in range(1, PER_PAGE + 1)]
    # Every item of every page was read, parsed by the SDK's own models.
    assert listing.names == [f"group {p}.{n}" for p, n in every]
    assert listing.ids == [group_id(p, n) for p, n in every]
    # The links the SDK followed were the proxy's, not the upstream's.
    assert listing.links == [
        f"{proxy.url}/pp{PATH}?api-version={API_VERSION}&$skiptoken={p}"
        for p in range(2, PAGES + 1)
    ]
    # The client only ever talked to the proxy...
    assert len(transport.sent) == PAGES
    assert all(sent.startswith(f"{proxy.url}/pp{PATH}?") for sent in transport.sent)
    # ...and each upstream call is one the proxy made on its behalf, with a token it added.
    assert [path for _, path, _, _ in api.seen] == [
        f"{PATH}?api-version={API_VERSION}",
        *(f"{PATH}?api-version={API_VERSION}&$skiptoken={p}" for p in range(2, PAGES + 1)),
    ]
    assert all(method == "GET" for method, _, _, _ in api.seen)
    assert all(auth.startswith("Bearer ey") for _, _, auth, _ in api.seen)
    assert [rid for _, _, _, rid in api.seen] == transport.request_ids
    assert all(transport.request_ids)


async def test_without_rewrite_links_the_sdk_leaves_the_proxy(start_proxy: StartProxy) -> None:
    """The control: the same SDK, route without rewrite_links, follows the upstream's own link."""
    api = PowerPlatformApi()
    transport = RecordingTransport()
    async with upstream(api.handle) as url:
        api.url = url
        proxy = await start_proxy([{"name": "pp", "prefix": "/pp", "upstream": url}])
        with pytest.raises(APIError) as info:
            await list_environment_groups(f"{proxy.url}/pp", transport)

    assert info.value.response_status_code == 401
    first, second = transport.sent
    assert first.startswith(f"{proxy.url}/pp{PATH}?")
    assert second == f"{url}{PATH}?api-version={API_VERSION}&$skiptoken=2"
    assert [auth[:9] for _, _, auth, _ in api.seen] == ["Bearer ey", ""]
