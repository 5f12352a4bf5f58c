"""Where ppproxy's per-request time goes: py-spy samples the proxy under wrk load.

    pip install py-spy && python bench/profile.py [--seconds 15] [--raw DIR]

Profiles ppproxy (one worker, info logging) and bench/minimal_proxy.py under the same wrk load
against nginx ``return 200``, and prints Markdown: CPU microseconds per request by component
(each sample goes to the innermost frame that belongs to a known component, so library helpers
such as ``json`` or ``multidict`` count for whoever called them), the top functions by self
time, and the ppproxy functions that were running (inclusive). Idle time (waiting in epoll) is not
sampled, nor are thread-pool workers waiting for work. Paste the findings into the Profile
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    HOST,
    Proc,
    Route,
    WrkSettings,
    free_port,
    nginx_upstream_conf,
    run_wrk,
    start_nginx,
    start_ppproxy,
)
from _local import Local, local

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")

# (component, file pattern), checked in order on each frame from the innermost outwards.
COMPONENTS = [
    (
        "request log: structlog, redaction, JSON",
        re.compile(r"^(structlog/|orjson|proxy/observe\.py|proxy/accesslog\.py)"),
    ),
    ("metrics: prometheus-client", re.compile(r"^(prometheus_client/|proxy/metrics\.py)")),
    ("the tap", re.compile(r"^proxy/tap/")),
    (
        "guard: hygiene, Host/Origin, keys, policy",
        re.compile(r"^proxy/(guard|hygiene|browsers|access|policy|peers|paths)\.py"),
    ),
    ("exchange and observers", re.compile(r"^proxy/(exchange|request_id)\.py")),
    (
        "forwarder stages: routing, body, token, headers, send, relay",
        re.compile(r"^proxy/(forward|routing|limits|body|tokens|send|headers|relay|rewrite)\.py"),
    ),
    ("ppproxy code, other (proxy/)", re.compile(r"^proxy/")),
    ("minimal proxy code", re.compile(r"^bench/minimal_proxy\.py")),
    (
        "aiohttp client (request, connector, response)",
        re.compile(r"^aiohttp/(client|connector|client_reqrep|client_proto|tracing|cookiejar)"),
    ),
    ("aiohttp server (parser, handler, response)", re.compile(r"^aiohttp/")),
    ("asyncio event loop and transports", re.compile(r"^asyncio/")),
]
# py-spy installed into this environment, else whatever is on PATH.
PY_SPY = str(next((p for p in [Path(sys.executable).with_name("py-spy")] if p.exists()), "py-spy"))
_POOL = "concurrent/futures/thread.py"
THREADS = "thread pool (run_in_executor, to_thread) incl. waking the loop"
OTHER = "other (interpreter start, stdlib at top level)"


@dataclass(frozen=True)
class Profile:
    name: str
    samples: int
    requests: int
    rps: float
    cpu_cores: float
    seconds: float
    stacks: Counter[tuple[tuple[str, str, str], ...]]

    def us_per_request(self, share: float) -> float:
        """CPU microseconds per request for a share of the samples."""
        return share * self.cpu_cores * self.seconds / self.requests * 1e6 if self.requests else 0


def parse_raw(text: str) -> Counter[tuple[tuple[str, str, str], ...]]:
    """py-spy's raw (collapsed) output: ``frame;frame;... count`` per line, outermost first."""
    stacks: Counter[tuple[tuple[str, str, str], ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw)
            if m:
                frames.append((m["func"], m["file"], m["line"] or ""))
        if not idle(tuple(frames)):
            stacks[tuple(frames)] += int(count)
    return stacks


def idle(frames: tuple[tuple[str, str, str], ...]) -> bool:
    """A thread-pool worker waiting for work: py-spy does not always see it as idle."""
    return bool(frames) and frames[-1][0] == "_worker" and frames[-1][1] == _POOL


def component(frames: tuple[tuple[str, str, str], ...]) -> str:
    if any(file == _POOL for _, file, _ in frames):
        return THREADS
    for _, file, _ in reversed(frames):
        for name, pattern in COMPONENTS:
            if pattern.search(file):
                return name
    return OTHER


def summarize(profiles: list[Profile]) -> str:
    out = ["| component | " + " | ".join(f"{p.name} %, µs/req" for p in profiles) + " |"]
    out.append("| --- |" + " ---: |" * len(profiles))
    shares = []
    for p in profiles:
        by: Counter[str] = Counter()
        for frames, n in p.stacks.items():
            by[component(frames)] += n
        shares.append({k: v / p.samples for k, v in by.items()})
    for name in [THREADS] + [c for c, _ in COMPONENTS] + [OTHER]:
        if not any(s.get(name) for s in shares):
            continue
        cells = [
            f"{s.get(name, 0) * 100:.1f} %, {p.us_per_request(s.get(name, 0)):.0f}"
            for p, s in zip(profiles, shares, strict=True)
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"100 %, {p.us_per_request(1.0):.0f}" for p in profiles]
    out.append("| **total CPU per request** | " + " | ".join(totals) + " |")
    out.append("")
    for p in profiles:
        out.append(
            f"- {p.name}: {p.rps:,.0f} req/s, {p.cpu_cores:.2f} cores busy, "
            f"{p.samples} samples of {p.requests:,} requests"
        )
    for p in profiles:
        out += ["", f"### {p.name}: top functions by self time", ""]
        out += _top_self(p)
        lines = _proxy_functions(p)
        if lines:
            out += ["", f"### {p.name}: ppproxy functions running (inclusive)", ""]
            out += lines
    return "\n".join(out)


def _top_self(p: Profile, n: int = 15) -> list[str]:
    self_time: Counter[str] = Counter()
    for frames, count in p.stacks.items():
        if frames:
            func, file, _ = frames[-1]
            self_time[f"`{func}` ({file})"] += count
    rows = ["| function | self % |", "| --- | ---: |"]
    rows += [f"| {f} | {c / p.samples * 100:.1f} |" for f, c in self_time.most_common(n)]
    return rows


def _proxy_functions(p: Profile, n: int = 15) -> list[str]:
    """Each sample counts once for every ppproxy function on its stack (inclusive time)."""
    where: Counter[str] = Counter()
    for frames, count in p.stacks.items():
        seen = {f"`{func}` ({file})" for func, file, _ in frames if file.startswith("proxy/")}
        for name in seen:
            where[name] += count
    if not where:
        return []
    rows = ["| where | % of samples |", "| --- | ---: |"]
    rows += [f"| {w} | {c / p.samples * 100:.1f} |" for w, c in where.most_common(n)]
    return rows


async def profile_one(
    loc: Local, name: str, proc: Proc, url: str, seconds: float, keep: Path | None
) -> Profile:
    raw = loc.tmp / f"{proc.name}.raw"
    argv = [PY_SPY, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "250"]
    argv += ["--duration", f"{int(seconds)}", "-o", str(raw)]
    spy = await loc.procs.start(f"py-spy-{proc.name}", argv, log=loc.tmp / "py-spy.log")
    wrk = WrkSettings(duration=seconds, warmup=1.0)
    try:
        result = await run_wrk(wrk, url, loc.tmp, cpu_pid=proc.pid)
        await asyncio.wait_for(spy.process.wait(), seconds + 30)
    finally:
        await loc.procs.stop(spy)
    stacks = parse_raw(raw.read_text())
    if keep is not None:
        _keep(raw, keep / f"{proc.name}.raw.txt")
    return Profile(
        name,
        sum(stacks.values()),
        result.requests,
        result.rps,
        result.cpu_cores or 0.0,
        seconds,
        stacks,
    )


def _keep(raw: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw, to)


async def main_async(seconds: float, keep: Path | None, loop: str) -> str:
    async with local() as loc:
        up_port = free_port()
        conf = nginx_upstream_conf(loc.tmp / "nginx", up_port)
        await start_nginx(loc.procs, "nginx-upstream", loc.tmp / "nginx", conf, up_port)
        upstream = f"http://{HOST}:{up_port}"
        scope = "https://upstream.bench.invalid/.default"
        path = "/bench/hello?x=1"

        port = free_port()
        routes = [Route("bench", "/", upstream, scope)]
        # Both proxies on the same event loop: uvloop's C code would hide the loop's share.
        config = loc.proxy_config("ppproxy", port, routes, event_loop=loop)
        proxy = await start_ppproxy(loc.procs, "ppproxy", config, port, loc.tmp / "ppproxy.log")
        ppproxy = await profile_one(
            loc, "ppproxy", proxy, f"http://{HOST}:{port}{path}", seconds, keep
        )
        await loc.procs.stop(proxy)

        minimal, minimal_url = await loc.start_minimal(upstream, scope, uvloop=loop == "uvloop")
        reference = await profile_one(loc, "minimal", minimal, minimal_url + path, seconds, keep)
        return summarize([ppproxy, reference])


def main() -> int:
    parser = argparse.ArgumentParser(description="Profile ppproxy under wrk load with py-spy.")
    parser.add_argument("--seconds", type=float, default=15.0, help="per profile (default: 15)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks in this directory")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="both proxies' loop"
    )
    args = parser.parse_args()
    if shutil.which(PY_SPY) is None:
        print("bench: pip install py-spy first", file=sys.stderr)
        return 2
    print(asyncio.run(main_async(args.seconds, args.raw, args.loop)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
