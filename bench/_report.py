"""Turn one benchmark run into docs/benchmarks.md and a PNG chart."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import Machine, Paced, WrkResult, WrkSettings
from stream import GROWTH_TARGET_MIB, MIB, StreamResult

PROFILE_HEADING = "## Profile"
# The rows' labels: targets and ratios find their rows by these.
W1 = "ppproxy, workers = 1"
W1_UVLOOP = "ppproxy, workers = 1, uvloop"
W2 = "ppproxy, workers = 2"
TAP = "ppproxy, tap on"
MINIMAL = "minimal aiohttp proxy (bench/minimal_proxy.py)"
MINIMAL_UVLOOP = "minimal aiohttp proxy, uvloop"
DIRECT = "direct (nginx return 200)"
NGINX = "nginx proxy_pass + keepalive"


@dataclass(frozen=True)
class Row:
    label: str
    result: WrkResult  # the best round
    note: str
    rounds: list[WrkResult] = field(default_factory=list)


@dataclass(frozen=True)
class ColdStart:
    requests: int
    statuses: dict[int, int]
    token_requests: dict[str, int]  # scope -> token requests seen by the identity provider
    seconds: float
    slowest: float


@dataclass(frozen=True)
class Legacy:
    concurrency: int
    direct_rps: float  # Python client (aiohttp, force_close)
    through_rps: float
    wrk_direct: WrkResult  # C client (wrk, Connection: close)
    wrk_through: WrkResult


@dataclass
class Report:
    started: dt.datetime
    machine: Machine
    revision: str
    quick: bool
    wrk: WrkSettings = field(default_factory=WrkSettings)
    paced_seconds: float = 10.0
    rows: list[Row] = field(default_factory=list)
    processes: dict[int, int] = field(default_factory=dict)
    logged: dict[str, tuple[int, int]] = field(default_factory=dict)  # log lines, requests
    rounds: int = 1
    load: list[str] = field(default_factory=list)  # load averages through the run
    paced: list[tuple[str, Paced]] = field(default_factory=list)  # the best round
    paced_rounds: dict[str, list[float]] = field(default_factory=dict)  # p99 of every round
    cold: ColdStart | None = None
    legacy: Legacy | None = None
    stream: StreamResult | None = None
    commands: list[str] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)
    wrk_commands: list[str] = field(default_factory=list)
    finished: dt.datetime | None = None

    def rps(self, label: str) -> float:
        return next((r.result.rps for r in self.rows if r.label == label), 0.0)

    def paced_of(self, label: str) -> Paced | None:
        return next((p for name, p in self.paced if name == label), None)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets(r: Report) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of the performance issues (7 and 17)."""
    out: list[tuple[str, str, str]] = []
    one, minimal = r.rps(W1), r.rps(MINIMAL)
    ratio = _ratio(one, minimal)
    out.append(
        (
            "ppproxy (1 worker, request log at info, guard on) req/s >= 0.8 x the minimal "
            "proxy, both on asyncio's loop",
            f"{ratio:.2f} x",
            _verdict(ratio >= 0.8),
        )
    )
    uv, uv_minimal = r.rps(W1_UVLOOP), r.rps(MINIMAL_UVLOOP)
    if uv and uv_minimal:
        out.append(
            (
                "the same pair on uvloop (ppproxy[speed])",
                f"{_ratio(uv, uv_minimal):.2f} x; uvloop made ppproxy {_ratio(uv, one):.2f} x "
                f"and the minimal proxy {_ratio(uv_minimal, minimal):.2f} x as fast",
                "measured (no target)",
            )
        )
    tapped = r.rps(TAP)
    if one and tapped:
        tap_ratio = _ratio(tapped, one)
        out.append(
            ("tap on >= 0.85 x the same ppproxy with the tap off", f"{tap_ratio:.2f} x",
             _verdict(tap_ratio >= 0.85))
        )  # fmt: skip
    direct, proxy = r.paced_of("direct"), r.paced_of(W1)
    if direct and proxy:
        added = proxy.p99_ms - direct.p99_ms
        out.append(
            (
                f"p99 added latency <= 1 ms at {direct.rate:g} req/s",
                f"{added:+.2f} ms",
                _verdict(added <= 1.0),
            )
        )
    two = r.rps(W2)
    scale = _ratio(two, one)
    note = "" if r.processes.get(2, 1) > 1 else " (workers = 2 still serves from one process)"
    out.append(("workers = 2 >= 1.7 x one worker", f"{scale:.2f} x{note}", _verdict(scale >= 1.7)))
    if r.stream:
        s = r.stream
        out.append(
            (
                f"peak RSS growth <= {GROWTH_TARGET_MIB} MiB streaming "
                f"{s.size / MIB:g} MiB each way",
                f"{s.growth_mib:.1f} MiB, checksums {'ok' if s.ok else 'WRONG'}",
                _verdict(s.ok and s.growth_mib <= GROWTH_TARGET_MIB),
            )
        )
        if s.direct_up and s.direct_down:
            up = _ratio(s.up.mib_s(s.size), s.direct_up.mib_s(s.size))
            down = _ratio(s.down.mib_s(s.size), s.direct_down.mib_s(s.size))
            out.append(
                (
                    "streaming throughput >= 0.9 x direct, each way",
                    f"upload {up:.2f} x, download {down:.2f} x",
                    _verdict(min(up, down) >= 0.9),
                )
            )
    if r.cold:
        counts = ", ".join(str(n) for n in r.cold.token_requests.values())
        ok = all(n == 1 for n in r.cold.token_requests.values())
        out.append(
            (
                f"exactly one token request per scope ({r.cold.requests} concurrent, 2 scopes)",
                counts,
                _verdict(ok and r.cold.statuses.get(200, 0) == r.cold.requests),
            )
        )
    if r.legacy:
        lg = r.legacy
        ratio = _ratio(lg.through_rps, lg.direct_rps)
        wrk_ratio = _ratio(lg.wrk_through.rps, lg.wrk_direct.rps)
        verdicts = []
        for client, x in (("Python client", ratio), ("wrk", wrk_ratio)):
            noise = ", within noise" if abs(x - 1) < 0.05 else ""
            verdicts.append(f"{_verdict(x > 1.0)} ({client}{noise})")
        out.append(
            (
                "legacy client: through the proxy faster than direct",
                f"{ratio:.2f} x with a Python client; {wrk_ratio:.2f} x with wrk",
                ", ".join(verdicts),
            )
        )
    if W1 in r.logged:
        logged, sent = r.logged[W1]
        out.append(
            (
                "the request log records every request",
                f"{logged:,} request events for {sent:,} requests answered",
                _verdict(logged >= sent),
            )
        )
    return out


