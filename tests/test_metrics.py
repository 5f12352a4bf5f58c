"""/_proxy/metrics: Prometheus text with the documented names, fed by real traffic."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import StartProxy


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_after_traffic(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    idp: IdentityProvider,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy(
        [
            {"name": "echo", "prefix": "/echo", "upstream": echo.url, "max_concurrency": 4},
            {"name": "bad", "prefix": "/bad", "upstream": echo.url, "scope": "nonsense"},
        ]
    )
    for _ in range(3):
        async with client.post(f"{proxy.url}/echo/x", data=b"12345") as resp:
            assert resp.status == 200
    async with client.get(f"{proxy.url}/bad/x") as resp:
        assert resp.status == 503
    async with client.get(f"{proxy.url}/_proxy/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    got = samples(text)
    assert (
        got[
            (
                "ppproxy_requests_total",
                (("method", "POST"), ("route", "echo"), ("status_class", "2xx")),
            )
        ]
        == 3
    )
    assert (
        got[
            (
                "ppproxy_requests_total",
                (("method", "GET"), ("route", "bad"), ("status_class", "5xx")),
            )
        ]
        == 1
    )
    assert got[("ppproxy_request_bytes_total", (("route", "echo"),))] == 15
    assert got[("ppproxy_response_bytes_total", (("route", "echo"),))] > 0
    assert got[("ppproxy_request_duration_seconds_count", (("route", "echo"),))] == 3
    buckets = [
        value
        for (name, labels), value in got.items()
        if name == "ppproxy_request_duration_seconds_bucket" and ("route", "echo") in labels
    ]
    assert buckets == sorted(buckets)  # cumulative, in order of le
    assert buckets[-1] == 3  # le="+Inf" holds every observation
    assert (
        got[("ppproxy_request_duration_seconds_bucket", (("le", "10.0"), ("route", "echo")))] == 3
    )
    assert 0 < got[("ppproxy_request_duration_seconds_sum", (("route", "echo"),))] < 3 * 5
    assert got[("ppproxy_upstream_duration_seconds_count", (("route", "echo"),))] == 3
    assert got[("ppproxy_requests_in_flight", (("route", "echo"),))] == 0
    assert got[("ppproxy_requests_queued", (("route", "echo"),))] == 0
    scope = f"{echo.url}/.default"
    key = (("identity", "default"), ("result", "success"), ("scope", scope))
    assert got[("ppproxy_token_requests_total", key)] == 1
    assert (
        3500
        < got[("ppproxy_token_expiry_seconds", (("identity", "default"), ("scope", scope)))]
        <= 3600
    )
    assert got[("ppproxy_identity_errors_total", (("code", "invalid_scope"),))] == 1
    assert "Bearer" not in text


async def test_metrics_from_this_machine_still_checks_host(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """Scrapers that reach a pod by IP are exempt from the Host allowlist, but a browser on this
    machine (loopback peer, the DNS-rebinding case) is not."""
    proxy = await start_proxy()
    async with client.get(
        f"{proxy.url}/_proxy/metrics", headers={"Host": "rebound.example"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "host_not_allowed"
