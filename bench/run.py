"""The ppproxy benchmark, in one run, side by side; writes docs/benchmarks.md and .png.

    python bench/run.py            # the full run, several minutes on 2 cores
    python bench/run.py --quick    # a short smoke run (numbers are not worth publishing)

Run from the repository root with the project's virtual environment active
(``pip install -e '.[testing]'``). nginx and wrk are installed with apt-get when missing
(as root); matplotlib is pip-installed into the running environment for the chart only.
Everything listens and connects on 127.0.0.1, and every process started is stopped at the end,
errors included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import ssl
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import aiohttp
import stream
from _harness import (
    HOST,
    Paced,
    Proc,
    Route,
    WrkResult,
    WrkSettings,
    count_request_events,
    ensure_debian_tools,
    free_port,
    git_revision,
    load_average,
    machine,
    nginx_proxy_conf,
    nginx_upstream_conf,
    paced_latency,
    process_tree,
    run_wrk,
    start_nginx,
    start_ppproxy,
    wait_port,
)
from _local import Local, local
from _report import (
    DIRECT,
    MINIMAL,
    MINIMAL_UVLOOP,
    NGINX,
    TAP,
    W1,
    W1_UVLOOP,
    W2,
    ColdStart,
    Legacy,
    Report,
    Row,
    write_chart,
    write_markdown,
)

SCOPE = "https://upstream.bench.invalid/.default"
PACED_RATE = 200.0
COLD_REQUESTS = 1000
COLD_IDP_DELAY = 0.2  # seconds: Entra ID takes about this long, so the requests pile up
LEGACY_CONCURRENCY = 4


def _shown(argv: tuple[str, ...] | list[str], loc: Local) -> str:
    return " ".join(argv).replace(str(loc.tmp), "$TMP").replace(sys.executable, "python")


class Bench:
    def __init__(self, loc: Local, args: argparse.Namespace) -> None:
        self.loc = loc
        self.quick = args.quick
        self.wrk = WrkSettings(
            threads=args.threads,
            connections=args.connections,
            duration=args.duration,
            warmup=1.0 if args.quick else 2.0,
        )
        self.rounds = args.rounds
        self.paced_seconds = 3.0 if args.quick else 10.0
        self.legacy_seconds = 3.0 if args.quick else 10.0
        self.stream_size = args.stream_mib * stream.MIB
        self.commands: list[str] = []
        self.configs: dict[str, str] = {}

    async def start_upstream(self) -> None:
        self.up_port, self.tls_port = free_port(), free_port()
        conf = nginx_upstream_conf(
            self.loc.tmp / "nginx-upstream",
            self.up_port,
            tls_port=self.tls_port,
            tls=self.loc.nginx_tls,
        )
        proc = await start_nginx(
            self.loc.procs, "nginx-upstream", self.loc.tmp / "nginx-upstream", conf, self.up_port
        )
        await wait_port(self.tls_port, proc)
        self.upstream_proc = proc
        self.upstream = f"http://{HOST}:{self.up_port}"
        self.commands.append(_shown(proc.argv, self.loc))
        self.configs["nginx upstream"] = conf.replace(str(self.loc.tmp), "$TMP")

    async def ppproxy(
        self,
        name: str,
        routes: list[Route],
        *,
        workers: int = 1,
        prefetch: bool = True,
        tap: bool = False,
        event_loop: str = "auto",
    ) -> tuple[Proc, str, Path]:
        port = free_port()
        config = self.loc.proxy_config(
            name, port, routes, workers=workers, prefetch=prefetch, tap=tap, event_loop=event_loop
        )
        log = self.loc.tmp / f"{name}.log"
        proc = await start_ppproxy(self.loc.procs, name, config, port, log)
        self.commands.append(_shown(proc.argv, self.loc) + f" 2> $TMP/{name}.log")
        if workers == 1:  # the workers = 2 file differs only in that key and the port
            self.configs[name] = config.read_text().replace(str(self.loc.tmp), "$TMP")
        return proc, f"http://{HOST}:{port}", log

    async def minimal(self, *, uvloop: bool = False) -> tuple[Proc, str]:
        proc, url = await self.loc.start_minimal(self.upstream, SCOPE, uvloop=uvloop)
        self.commands.append("BENCH_TOKEN=<token> " + _shown(proc.argv, self.loc))
        return proc, url

    async def throughput(self, report: Report) -> None:
        """The wrk rows, in interleaved rounds, then the paced 200 req/s runs. Each Python
        proxy runs on asyncio's loop and, when uvloop is installed, on uvloop too."""
        tmp, procs = self.loc.tmp, self.loc.procs
        route = [Route("bench", "/", self.upstream, SCOPE)]
        w1, w1_url, w1_log = await self.ppproxy("ppproxy-w1", route, event_loop="asyncio")
        w2, w2_url, w2_log = await self.ppproxy("ppproxy-w2", route, workers=2)
        tapped, tapped_url, _ = await self.ppproxy(
            "ppproxy-tap", route, tap=True, event_loop="asyncio"
        )
        minimal, minimal_url = await self.minimal()
        token = await self.loc.token(SCOPE)  # nginx proxy_pass injects a real one, as ppproxy
        uv_rows: list[tuple[str, str, Proc, str]] = []
        if importlib.util.find_spec("uvloop") is not None:
            uv, uv_url, _ = await self.ppproxy("ppproxy-uvloop", route, event_loop="uvloop")
            uv_minimal, uv_minimal_url = await self.minimal(uvloop=True)
            uv_rows = [
                (W1_UVLOOP, uv_url, uv, "server.event_loop = uvloop"),
                (MINIMAL_UVLOOP, uv_minimal_url, uv_minimal, "the same proxy on uvloop"),
            ]
        port = free_port()
        workdir = tmp / "nginx-proxy"
        conf = nginx_proxy_conf(workdir, port, self.up_port, token)
        nginx = await start_nginx(procs, "nginx-proxy", workdir, conf, port)
        nginx_url = f"http://{HOST}:{port}"
        self.commands.append(_shown(nginx.argv, self.loc))
        self.configs["nginx proxy"] = conf.replace(str(tmp), "$TMP").replace(token, "<token>")

        processes = {1: len(process_tree(w1.pid)), 2: len(process_tree(w2.pid))}
        report.processes = processes
        setups = [
            (DIRECT, self.upstream, self.upstream_proc, "upstream's CPU"),
            (W1, w1_url, w1, _processes_note(processes[1], 1) + "; asyncio's loop"),
            (W2, w2_url, w2, _processes_note(processes[2], 2) + "; server.event_loop = auto"),
            (TAP, tapped_url, tapped, "[tap] enabled, default keep and caps; asyncio's loop"),
            (MINIMAL, minimal_url, minimal, "asyncio's loop"),
            *uv_rows,
            (NGINX, nginx_url, nginx, "one nginx process"),
        ]
        path = "/bench/hello?x=1"
        runs: dict[str, list[WrkResult]] = {label: [] for label, *_ in setups}
        for i in range(self.rounds):
            _step(f"  wrk round {i + 1} of {self.rounds}")
            for label, url, proc, _ in setups:
                runs[label].append(await run_wrk(self.wrk, url + path, tmp, cpu_pid=proc.pid))
        for label, _, _, note in setups:
            best = max(runs[label], key=lambda r: r.rps)
            report.rows.append(Row(label, best, note, runs[label]))
        for name, log in ((W1, w1_log), (W2, w2_log)):
            sent = sum(r.requests + r.warmup_requests for r in runs[name])
            report.logged[name] = (count_request_events(log), sent)
        report.wrk_commands = [f"{r.result.command}  # {r.label}" for r in report.rows]

        _step("  paced 200 req/s")
        paced_setups = (
            ("direct", self.upstream),
            (W1, w1_url),
            ("minimal aiohttp proxy", minimal_url),
            ("nginx proxy_pass", nginx_url),
        )
        paced: dict[str, list[Paced]] = {label: [] for label, _ in paced_setups}
        for _ in range(self.rounds):
            for label, url in paced_setups:
                paced[label].append(await self.paced(url + path))
        for label, results in paced.items():
            report.paced.append((label, min(results, key=lambda p: p.p99_ms)))
            report.paced_rounds[label] = [p.p99_ms for p in results]
        for proc in (w1, w2, tapped, minimal, nginx, *(p for _, _, p, _ in uv_rows)):
            await procs.stop(proc)

    async def paced(self, url: str) -> Paced:
        return await paced_latency(url, rate=PACED_RATE, duration=self.paced_seconds)

    async def cold_start(self) -> ColdStart:
        """1000 concurrent requests over two scopes on a fresh proxy without prefetch."""
        scopes = ("https://cold-a.bench.invalid/.default", "https://cold-b.bench.invalid/.default")
        routes = [
            Route("cold-a", "/a", self.upstream, scopes[0]),
            Route("cold-b", "/b", self.upstream, scopes[1]),
        ]
        idp = self.loc.idp
        before = {s: len(idp.token_requests(s)) for s in scopes}
        idp.delay = COLD_IDP_DELAY
        proc, url, _ = await self.ppproxy("ppproxy-cold", routes, prefetch=False)
        try:
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=60)
            statuses: Counter[int] = Counter()
            latencies: list[float] = []
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

                async def one(i: int) -> None:
                    started = time.perf_counter()
                    try:
                        async with session.get(f"{url}/{'ab'[i % 2]}/cold/{i}") as r:
                            await r.read()
                            statuses[r.status] += 1
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        statuses[0] += 1
                    latencies.append(time.perf_counter() - started)

                started = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(COLD_REQUESTS)))
                wall = time.perf_counter() - started
        finally:
            idp.delay = 0.0
            await self.loc.procs.stop(proc)
        counts = {s: len(idp.token_requests(s)) - before[s] for s in scopes}
        return ColdStart(COLD_REQUESTS, dict(statuses), counts, wall, max(latencies))

    async def legacy(self) -> Legacy:
        """A new connection per request: HTTPS straight to nginx vs plain HTTP to ppproxy,
        from a Python client (aiohttp, force_close) and from a C one (wrk, Connection: close)."""
        tls_upstream = f"https://{HOST}:{self.tls_port}"
        ssl_context = ssl.create_default_context(cafile=str(self.loc.ca_file))
        proc, url, _ = await self.ppproxy(
            "ppproxy-legacy", [Route("tls", "/", tls_upstream, SCOPE)]
        )
        wrk = replace(self.wrk, connections=LEGACY_CONCURRENCY, headers=("Connection: close",))
        try:
            through = await _new_connection_rate(url + "/legacy", None, self.legacy_seconds)
            direct = await _new_connection_rate(
                tls_upstream + "/legacy", ssl_context, self.legacy_seconds
            )
            wrk_through = await run_wrk(wrk, url + "/legacy", self.loc.tmp)
            wrk_direct = await run_wrk(wrk, tls_upstream + "/legacy", self.loc.tmp)
        finally:
            await self.loc.procs.stop(proc)
        return Legacy(LEGACY_CONCURRENCY, direct, through, wrk_direct, wrk_through)