def write_markdown(r: Report, path: Path, chart: Path | None, command: str) -> None:
    """Write the report; a hand-written ``## Profile`` section already in ``path`` is kept."""
    kept = ""
    if path.exists():
        old = path.read_text()
        at = old.find("\n" + PROFILE_HEADING)
        if at >= 0:
            kept = old[at + 1 :].rstrip() + "\n"
    m = r.machine
    when = r.started.strftime("%Y-%m-%d %H:%M UTC")
    took = (r.finished - r.started).total_seconds() / 60 if r.finished else 0.0
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {when} ({took:.1f} minutes), at commit {r.revision}. "
        "Everything below except the Profile section is regenerated by that command; the "
        "Profile section is kept across runs.",
        "",
    ]
    if r.quick:
        lines += ["> **Quick run**: short durations, figures only for smoke testing.", ""]
    lines += [
        "All figures come from one run on one machine, where the load generator, the upstream "
        "and the proxy share the same cores. Absolute numbers mean little; compare the rows "
        "with each other (ratios).",
        "",
        "## How to run",
        "",
        "```sh",
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[testing]'",
        "python bench/run.py             # this page and docs/benchmarks.png; --quick to try",
        "python bench/stream.py          # only the 1 GiB streaming check",
        "```",
        "",
        "`bench/run.py` installs Debian's `nginx` and `wrk` with apt-get when they are missing "
        "(needs root) and pip-installs matplotlib into the running environment for the chart "
        "(it is not a dependency of ppproxy). It talks only to 127.0.0.1.",
        "",
        "## Machine",
        "",
        f"- CPU: {m.cpu}, {m.nproc} cores (`nproc`), {m.memory_gib:.1f} GiB memory",
        f"- {m.os_name}, Linux {m.kernel}",
        f"- Python {m.python}; "
        + "; ".join(f"{name} {version}" for name, version in m.versions.items()),
        "- load average (1, 5, 15 min) at each step: " + "; ".join(r.load),
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {t} | {v} | {ok} |" for t, v, ok in targets(r)]
    lines += _throughput(r, chart)
    lines += _paced(r)
    lines += _stream(r)
    lines += _cold(r)
    lines += _legacy(r)
    lines += _commands(r)
    text = "\n".join(lines).rstrip() + "\n"
    if kept:
        text += "\n" + kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _throughput(r: Report, chart: Path | None) -> list[str]:
    w = r.wrk
    lines = [
        "",
        "## Throughput and latency under load (wrk)",
        "",
        f"`wrk -t{w.threads} -c{w.connections} -d{w.duration:g}s --latency` for every row, after "
        f"a {w.warmup:g} s warm-up run with the same settings; `GET /bench/hello?x=1`, a "
        f"24-byte answer. All servers run side by side; {r.rounds} interleaved round(s) go "
        "through the setups in turn and each row shows its best round (the req/s of every "
        "round are listed). *CPU* is the CPU time of the measured server process(es) divided "
        "by the wall time (1.0 = one core busy); *other load* is the CPU, in cores, that "
        "processes outside this benchmark used during that run (the machine is shared). "
        "ppproxy also logs the requests wrk cuts off at the end of each run (one per "
        "connection), so it has a few more log lines than answered requests.",
        "",
        "| setup | req/s | every round | p50 ms | p99 ms | CPU | other load | errors | notes |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in r.rows:
        x = row.result
        cpu = f"{x.cpu_cores:.2f}" if x.cpu_cores is not None else ""
        errors = x.errors + x.non_2xx
        every = ", ".join(f"{run.rps:,.0f}" for run in row.rounds)
        note = row.note
        if row.label in r.logged:
            logged, sent = r.logged[row.label]
            note += f"; {logged:,} request log lines for {sent:,} requests answered"
        lines.append(
            f"| {row.label} | {x.rps:,.0f} | {every} | {x.p50_ms:.2f} | {x.p99_ms:.2f} | {cpu} | "
            f"{x.foreign_cores:.2f} | {errors} | {note} |"
        )
    one, two = r.rps(W1), r.rps(W2)
    lines += [
        "",
        f"- ppproxy / minimal aiohttp proxy: **{_ratio(one, r.rps(MINIMAL)):.2f}** (asyncio)"
        + (
            f", **{_ratio(r.rps(W1_UVLOOP), r.rps(MINIMAL_UVLOOP)):.2f}** (uvloop)"
            if r.rps(W1_UVLOOP)
            else ""
        ),
        f"- ppproxy / nginx proxy_pass: **{_ratio(one, r.rps(NGINX)):.2f}**",
        f"- ppproxy workers = 2 / workers = 1: **{_ratio(two, one):.2f}**",
        f"- ppproxy / direct: **{_ratio(one, r.rps(DIRECT)):.2f}**",
        "",
        "Each worker process keeps its own token cache, so with *N* workers the identity "
        "provider sees *N* token requests per scope and refresh.",
    ]
    if chart is not None:
        lines += ["", f"![requests per second and latency]({chart.name})"]
    return lines


def _paced(r: Report) -> list[str]:
    direct = r.paced_of("direct")
    if direct is None:
        return []
    lines = [
        "",
        f"## Added latency at a fixed {direct.rate:g} req/s",
        "",
        f"An open-loop asyncio client (aiohttp, keep-alive) sends {direct.rate:g} req/s for "
        f"{r.paced_seconds:g} s after a 1 s warm-up; each latency is counted from the moment "
        "the request was due, as wrk2 does (Debian has no wrk2). The setups take turns for "
        f"{r.rounds} round(s); each row shows its round with the lowest p99. *Added* is the "
        "row's percentile minus the direct one.",
        "",
        "| setup | sent | ok | p50 ms | p99 ms | p99 of every round | added p50 ms | "
        "added p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, p in r.paced:
        added = name != "direct"
        a50 = f"{p.p50_ms - direct.p50_ms:+.2f}" if added else ""
        a99 = f"{p.p99_ms - direct.p99_ms:+.2f}" if added else ""
        every = ", ".join(f"{x:.2f}" for x in r.paced_rounds.get(name, []))
        lines.append(
            f"| {name} | {p.sent} | {p.ok} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {every} | "
            f"{a50} | {a99} |"
        )
    return lines


def _stream(r: Report) -> list[str]:
    s = r.stream
    if s is None:
        return []
    lines = [
        "",
        f"## Streaming {s.size / MIB:g} MiB each way",
        "",
        "One upload (`POST`, chunked) and one download (`GET /_echo/bytes/N`) through ppproxy "
        "to `proxy.testing.EchoUpstream` over HTTPS; the echo hashes what it receives and the "
        "client hashes what it downloads (SHA-256 against `pattern_sha256`). The same "
        "transfers straight to the echo upstream are the reference. VmRSS of the proxy process "
        f"is sampled every 50 ms ({s.samples} samples); also `python bench/stream.py`.",
        "",
        "| direction | through ppproxy MiB/s | direct MiB/s | checksum |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, t, d in (("upload", s.up, s.direct_up), ("download", s.down, s.direct_down)):
        ref = f"{d.mib_s(s.size):.0f}" if d else ""
        ok = "ok" if t.ok and (d is None or d.ok) else "WRONG"
        lines.append(f"| {label} | {t.mib_s(s.size):.0f} | {ref} | {ok} |")
    lines += [
        "",
        f"Proxy memory: VmRSS {s.rss_base_mib:.1f} MiB after a 1 MiB warm-up each way, "
        f"peak {s.rss_peak_mib:.1f} MiB while streaming; VmHWM {s.hwm_before_mib:.1f} -> "
        f"{s.hwm_after_mib:.1f} MiB. Growth **{s.growth_mib:.1f} MiB** "
        f"(target <= {GROWTH_TARGET_MIB} MiB).",
    ]
    return lines


def _cold(r: Report) -> list[str]:
    c = r.cold
    if c is None:
        return []
    statuses = ", ".join(f"{n} x {code or 'failed'}" for code, n in sorted(c.statuses.items()))
    lines = [
        "",
        "## Cold start",
        "",
        f"A freshly started ppproxy with `[tokens] prefetch = false` and two routes with "
        f"different scopes gets {c.requests} concurrent requests (half per route, one "
        "connection each); the identity provider answers after 200 ms, about what Entra ID "
        f"takes. Answers: {statuses}; all done in {c.seconds:.2f} s, slowest {c.slowest:.2f} s.",
        "",
        "| scope | token requests at the identity provider |",
        "| --- | ---: |",
    ]
    lines += [f"| `{scope}` | {n} |" for scope, n in c.token_requests.items()]
    return lines


def _legacy(r: Report) -> list[str]:
    lg = r.legacy
    if lg is None:
        return []
    w = lg.wrk_direct
    return [
        "",
        "## Legacy client (a new connection per request)",
        "",
        "A client that opens a new connection for every request calls an HTTPS nginx "
        "(certificate from a local CA) directly, paying a TCP connect and a TLS handshake each "
        "time, or ppproxy over plain HTTP on loopback, which keeps pooled TLS connections to "
        f"the same nginx. Two such clients, {lg.concurrency} concurrent requests each: a Python "
        "one (aiohttp with `force_close=True`, in the benchmark process: the legacy script "
        "case) and a C one (`wrk -H 'Connection: close'`, which reconnects after every answer).",
        "",
        "| client | direct HTTPS req/s | through ppproxy req/s | through / direct |",
        "| --- | ---: | ---: | ---: |",
        f"| Python, aiohttp force_close | {lg.direct_rps:,.0f} | {lg.through_rps:,.0f} | "
        f"**{_ratio(lg.through_rps, lg.direct_rps):.2f}** |",
        f"| `{w.command.split(' http')[0]}` | {w.rps:,.0f} | {lg.wrk_through.rps:,.0f} | "
        f"**{_ratio(lg.wrk_through.rps, w.rps):.2f}** |",
    ]


def _commands(r: Report) -> list[str]:
    lines = [
        "",
        "## Exact commands",
        "",
        "`$TMP` is the run's temporary directory; ports are picked free at run time.",
        "",
        "```sh",
        *r.commands,
        *r.wrk_commands,
        "```",
    ]
    for name, text in r.configs.items():
        lines += ["", f"<details><summary>{name} configuration</summary>", "", "```"]
        lines += [text.strip(), "```", "", "</details>"]
    return lines


def write_chart(r: Report, path: Path) -> Path | None:
    """A PNG with req/s, wrk latency and paced latency; None when matplotlib is unavailable."""
    plt = _pyplot()
    if plt is None or not r.rows:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    labels = [_short(row.label) for row in r.rows]
    palette = ["#888888", "#1f77b4", "#6baed6", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    colors = (palette * 2)[: len(labels)]
    ax = axes[0]
    bars = ax.bar(labels, [row.result.rps for row in r.rows], color=colors)
    ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    ax.set_yscale("log")  # direct and nginx are 10-100 x the Python proxies
    ax.set_title(f"req/s, log scale (wrk -t{r.wrk.threads} -c{r.wrk.connections})")
    _grouped(
        axes[1],
        labels,
        [row.result.p50_ms for row in r.rows],
        [row.result.p99_ms for row in r.rows],
    )
    axes[1].set_title("latency under wrk load, ms (lower is better)")
    if r.paced:
        _grouped(
            axes[2],
            [_short(n) for n, _ in r.paced],
            [p.p50_ms for _, p in r.paced],
            [p.p99_ms for _, p in r.paced],
        )
        axes[2].set_title(f"latency at {r.paced[0][1].rate:g} req/s, ms")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(f"ppproxy benchmark, {r.started:%Y-%m-%d}, {r.machine.nproc} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _grouped(ax: Any, labels: list[str], p50: list[float], p99: list[float]) -> None:
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    ax.set_xticks(list(xs), labels)
    ax.legend()


def _short(label: str) -> str:
    return (
        label.replace(" (bench/minimal_proxy.py)", "")
        .replace("minimal aiohttp proxy", "minimal")
        .replace(" (nginx return 200)", "")
        .replace(", workers = ", " w=")
        .replace(" + keepalive", "")
    )


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        print("bench: pip install matplotlib (for the chart only)", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False, timeout=600
        )
        if done.returncode != 0:
            print("bench: no matplotlib, no chart", file=sys.stderr)
            return None
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
