"""Shared pieces of the benchmark: processes, nginx and proxy configs, wrk, a paced client,
RSS sampling and the machine description.

Everything binds and connects to 127.0.0.1 only. Every process started here goes through
``Procs``, which ends all of them (by process group, SIGTERM then SIGKILL) on exit, errors
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"  # noqa: S105 (a fake secret for the local identity provider)
SECRET_ENV = "BENCH_CLIENT_SECRET"  # noqa: S105 (the name of a variable, not a secret)
UPSTREAM_BODY = "hello from the upstream\n"


# --------------------------------------------------------------------------- tools


def ensure_debian_tools(binaries: Mapping[str, str]) -> None:
    """Install the Debian packages (binary -> package) whose binaries are missing."""
    missing = sorted({pkg for binary, pkg in binaries.items() if shutil.which(binary) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit(f"bench: install {' '.join(missing)} first (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"bench: apt-get install {' '.join(missing)}", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)  # noqa: S607
    subprocess.run(  # noqa: S603 (fixed package names from this file)
        ["apt-get", "install", "-y", "-qq", *missing],  # noqa: S607
        check=True,
        env=env,
        timeout=900,
    )


def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output (nginx prints it on stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return "not installed"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no outbound proxy, so loopback stays direct."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    argv: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.process.pid


class Procs:
    """Starts child processes in their own process groups and ends all of them on exit."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> Proc:
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            out = log.open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=dict(env) if env is not None else child_env(),
                start_new_session=True,
                cwd=cwd,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        proc = Proc(name, process, tuple(argv))
        self._procs.append(proc)
        return proc

    async def stop(self, proc: Proc, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if it has not ended within ``grace`` s."""
        if proc in self._procs:
            self._procs.remove(proc)
        if proc.process.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.process.wait(), grace)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.process.wait(), 5.0)
        # Workers a proxy forked stay in its group; make sure none outlives it.
        _signal_group(proc.pid, signal.SIGKILL)

    async def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            await self.stop(proc)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_all()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The group id is the child's pid (start_new_session): only processes started here.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def wait_http(url: str, proc: Proc, within: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.process.returncode is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {within:g} s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/PID/status; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the processes, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples the summed VmRSS of a process tree every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[int] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(sum(status_kib(p, "VmRSS") for p in process_tree(self._pid)))
            self._stop.wait(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


# --------------------------------------------------------------------------- nginx


def _nginx_main(workdir: Path) -> str:
    # One process, in the foreground: its pid is the one to stop, and nothing is left behind.
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type text/plain;
"""


def nginx_upstream_conf(
    workdir: Path, port: int, *, tls_port: int = 0, tls: tuple[Path, Path] | None = None
) -> str:
    """nginx answering ``return 200`` with a small body on ``port``, and over HTTPS on
    ``tls_port`` when given ``tls`` (certificate chain, key)."""
    listen = f"listen {HOST}:{port};"
    if tls is not None and tls_port:
        listen += f"""
        listen {HOST}:{tls_port} ssl;
        ssl_certificate {tls[0]};
        ssl_certificate_key {tls[1]};"""
    return (
        _nginx_main(workdir)
        + f"""
    server {{
        {listen}
        location / {{ return 200 "{UPSTREAM_BODY.strip()}\\n"; }}
    }}
}}
"""
    )


def nginx_proxy_conf(workdir: Path, port: int, upstream_port: int, token: str) -> str:
    """nginx as the header-injecting reverse proxy, with upstream keepalive."""
    return (
        _nginx_main(workdir)
        + f"""
    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}
}}
"""
    )


def write_nginx_conf(workdir: Path, conf: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


async def start_nginx(procs: Procs, name: str, workdir: Path, conf: str, port: int) -> Proc:
    path = write_nginx_conf(workdir, conf)
    argv = ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(path)]
    proc = await procs.start(name, argv, log=workdir / "stderr.log")
    await wait_port(port, proc)
    return proc


async def wait_port(port: int, proc: Proc, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.process.returncode is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"{proc.name} is not listening on {port} after {within:g} s")


# --------------------------------------------------------------------------- ppproxy


@dataclass(frozen=True)
class Route:
    name: str
    prefix: str
    upstream: str
    scope: str


def proxy_toml(
    *,
    port: int,
    authority_host: str,
    tenant: str,
    ca_file: Path,
    routes: Sequence[Route],
    workers: int = 1,
    prefetch: bool = True,
    tap: bool = False,
    event_loop: str = "auto",
) -> str:
    """A ppproxy configuration; the client secret comes from ``${BENCH_CLIENT_SECRET}``."""
    lines = [
        "[server]",
        f'host = "{HOST}"',
        f"port = {port}",
        f"workers = {workers}",
        f'event_loop = "{event_loop}"',
        "",
        "[outbound]",
        f"ca_file = {json.dumps(str(ca_file))}",
        "",
        "[tokens]",
        f"prefetch = {'true' if prefetch else 'false'}",
        "",
        "[identities.bench]",
        f'tenant_id = "{tenant}"',
        f'client_id = "{CLIENT_ID}"',
        f'client_secret = "${{{SECRET_ENV}}}"',
        f'authority_host = "{authority_host}"',
    ]
    if tap:
        lines += ["", "[tap]", "enabled = true"]
    for r in routes:
        lines += [
            "",
            "[[routes]]",
            f'name = "{r.name}"',
            f'prefix = "{r.prefix}"',
            f'upstream = "{r.upstream}"',
            f'scope = "{r.scope}"',
        ]
    return "\n".join(lines) + "\n"


def ppproxy_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--log-level", "info"]


async def start_ppproxy(
    procs: Procs, name: str, config: Path, port: int, log: Path, *, tree: Path = ROOT
) -> Proc:
    """``python -m proxy serve`` with its (JSON) logs in ``log``; waits for livez. ``tree`` is
    the source tree whose ``proxy`` package runs (another revision, for bench/compare.py)."""
    env = child_env(**{SECRET_ENV: CLIENT_SECRET}, PYTHONPATH=str(tree))
    proc = await procs.start(name, ppproxy_argv(config), log=log, env=env, cwd=tree)
    await wait_http(f"http://{HOST}:{port}/_proxy/livez", proc)
    return proc


def count_request_events(log: Path) -> int:
    """How many ``request`` events ppproxy logged (one JSON line per request)."""
    if not log.exists():
        return 0
    with log.open("rb") as f:
        return sum(1 for line in f if b'"event": "request"' in line or b'"event":"request"' in line)


# --------------------------------------------------------------------------- wrk


_WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format(
    "BENCH-JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"mean_us\\": %f, \\"max_us\\": %d, \\"connect\\": %d, "
    .. "\\"read\\": %d, \\"write\\": %d, \\"timeout\\": %d, \\"status\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status))
