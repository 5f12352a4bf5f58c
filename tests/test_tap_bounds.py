"""The tap's bounds and its file: headers capped per exchange, every record counted against
tap.max_memory, unrouted requests in their own small ring, the reason phrase and SAS / bare
signature values redacted; the recording file never followed through a symbolic link, created
0600, refused when another user owns it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.app import TAP
from proxy.config import from_dict
from proxy.config.tap import TapConfig
from proxy.errors import ConfigError
from proxy.redaction import redact_text
from proxy.tap.recorder import Recorder, TapFileError
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import Proxy, StartProxy, config_dict
from .processes import spawn, write_config
from .upstreams import upstream


async def listed(client: aiohttp.ClientSession, proxy: Proxy) -> list[dict[str, Any]]:
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges") as resp:
        items: list[dict[str, Any]] = (await resp.json())["exchanges"]
    return items


async def detail(client: aiohttp.ClientSession, proxy: Proxy, exchange_id: int) -> dict[str, Any]:
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges/{exchange_id}") as resp:
        found: dict[str, Any] = await resp.json()
    return found


def header_bytes(record: dict[str, Any]) -> int:
    lists = ("client_headers", "upstream_headers", "response_headers")
    return sum(len(k) + len(v) + 4 for name in lists for k, v in record[name] or [])


def big_headers(count: int, size: int) -> dict[str, str]:
    return {f"X-Big-{n}": "v" * size for n in range(count)}


async def test_headers_capped_per_exchange(
    start_proxy: StartProxy, echo: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    """A request with 200 KB of headers is forwarded whole, but the tap keeps at most
    tap.max_header_bytes (16 KiB by default) of its request line and headers, and says so."""
    proxy = await start_proxy(tap={"enabled": True})
    async with client.get(f"{proxy.url}/echo/x", headers=big_headers(50, 4000)) as resp:
        assert resp.status == 200
    assert sum(k.startswith("X-Big-") for k, _ in echo.requests[0].headers) == 50
    [item] = await listed(client, proxy)
    record = await detail(client, proxy, item["id"])
    assert header_bytes(record) <= 16 * 1024 + 512  # the notes saying what was cut
    notes = [v for k, v in record["upstream_headers"] + record["response_headers"]]
    assert any("not kept: over tap.max_header_bytes" in v for v in notes)
    assert record["resendable"] is False  # cut headers cannot be sent again as they were


async def test_memory_bound_counts_bodies_and_headers(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """Records are counted whole against tap.max_memory: large bodies, or large headers
    without bodies, push the oldest out before `keep` is reached; the newest stays."""
    proxy = await start_proxy(tap={"enabled": True, "max_memory": 1024 * 1024})
    tap = proxy.app[TAP]
    for n in range(30):
        async with client.post(f"{proxy.url}/echo/body/{n}", data=b"b" * 65536) as resp:
            assert resp.status == 200
    by_body = await listed(client, proxy)
    assert 5 < len(by_body) < 30
    assert by_body[-1]["target"] == "/echo/body/29"
    assert tap.memory <= 1024 * 1024
    for n in range(120):
        async with client.get(f"{proxy.url}/echo/h/{n}", headers=big_headers(4, 4000)) as resp:
            assert resp.status == 200
    by_headers = await listed(client, proxy)
    assert 10 < len(by_headers) < 120
    assert all(x["target"].startswith("/echo/h/") for x in by_headers)
    assert tap.memory <= 1024 * 1024


async def test_unrouted_requests_cannot_flush_the_tap(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """404 no_route exchanges go to their own small ring (tap.keep_unrouted): a flood of them
    leaves the routed exchanges in place."""
    proxy = await start_proxy(tap={"enabled": True, "keep": 10, "keep_unrouted": 3})
    for n in range(2):
        async with client.get(f"{proxy.url}/echo/kept/{n}") as resp:
            assert resp.status == 200
    for n in range(50):
        async with client.get(f"{proxy.url}/nowhere/{n}") as resp:
            assert resp.status == 404
    targets = [x["target"] for x in await listed(client, proxy)]
    assert targets == ["/echo/kept/0", "/echo/kept/1", "/nowhere/47", "/nowhere/48", "/nowhere/49"]


async def test_reason_phrase_redacted(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """An upstream's reason phrase goes through the same redaction as everything else."""
    jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"

    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=400, reason=f"Bad token {jwt}", text="no")

    async with upstream(handler) as url:
        proxy = await start_proxy(
            [{"name": "up", "prefix": "/up", "upstream": url}], tap={"enabled": True}
        )
        async with client.get(f"{proxy.url}/up/x") as resp:
            assert resp.status == 400
        [item] = await listed(client, proxy)
        record = await detail(client, proxy, item["id"])
        async with client.get(f"{proxy.url}/_proxy/tap.har") as resp:
            har = await resp.text()
    assert record["reason"] == "Bad token [redacted]"
    assert jwt not in har
    assert jwt.split(".")[2] not in har


