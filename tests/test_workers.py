"""`server.workers = 2`: two processes share the port, metrics add up, SIGTERM stops both."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import workers
from proxy.testing import EchoUpstream, IdentityProvider

from .processes import serve_echo

BOTH_LISTENING = "server.listening.*\n(.|\n)*server.listening"
pytestmark = pytest.mark.skipif(not workers.supported(), reason="needs SO_REUSEPORT (POSIX)")


async def test_two_workers_share_the_port_and_metrics_add_up(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    served = await serve_echo(tmp_path, idp, echo, ca_file, listening=BOTH_LISTENING, workers=2)
    proc, port = served.proc, served.port
    base = f"http://127.0.0.1:{port}"
    total = 60
    for _ in range(total):  # a new connection each time: the kernel spreads them
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(f"{base}/echo/x") as resp,
        ):
            assert resp.status == 200
    await asyncio.sleep(1.5)  # the workers publish their live state once a second
    async with aiohttp.ClientSession() as s, s.get(f"{base}/_proxy/metrics") as resp:
        text = await resp.text()
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ppproxy_requests_total" and sample.labels.get("route") == "echo"
    )
    assert counted == total  # whichever worker answered the scrape
    durations = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("ppproxy_request_duration_seconds")
        and sample.labels.get("route") == "echo"
    }
    assert durations[("ppproxy_request_duration_seconds_count", None)] == total
    assert durations[("ppproxy_request_duration_seconds_bucket", "+Inf")] == total
    assert 0 < durations[("ppproxy_request_duration_seconds_sum", None)] < total * 5
    token_requests = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ppproxy_token_requests_total" and sample.labels["result"] == "success"
    )
    assert token_requests == len(idp.requests) == 2  # one token cache per worker
    proc.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    events = [json.loads(line) for line in rest.decode().splitlines() if line.startswith("{")]
    assert any(e["event"] == "workers.stopped" for e in events)


async def test_requests_spread_over_both_workers(
    tmp_path: Path, idp: IdentityProvider, echo: EchoUpstream, ca_file: Path
) -> None:
    served = await serve_echo(tmp_path, idp, echo, ca_file, listening=BOTH_LISTENING, workers=2)
    proc, port = served.proc, served.port
    for _ in range(40):
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(f"http://127.0.0.1:{port}/echo/x") as resp,
        ):
            assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(proc.communicate(), 30)
    events = [json.loads(line) for line in rest.decode().splitlines() if line.startswith("{")]
    assert {e.get("worker") for e in events if e["event"] == "request"} == {0, 1}
