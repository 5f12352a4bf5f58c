"""ppproxy at two revisions side by side, in one run: did a change cost throughput?

    python bench/compare.py --base HEAD~1            # the working tree against HEAD~1
    python bench/compare.py --base main --tap        # both with the tap on

Both proxies serve the same nginx upstream with the same configuration; wrk rounds alternate
between them (and the minimal aiohttp proxy, for scale), and the best round of each is kept.
What counts is the ratio printed at the end, measured in this one run: the machine is shared and
its absolute speed drifts. The base revision is exported with ``git archive`` into a temporary
folder; nothing in the checkout changes.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _harness import (
    HOST,
    ROOT,
    Route,
    WrkResult,
    WrkSettings,
    ensure_debian_tools,
    free_port,
    nginx_upstream_conf,
    run_wrk,
    start_nginx,
    start_ppproxy,
)
from _local import local

SCOPE = "https://upstream.bench.invalid/.default"
PATH = "/bench/hello?x=1"


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` (``git archive``) under ``into``."""
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(  # noqa: S603  # a fixed git command with the user's revision
            ["git", "archive", "--format=tar", revision],  # noqa: S607
            cwd=ROOT,
            stdout=out,
            check=True,
        )
    tree = into / "base"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


async def run(args: argparse.Namespace) -> dict[str, list[WrkResult]]:
    wrk = WrkSettings(duration=args.duration, warmup=1.0)
    with tempfile.TemporaryDirectory(prefix="ppproxy-compare-") as name:
        base_tree = export(args.base, Path(name))
        async with local() as loc:
            up_port = free_port()
            conf = nginx_upstream_conf(loc.tmp / "nginx-upstream", up_port)
            await start_nginx(
                loc.procs, "nginx-upstream", loc.tmp / "nginx-upstream", conf, up_port
            )
            upstream = f"http://{HOST}:{up_port}"
            route = [Route("bench", "/", upstream, SCOPE)]
            urls: dict[str, tuple[str, int]] = {}
            for label, tree in ((f"base ({args.base})", base_tree), ("head (working tree)", ROOT)):
                port = free_port()
                config = loc.proxy_config(label.split()[0], port, route, tap=args.tap)
                log = loc.tmp / f"{label.split()[0]}.log"
                proc = await start_ppproxy(loc.procs, label, config, port, log, tree=tree)
                urls[label] = (f"http://{HOST}:{port}", proc.pid)
            minimal, minimal_url = await loc.start_minimal(upstream, SCOPE)
            urls["minimal aiohttp proxy"] = (minimal_url, minimal.pid)
            runs: dict[str, list[WrkResult]] = {label: [] for label in urls}
            for i in range(args.rounds):
                print(f"compare: round {i + 1} of {args.rounds}", file=sys.stderr, flush=True)
                for label, (url, pid) in urls.items():
                    runs[label].append(await run_wrk(wrk, url + PATH, loc.tmp, cpu_pid=pid))
            return runs


def main() -> int:
    parser = argparse.ArgumentParser(description="Throughput of two ppproxy revisions.")
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds (3)")
    parser.add_argument("--duration", type=float, default=5.0, help="wrk seconds per run (5)")
    parser.add_argument("--tap", action="store_true", help="both proxies with [tap] enabled")
    args = parser.parse_args()
    ensure_debian_tools({"nginx": "nginx", "wrk": "wrk"})
    runs = asyncio.run(run(args))
    best = {label: max(results, key=lambda r: r.rps) for label, results in runs.items()}
    print(f"\n{'setup':<28}{'best req/s':>12}{'rounds':>28}{'CPU cores':>11}")
    for label, result in best.items():
        rounds = " ".join(f"{r.rps:,.0f}" for r in runs[label])
        cores = f"{result.cpu_cores:.2f}" if result.cpu_cores is not None else "-"
        print(f"{label:<28}{result.rps:>12,.0f}{rounds:>28}{cores:>11}")
    base, head, minimal = (best[label].rps for label in best)
    print(f"\nhead / base: {head / base:.3f}")
    print(f"base / minimal: {base / minimal:.3f}   head / minimal: {head / minimal:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