async def test_sas_signature_and_bare_jwt_signature_redacted(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """A SAS URL's sig= and a JWT's signature on its own (here RS256-sized, in a header and a
    query) are redacted in the tap; a GUID-bearing environment name is not."""
    proxy = await start_proxy(tap={"enabled": True})
    signature = base64.urlsafe_b64encode(secrets.token_bytes(256)).decode().rstrip("=")
    environment = "Default-8f1c2a3b-1234-5678-9abc-def012345678"
    target = f"/echo/environments/{environment}?sv=2022-11-02&sig=AbC%2Bd3f%3D&x={signature}"
    async with client.get(f"{proxy.url}{target}", headers={"X-Signature": signature}) as resp:
        assert resp.status == 200
    [item] = await listed(client, proxy)
    text = json.dumps(await detail(client, proxy, item["id"]))
    assert "AbC%2Bd3f" not in text
    assert signature not in text
    assert f"/echo/environments/{environment}?sv=2022-11-02&sig=[redacted]&x=[redacted]" in text
    assert ["X-Signature", "[redacted]"] in (await detail(client, proxy, item["id"]))[
        "client_headers"
    ]


@pytest.mark.parametrize(
    "value",
    [
        "ContosoSalesDataverseEnvironmentProduction2024",
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        "/api/data/v9.2/accounts(00000000-0000-0000-0000-000000000001)",
    ],
)
def test_names_digests_and_ids_are_not_taken_for_signatures(value: str) -> None:
    assert redact_text(value) == value


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    seed=st.integers(min_value=0, max_value=2**32),
    size=st.integers(min_value=64, max_value=256),
)
def test_signatures_redacted_wherever_they_sit(
    before: str, after: str, seed: int, size: int
) -> None:
    """Property (part of the fuzz run): a SAS sig= value and a bare signature (ES256-sized or
    longer) never survive redaction, whatever text surrounds them; redaction is idempotent."""
    # A signature is random bytes (ES256: 64, RS256: 256), not any bytes.
    value = base64.urlsafe_b64encode(random.Random(seed).randbytes(size)).decode().rstrip("=")
    text = f"{before} ?sv=1&sig={value[:20]}&se=2 {value} {after}"
    out = redact_text(text)
    assert value[:20] not in out.split("sig=", 1)[1][:20]
    assert value not in out
    assert redact_text(out) == out


# -- the tap file --------------------------------------------------------------------------


def tap_raw(idp: IdentityProvider, echo: EchoUpstream, ca_file: Path, file: Path) -> Any:
    routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
    return config_dict(idp, ca_file, routes, tap={"enabled": True, "file": str(file)})