async def _new_connection_rate(
    url: str, ssl_context: ssl.SSLContext | None, seconds: float
) -> float:
    """Successful requests per second from a client that never reuses a connection."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0, ssl=ssl_context or True)
    timeout = aiohttp.ClientTimeout(total=10)
    done = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(url) as r:
                        await r.read()
                        done += r.status == 200

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(LEGACY_CONCURRENCY)))
        return done / (time.monotonic() - started)


def _processes_note(n: int, workers: int) -> str:
    note = f"{n} process{'es' if n > 1 else ''} serving"
    if workers > 1 and n == 1:
        note = "STILL ONE PROCESS: server.workers is parsed but not used yet; " + note
    return note


def _step(label: str, report: Report | None = None) -> None:
    print(f"bench: {label}", file=sys.stderr, flush=True)
    if report is not None:
        report.load.append(f"{label}: {load_average()}")


async def run(args: argparse.Namespace) -> Report:
    report = Report(
        started=dt.datetime.now(dt.UTC),
        machine=machine(),
        revision=git_revision(),
        quick=args.quick,
    )
    async with local() as loc:
        bench = Bench(loc, args)
        report.wrk = bench.wrk
        report.rounds = bench.rounds
        report.paced_seconds = bench.paced_seconds
        await bench.start_upstream()
        _step("throughput and latency", report)
        await bench.throughput(report)
        _step("cold start", report)
        report.cold = await bench.cold_start()
        _step("legacy client", report)
        report.legacy = await bench.legacy()
        _step(f"streaming {args.stream_mib} MiB each way", report)
        report.stream = await stream.measure(loc, bench.stream_size)
        report.commands = bench.commands
        report.configs = bench.configs
    report.load.append(f"end: {load_average()}")
    report.finished = dt.datetime.now(dt.UTC)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark ppproxy against the Python limit.")
    parser.add_argument("--quick", action="store_true", help="short runs, 64 MiB streaming")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: 2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--duration", type=float, help="wrk seconds (10, quick: 3)")
    parser.add_argument("--rounds", type=int, help="interleaved wrk rounds, best kept (3; 1)")
    parser.add_argument("--stream-mib", type=int, help="MiB each way (1024, quick: 64)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args()
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.stream_mib = args.stream_mib or (64 if args.quick else 1024)
    ensure_debian_tools({"nginx": "nginx", "wrk": "wrk"})
    report = asyncio.run(run(args))
    chart = write_chart(report, args.out.with_suffix(".png"))
    write_markdown(report, args.out, chart, " ".join(["python", "bench/run.py", *sys.argv[1:]]))
    print(f"bench: wrote {args.out}" + (f" and {chart}" if chart else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
