"""CPU instructions per request, counted by valgrind's callgrind: ppproxy beside the minimal
proxy (``bench/minimal_proxy.py``), in front of the same local nginx.

    python bench/instructions.py [--requests 2000] [--loop asyncio|uvloop] [--tap] [--tree DIR]

Throughput on a shared machine moves by a factor of two from one minute to the next; the
number of instructions the proxy process executes per request does not (runs agree to well
under 1 %). So this is the figure to compare two versions of the request path with: run it
with ``--tree`` pointing at another checkout for an A/B. It counts only the proxy's process
(the client and nginx are outside valgrind) and only requests sent after a warm-up, so
start-up, imports and the first token request are not in it. Under valgrind the proxy runs
about fifty times slower: wall-clock times from this run mean nothing.

Prints one JSON line per proxy and the ratio ``minimal / ppproxy`` (1.0 would be "costs no
more than the simplest proxy aiohttp allows").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
from _harness import (
    CLIENT_SECRET,
    HOST,
    SECRET_ENV,
    Route,
    child_env,
    ensure_debian_tools,
    free_port,
    nginx_upstream_conf,
    start_nginx,
)
from _local import local

ROOT = Path(__file__).resolve().parent.parent
SCOPE = "https://u.bench.invalid/.default"
PATH = "/bench/hello?x=1"
WARMUP = 300


async def _count(argv: list[str], env: dict[str, str], url: str, out: Path, n: int) -> float:
    """Instructions per request of the process ``argv`` serving ``url``."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--instr-atstart=no",
        *argv,
    ]
    log = out.with_suffix(".log").open("wb")
    proc = subprocess.Popen(  # noqa: S603,ASYNC220 (argv built here; Popen returns at once)
        command, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        async with aiohttp.ClientSession() as session:
            await _wait(session, url, proc)

            async def burst(count: int) -> None:
                for _ in range(count):
                    async with session.get(url) as r:
                        await r.read()
                        if r.status != 200:
                            raise SystemExit(f"bench: {url} answered {r.status}")

            await burst(WARMUP)
            _control("-i", "on", proc.pid)
            await burst(n)
            _control("-d", proc.pid)
            _control("-i", "off", proc.pid)
    finally:
        proc.terminate()
        proc.wait(120)
        log.close()
    total = 0
    # The dump asked for above is file ".1"; the one callgrind writes at exit (instrumentation
    # off by then) holds nothing useful.
    for dump in out.parent.glob(out.name + ".[0-9]*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    if total == 0:
        raise SystemExit(f"bench: no callgrind counts in {out.parent} (see {log.name})")
    return total / n


async def _wait(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):  # valgrind starts Python slowly
        if proc.poll() is not None:
            raise SystemExit("bench: the proxy under valgrind exited early")
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("bench: the proxy under valgrind did not answer within 300 s")


def _control(*args: object) -> None:
    subprocess.run(["callgrind_control", *map(str, args)], capture_output=True, check=False)  # noqa: S603,S607


async def main(args: argparse.Namespace) -> None:
    ensure_debian_tools({"valgrind": "valgrind", "nginx": "nginx"})
    tree: Path = args.tree
    async with local() as world:
        up = free_port()
        conf = nginx_upstream_conf(world.tmp / "nginx", up)
        await start_nginx(world.procs, "nginx", world.tmp / "nginx", conf, up)
        upstream = f"http://{HOST}:{up}"

        port = free_port()
        config = world.proxy_config(
            "ppproxy",
            port,
            [Route("b", "/", upstream, SCOPE)],
            tap=args.tap,
            event_loop=args.loop,
        )
        argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
        env = child_env(**{SECRET_ENV: CLIENT_SECRET}, PYTHONPATH=str(tree))
        url = f"http://{HOST}:{port}{PATH}"
        ours = await _count(argv, env, url, world.tmp / "ppproxy.cg", args.requests)
        print(json.dumps({"proxy": "ppproxy", "tree": tree.name, "tap": args.tap,
                          "loop": args.loop, "instructions_per_request": round(ours)}))  # fmt: skip

        port = free_port()
        argv = [sys.executable, "bench/minimal_proxy.py", str(port), upstream]
        argv += ["--uvloop"] if args.loop == "uvloop" else []
        env = child_env(BENCH_TOKEN=await world.token(SCOPE))
        url = f"http://{HOST}:{port}{PATH}"
        minimal = await _count(argv, env, url, world.tmp / "minimal.cg", args.requests)
        print(json.dumps({"proxy": "minimal", "loop": args.loop,
                          "instructions_per_request": round(minimal)}))  # fmt: skip
        print(f"minimal / ppproxy = {minimal / ours:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests counted (2000)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--tap", action="store_true", help="ppproxy with the tap on")
    parser.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="another checkout's root, for an A/B (default: this one)",
    )
    options = parser.parse_args()
    options.tree = options.tree.resolve()
    asyncio.run(main(options))
