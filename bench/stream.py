"""Large bodies through ppproxy: 1 GiB up and 1 GiB down, checksums verified, throughput and
the proxy process's memory while it streams.

    python bench/stream.py [--mib 1024]

The upstream is ``proxy.testing.EchoUpstream`` over HTTPS (it hashes uploads and serves
``/_echo/bytes/N``); the identity provider is ``proxy.testing.IdentityProvider``; the proxy is
``python -m proxy serve`` in its own process. VmRSS of the proxy (and any process it forked) is
sampled every 50 ms from /proc; growth is the peak minus the value after a 1 MiB warm-up each
way. The same transfers straight to the upstream give the reference throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

import aiohttp
from _harness import (
    HOST,
    Route,
    RssSampler,
    free_port,
    ppproxy_argv,
    process_tree,
    start_ppproxy,
    status_kib,
)
from _local import Local, local

from proxy.testing import EchoUpstream, pattern, pattern_sha256

MIB = 1024 * 1024
GROWTH_TARGET_MIB = 32
_WARMUP = MIB


@dataclass(frozen=True)
class Transfer:
    seconds: float
    ok: bool  # byte count and SHA-256 matched

    def mib_s(self, size: int) -> float:
        return size / MIB / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class StreamResult:
    size: int
    up: Transfer
    down: Transfer
    direct_up: Transfer | None
    direct_down: Transfer | None
    rss_base_mib: float
    rss_peak_mib: float
    hwm_before_mib: float
    hwm_after_mib: float
    samples: int
    command: str

    @property
    def growth_mib(self) -> float:
        return max(self.rss_peak_mib, self.hwm_after_mib) - self.rss_base_mib

    @property
    def ok(self) -> bool:
        return self.up.ok and self.down.ok


async def _body(size: int) -> AsyncIterator[bytes]:
    for chunk in pattern(size):
        yield chunk


async def upload(session: aiohttp.ClientSession, base: str, size: int) -> Transfer:
    started = time.perf_counter()
    async with session.post(f"{base}/upload", data=_body(size)) as r:
        answer = await r.json()
    seconds = time.perf_counter() - started
    ok = (
        r.status == 200
        and answer.get("body_bytes") == size
        and answer.get("body_sha256") == pattern_sha256(size)
    )
    return Transfer(seconds, ok)


async def download(session: aiohttp.ClientSession, base: str, size: int) -> Transfer:
    started = time.perf_counter()
    digest, got = hashlib.sha256(), 0
    async with session.get(f"{base}/_echo/bytes/{size}") as r:
        async for chunk in r.content.iter_any():
            digest.update(chunk)
            got += len(chunk)
        status = r.status
    seconds = time.perf_counter() - started
    return Transfer(
        seconds, status == 200 and got == size and digest.hexdigest() == pattern_sha256(size)
    )


def _session(loc: Local) -> aiohttp.ClientSession:
    # Bounded: a stalled transfer fails after a minute without bytes, a slow one after 15.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=loc.ca.client_context()),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=900, sock_read=60),
    )


def _tree_kib(pid: int, key: str) -> int:
    return sum(status_kib(p, key) for p in process_tree(pid))


async def measure(loc: Local, size: int, *, direct: bool = True) -> StreamResult:
    """Stream ``size`` bytes up and down through a fresh ppproxy, then (``direct``) straight."""
    pattern_sha256(size)  # computed once here, not inside the timed transfers
    async with EchoUpstream(ssl_context=loc.ca.server_context()) as echo:
        port = free_port()
        scope = "https://stream.bench.invalid/.default"
        config = loc.proxy_config("stream", port, [Route("echo", "/", echo.url, scope)])
        proxy = await start_ppproxy(loc.procs, "ppproxy-stream", config, port, loc.tmp / "s.log")
        base = f"http://{HOST}:{port}"
        try:
            async with _session(loc) as session:
                if not ((await upload(session, base, _WARMUP)).ok):
                    raise RuntimeError("warm-up upload through ppproxy failed")
                await download(session, base, _WARMUP)
                rss_base = _tree_kib(proxy.pid, "VmRSS")
                hwm_before = _tree_kib(proxy.pid, "VmHWM")
                with RssSampler(proxy.pid) as sampler:
                    up = await upload(session, base, size)
                    down = await download(session, base, size)
                hwm_after = _tree_kib(proxy.pid, "VmHWM")
        finally:
            await loc.procs.stop(proxy)
        direct_up = direct_down = None
        if direct:
            async with _session(loc) as session:
                direct_up = await upload(session, echo.url, size)
                direct_down = await download(session, echo.url, size)
    return StreamResult(
        size=size,
        up=up,
        down=down,
        direct_up=direct_up,
        direct_down=direct_down,
        rss_base_mib=rss_base / 1024,
        rss_peak_mib=max(sampler.samples, default=0) / 1024,
        hwm_before_mib=hwm_before / 1024,
        hwm_after_mib=hwm_after / 1024,
        samples=len(sampler.samples),
        command=" ".join(ppproxy_argv(config)).replace(str(loc.tmp), "$TMP"),
    )


def describe(r: StreamResult) -> str:
    lines = [
        f"{r.size / MIB:g} MiB each way through ppproxy, checksums {'ok' if r.ok else 'WRONG'}"
    ]
    for label, t, d in (("up", r.up, r.direct_up), ("down", r.down, r.direct_down)):
        line = f"  {label:4} {t.mib_s(r.size):7.1f} MiB/s through ppproxy"
        if d is not None:
            line += f", {d.mib_s(r.size):7.1f} MiB/s direct"
        lines.append(line)
    met = "met" if r.growth_mib <= GROWTH_TARGET_MIB else "NOT met"
    lines.append(
        f"  RSS {r.rss_base_mib:.1f} MiB after warm-up, peak {r.rss_peak_mib:.1f} MiB "
        f"({r.samples} samples), VmHWM {r.hwm_before_mib:.1f} -> {r.hwm_after_mib:.1f} MiB; "
        f"growth {r.growth_mib:.1f} MiB (target <= {GROWTH_TARGET_MIB} MiB: {met})"
    )
    return "\n".join(lines)


async def _main(size: int, direct: bool) -> StreamResult:
    async with local() as loc:
        return await measure(loc, size, direct=direct)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB each way (default: 1024)")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct reference")
    args = parser.parse_args()
    result = asyncio.run(_main(args.mib * MIB, not args.no_direct))
    print(describe(result))
    print(asdict(result), file=sys.stderr)
    return 0 if result.ok and result.growth_mib <= GROWTH_TARGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