end
"""


@dataclass(frozen=True)
class WrkSettings:
    threads: int = 2
    connections: int = 50
    duration: float = 10.0
    warmup: float = 2.0
    headers: tuple[str, ...] = ()

    def argv(self, url: str, script: Path, duration: float | None = None) -> list[str]:
        seconds = self.duration if duration is None else duration
        return [
            "wrk",
            *(f"-H{h}" for h in self.headers),
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds only
            "--latency",
            "-s",
            str(script),
            url,
        ]

    def shown(self, url: str) -> str:
        headers = "".join(f" -H '{h}'" for h in self.headers)
        return (
            f"wrk -t{self.threads} -c{self.connections} -d{self.duration:g}s{headers} "
            f"--latency {url}"
        )


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    warmup_requests: int
    errors: int
    non_2xx: int
    command: str
    cpu_cores: float | None  # CPU time of the measured process tree / wall time
    foreign_cores: float  # CPU used meanwhile by processes this benchmark did not start


async def run_wrk(
    settings: WrkSettings, url: str, workdir: Path, *, cpu_pid: int | None = None
) -> WrkResult:
    """A warm-up run (discarded), then the measured run; ``cpu_pid``'s tree CPU is measured."""
    script = workdir / "report.lua"
    script.write_text(_WRK_LUA)
    warm, _ = await _wrk_once(settings.argv(url, script, settings.warmup), settings.warmup)
    pids = process_tree(cpu_pid) if cpu_pid is not None else []
    cpu_before, wall_before = cpu_seconds(pids), time.monotonic()
    data, foreign = await _wrk_once(settings.argv(url, script), settings.duration)
    cpu = (cpu_seconds(pids) - cpu_before) / (time.monotonic() - wall_before) if pids else None
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=int(data["requests"]),
        warmup_requests=int(warm["requests"]),
        errors=int(data["connect"] + data["read"] + data["write"] + data["timeout"]),
        non_2xx=int(data["status"]),
        command=settings.shown(url),
        cpu_cores=cpu,
        foreign_cores=foreign,
    )