async def test_symlink_at_the_tap_file_is_refused(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path, tmp_path: Path
) -> None:
    """A symbolic link planted at tap.file: refused at load (by key path) and by `ppproxy
    serve` (exit 2, nothing written through it); one planted after the check is refused when
    the file is opened (O_NOFOLLOW)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    link = tmp_path / "tap.jsonl"
    link.symlink_to(victim)
    with pytest.raises(ConfigError, match=r"tap.file: .*symbolic link"):
        from_dict(tap_raw(idp, echo, ca_file, link), {}, base_dir=tmp_path)
    proc = await spawn(
        "serve", "--config", str(write_config(tmp_path, tap_raw(idp, echo, ca_file, link)))
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"symbolic link" in err
    # Planted between the check and the open:
    later = tmp_path / "later.jsonl"
    recorder = Recorder(TapConfig(enabled=True, file=later))
    later.symlink_to(victim)
    with pytest.raises(TapFileError, match="symbolic link"):
        await recorder.start()
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


async def test_tap_file_created_and_kept_owner_only(tmp_path: Path) -> None:
    """A new file is created 0600 whatever the umask; an existing 0644 one is narrowed."""
    old = os.umask(0)
    try:
        fresh = Recorder(TapConfig(enabled=True, file=tmp_path / "new.jsonl"))
        await fresh.start()
        await fresh.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == 0o600
    existing = tmp_path / "old.jsonl"
    existing.write_text("")
    existing.chmod(0o644)
    recorder = Recorder(TapConfig(enabled=True, file=existing))
    await recorder.start()
    await recorder.close()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="making a file another user owns needs root (CI runs as root)",
)
async def test_tap_file_of_another_user_refused(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path, tmp_path: Path
) -> None:
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text("")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match=r"tap.file: .*another user"):
        from_dict(tap_raw(idp, echo, ca_file, theirs), {}, base_dir=tmp_path)
    recorder = Recorder(TapConfig(enabled=True, file=theirs))
    with pytest.raises(TapFileError, match="another user"):
        await recorder.start()
    assert theirs.read_text() == ""


async def test_fifo_at_the_tap_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO planted at tap.file (after the check at load) is refused at once when the file is
    opened, with or without a reader, instead of blocking the recorder (and shutdown) forever;
    a regular file opened the same way is written with blocking writes."""
    path = tmp_path / "tap.jsonl"
    os.mkfifo(path)
    try:
        recorder = Recorder(TapConfig(enabled=True, file=path))
        with pytest.raises(TapFileError, match="not a regular file"):
            await asyncio.wait_for(recorder.start(), 2)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(TapFileError, match="not a regular file"):
                await asyncio.wait_for(Recorder(TapConfig(enabled=True, file=path)).start(), 2)
        finally:
            os.close(reader)
    finally:
        # Before the fix the open blocked in a worker thread: a reader lets it go.
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    regular = Recorder(TapConfig(enabled=True, file=tmp_path / "regular.jsonl"))
    await regular.start()
    assert regular._file is not None
    assert os.get_blocking(regular._file.fileno())
    await regular.close()


async def test_fifo_planted_before_a_rotation_does_not_block_the_recorder(
    start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """While the tap file rotates, FIFOs keep being planted at its name: the reopen refuses
    one at once (never waits on it), the recorder keeps running and writes again once the name
    is free, and it still closes (shutdown does not hang)."""
    path = tmp_path / "tap.jsonl"
    proxy = await start_proxy(
        tap={"enabled": True, "file": str(path), "file_max_bytes": 1024, "file_keep": 1}
    )
    recorder = proxy.app[TAP].recorder
    assert recorder is not None
    moved = tmp_path / "planted"
    stop = threading.Event()
    planted = 0

    def plant() -> None:
        nonlocal planted
        while not stop.is_set():
            try:
                os.mkfifo(path)
                planted += 1
            except FileExistsError:
                pass

    planter = threading.Thread(target=plant, daemon=True)
    planter.start()
    try:
        for _ in range(40):
            async with client.get(f"{proxy.url}/echo/x?pad={'p' * 400}") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.01)  # one batch, so one rotation, at a time
        stop.set()
        planter.join()
        assert planted >= 1
        assert stat.S_ISFIFO(path.lstat().st_mode)  # what the last reopen met
        path.rename(moved)  # kept, not unlinked: before the fix an open waits on it
        async with client.get(f"{proxy.url}/echo/after-the-fifo") as resp:
            assert resp.status == 200
        assert (await listed(client, proxy))[-1]["target"] == "/echo/after-the-fifo"
        await asyncio.wait_for(recorder.close(), 5)
        assert "/echo/after-the-fifo" in path.read_text()
    finally:
        stop.set()
        planter.join()
        for fifo in (path, moved):  # before the fix: let the blocked open go
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
