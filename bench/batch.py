"""The cost of checking a Dataverse ``$batch``: 1,000 inner requests, as Microsoft's Python
SDK writes them (absolute URLs on the proxy's address, raw spaces in queries, change sets with
``$1`` references), on a route with ``rewrite_links``, path rules and an ``[access]`` client.

    python bench/batch.py [--runs 20]

1. The check alone, in this process (``proxy.batch.check.check``: read, resolve every inner
   URL, the policy and the grants, rewrite the request lines).
2. Through ``python -m proxy serve`` in its own process, against the Dataverse stand-in
   (``proxy.testing.DataverseUpstream``, HTTPS): a batch whose last inner request is denied
   (read, checked, refused 403, nothing forwarded), and one that passes (forwarded, run by the
   stand-in, its answer's inner links rewritten), beside the same batch sent straight to the
   stand-in.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
from pathlib import Path

import aiohttp
from _harness import HOST, Route, free_port, start_ppproxy
from _local import local

from proxy.batch.check import check
from proxy.batch.targets import Place
from proxy.config import from_dict
from proxy.policy import Policy
from proxy.routing import Resolver
from proxy.testing.dataverse import DataverseUpstream

OPERATIONS = 1000
BOUNDARY = "batch_4aadba30-8530-4108-9ca6-c78908d80191"
KEY = "ppk_bench-batch-key-0123456789abcdef"
ROOT = "/api/data/v9.2"
DENY = ["/api/data/v9.2/systemusers*", "/api/data/v9.2/roles*", "**/delete*", "**/$ref"]
ALLOW = ["/api/data/v9.2/accounts**", "/api/data/v9.2/contacts**", "/api/data/v9.2/$batch"]


def sdk_batch(base: str, *, deny_last: bool = False) -> bytes:
    """1,000 operations: a change set (create, update "$1"), a list (filtered, of a table kept
    empty so that the stand-in's time does not grow run after run) and two creates, over and
    over."""
    lines: list[str] = []
    count = 0
    changeset = 0

    def part(request: list[str], content_id: int | None = None) -> list[str]:
        head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        head += [f"Content-ID: {content_id}"] if content_id is not None else []
        return [*head, "", *request]

    while count < OPERATIONS:
        if count == OPERATIONS - 1 and deny_last:
            lines += [f"--{BOUNDARY}", *part([f"DELETE {base}/systemusers(1) HTTP/1.1", ""])]
            count += 1
        elif count % 5 == 0 and count + 2 <= OPERATIONS - (1 if deny_last else 0):
            changeset += 1
            name = f"changeset_{changeset}"
            lines += [f"--{BOUNDARY}", f'Content-Type: multipart/mixed; boundary="{name}"', ""]
            lines += [f"--{name}"]
            lines += part(
                [
                    f"POST {base}/contacts HTTP/1.1",
                    "Content-Type: application/json; type=entry",
                    "",
                    f'{{"fullname": "Contact {count}"}}',
                ],
                count + 1,
            )
            lines += [f"--{name}"]
            lines += part(
                [
                    f"PATCH ${count + 1} HTTP/1.1",
                    "Content-Type: application/json; type=entry",
                    "If-Match: *",
                    "",
                    '{"telephone1": "555"}',
                ],
                count + 2,
            )
            lines += [f"--{name}--", ""]
            count += 2
        elif count % 5 == 2:
            query = f"$select=name&$filter=name eq 'n {count}'&$orderby=name desc&$top=2"
            lines += [f"--{BOUNDARY}", *part([f"GET {base}/accounts?{query} HTTP/1.1", ""])]
            count += 1
        else:
            lines += [f"--{BOUNDARY}"]
            lines += part(
                [
                    f"POST {base}/contacts HTTP/1.1",
                    "Content-Type: application/json; type=entry",
                    "",
                    f'{{"fullname": "Contact {count}"}}',
                ]
            )
            count += 1
    lines += [f"--{BOUNDARY}--", ""]
    return "\r\n".join(lines).encode()


def check_alone(runs: int) -> tuple[list[float], int]:
    base = f"http://localhost:8080/dv{ROOT}"
    body = sdk_batch(base)
    raw = {
        "identities": {"i": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
        "routes": [
            {
                "name": "dv",
                "prefix": "/dv",
                "upstream": "https://org.crm.dynamics.com",
                "rewrite_links": True,
                "allow_paths": ALLOW,
                "deny_paths": DENY,
            }
        ],
        "access": {
            "clients": [
                {
                    "name": "tool",
                    "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                    "methods": ["GET", "POST", "PATCH"],
                }
            ]
        },
    }
    config = from_dict(raw, {}, base_dir=Path())
    route, client = config.routes[0], config.access.clients[0]
    resolver, policy = Resolver(config.routes), Policy(route)
    content_type = f'multipart/mixed; boundary="{BOUNDARY}"'
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        place = Place.of(route, None, resolver.route_for, "localhost:8080", f"{ROOT}/$batch")
        checked = check(body, content_type, place, policy, client)
        times.append((time.perf_counter() - started) * 1000)
        assert checked.summary.total == OPERATIONS
    return times, len(body)


def proxy_toml(port: int, authority_host: str, tenant: str, ca_file: Path, upstream: str) -> str:
    from _harness import proxy_toml as base

    text = base(
        port=port,
        authority_host=authority_host,
        tenant=tenant,
        ca_file=ca_file,
        routes=[Route("dv", "/dv", upstream, f"{upstream}/.default")],
    )
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return text + (
        f"rewrite_links = true\nallow_paths = {ALLOW!r}\n".replace("'", '"')
        + f"deny_paths = {DENY!r}\n".replace("'", '"')
        + '\n[[access.clients]]\nname = "tool"\n'
        f'key_sha256 = "{digest}"\nmethods = ["GET", "POST", "PATCH"]\n'
    )


async def timed_post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return (time.perf_counter() - started) * 1000, response.status


async def through_the_proxy(runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"refused": [], "passed": [], "direct": []}
    async with local() as world, DataverseUpstream(ssl_context=world.ca.server_context()) as dv:
        port = free_port()
        config = world.tmp / "batch.toml"
        config.write_text(
            proxy_toml(port, world.idp.authority_host, world.idp.tenant, world.ca_file, dv.url)
        )
        await start_ppproxy(world.procs, "ppproxy", config, port, world.tmp / "ppproxy.log")
        mine = f"http://{HOST}:{port}/dv{ROOT}"
        kinds = {
            "refused": (f"{mine}/$batch", sdk_batch(mine, deny_last=True), 403),
            "passed": (f"{mine}/$batch", sdk_batch(mine), 200),
            "direct": (f"{dv.service_root}/$batch", sdk_batch(dv.service_root), 200),
        }
        content_type = f'multipart/mixed; boundary="{BOUNDARY}"'
        connector = aiohttp.TCPConnector(ssl=world.ca.client_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in range(runs + 1):  # the first round warms up (token, connections)
                for kind, (url, body, expected) in kinds.items():
                    headers = {"Content-Type": content_type, "X-Api-Key": KEY}
                    if kind == "direct":
                        headers = {"Content-Type": content_type, "Authorization": "Bearer x"}
                    took, status = await timed_post(session, url, body, headers)
                    assert status == expected, (kind, status)
                    if n:
                        results[kind].append(took)
    return results


def show(name: str, times: list[float]) -> str:
    return f"| {name} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    alone, size = check_alone(args.runs)
    proxied = await through_the_proxy(args.runs)
    print(f"{OPERATIONS} inner requests, {size / 1024:.0f} KiB, {args.runs} runs each (ms)\n")
    print("| what | median | min | max |")
    print("| --- | --- | --- | --- |")
    print(show("check alone (read, resolve, policy, grants, rewrite)", alone))
    print(show("through ppproxy, refused at the last request (403)", proxied["refused"]))
    print(show("through ppproxy, passed, run by the stand-in", proxied["passed"]))
    print(show("straight to the stand-in", proxied["direct"]))


if __name__ == "__main__":
    asyncio.run(main())