async def _wrk_once(argv: Sequence[str], duration: float) -> tuple[dict[str, Any], float]:
    """wrk's numbers, and the CPU (in cores) other processes used while it ran."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        communicate = asyncio.ensure_future(process.communicate())
        foreign = await _foreign_load(duration)
        out, _ = await asyncio.wait_for(communicate, duration + 30)
    finally:
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()
    text = out.decode(errors="replace")
    match = re.search(r"^BENCH-JSON (\{.*\})$", text, re.MULTILINE)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{text}")
    return dict(json.loads(match.group(1))), foreign


async def _foreign_load(duration: float) -> float:
    """Busy CPU (cores) of the whole machine minus this benchmark's own process tree, over
    the middle of a run: other work on a shared machine shows up here."""
    await asyncio.sleep(min(0.3, duration / 4))
    mine = process_tree(os.getpid())
    busy0, ours0, t0 = _busy_seconds(), {p: cpu_seconds([p]) for p in mine}, time.monotonic()
    await asyncio.sleep(max(0.1, duration - 0.8))
    busy1, t1 = _busy_seconds(), time.monotonic()
    # A process that ended in between reads as 0 now: leave it out of both ends.
    ours = sum(max(0.0, cpu_seconds([p]) - before) for p, before in ours0.items())
    return max(0.0, ((busy1 - busy0) - ours) / (t1 - t0))


def _busy_seconds() -> float:
    """Non-idle CPU seconds of all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------- paced client


@dataclass(frozen=True)
class Paced:
    rate: float
    sent: int
    ok: int
    p50_ms: float
    p99_ms: float


async def paced_latency(url: str, *, rate: float, duration: float, warmup: float = 1.0) -> Paced:
    """Open-loop client: request i is due at t0 + i/rate and its latency is counted from then
    (as wrk2 does), so a slow answer cannot hide the requests queued behind it."""
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _paced(session, url, rate, warmup)
        latencies = await _paced(session, url, rate, duration)
    ok = [x for x in latencies if x is not None]
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) >= 2 else [0.0] * 99
    return Paced(rate, len(latencies), len(ok), q[49] * 1000, q[98] * 1000)


async def _paced(
    session: aiohttp.ClientSession, url: str, rate: float, duration: float
) -> list[float | None]:
    count = int(rate * duration)
    results: list[float | None] = [None] * count
    loop = asyncio.get_running_loop()

    async def one(i: int, due: float) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url) as r:
                await r.read()
                if r.status == 200:
                    results[i] = loop.time() - due

    tasks = []
    start = loop.time() + 0.05
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return results


# --------------------------------------------------------------------------- machine


@dataclass
class Machine:
    cpu: str
    nproc: int
    memory_gib: float
    kernel: str
    os_name: str
    python: str
    versions: dict[str, str] = field(default_factory=dict)


def machine() -> Machine:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    versions = {}
    for dist in ("aiohttp", "structlog", "msal", "ppproxy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    versions["nginx"] = tool_version(["nginx", "-v"]).removeprefix("nginx version: ")
    versions["wrk"] = tool_version(["wrk", "-v"]).split(" [")[0]
    versions["OpenSSL (Python)"] = ssl.OPENSSL_VERSION
    return Machine(
        cpu=cpu,
        nproc=os.cpu_count() or 0,
        memory_gib=mem_kib / 1024 / 1024,
        kernel=platform.release(),
        os_name=os_name,
        python=platform.python_version(),
        versions=versions,
    )


def git_revision() -> str:
    """The commit the bench ran on, with ``+dirty`` when the tree had local changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not dirty:
        return rev
    # Others may be changing proxy/ while this runs: name the exact sources measured.
    digest = hashlib.sha256()
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return f"{rev} with uncommitted changes under proxy/ (sources sha256 {digest.hexdigest()[:12]})"
