"""The tap page end to end in headless Chromium from Debian (``/usr/bin/chromium``), driven by
Playwright for Python. ``.ci/run`` installs the ``chromium`` package; ``playwright install`` is
never run (its browser downloads are not needed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.testing import EchoUpstream, LocalCA
from proxy.testing.dataverse import DataverseUpstream

from .conftest import StartProxy
from .test_dataverse_standin import batch, request

CHROMIUM = os.environ.get("PPPROXY_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

try:
    from playwright.async_api import Browser, async_playwright, expect
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(
        async_playwright is None, reason="Playwright for Python is not installed (the test extra)"
    ),
    pytest.mark.skipif(
        not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
        reason=f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)",
    ),
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_page_shows_live_exchanges_and_detail(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    browser: Browser,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Requests through the proxy appear in the open page without a reload; filters narrow the
    list; a click opens the detail pane with headers, body and timings. Screenshots are saved
    under the test's tmp dir (and to $PPPROXY_TAP_SCREENSHOT when set)."""
    routes = [
        {"name": name, "prefix": f"/{name}", "upstream": echo.url}
        for name in ("bap", "powerapps", "dataverse")
    ]
    proxy = await start_proxy(routes, tap={"enabled": True})
    page = await browser.new_page(viewport={"width": 1440, "height": 720})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(f"{proxy.url}/_proxy/tap")
    await expect(page.locator("#live")).to_have_class("live on", timeout=10_000)
    await expect(page.locator("#empty")).to_be_visible()

    base = proxy.url
    calls = [
        (
            "GET",
            "/bap/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments"
            "?api-version=2020-10-01",
            None,
        ),
        ("GET", "/powerapps/providers/Microsoft.PowerApps/apps?api-version=2016-11-01", None),
        ("GET", "/dataverse/accounts?$select=name,revenue&$top=3", None),
        ("POST", "/dataverse/contacts", {"firstname": "Ada", "lastname": "Lovelace"}),
        ("GET", "/dataverse/_echo/status/429", None),
        ("PATCH", "/dataverse/contacts(00000000-0000-0000-0000-000000000001)", {"jobtitle": "CTO"}),
        ("GET", "/flow/providers/Microsoft.ProcessSimple/environments", None),
        ("GET", "/bap/_echo/bytes/2048", None),
        ("DELETE", "/dataverse/_echo/status/503", None),
        ("GET", "/powerapps/providers/Microsoft.PowerApps/apps/42?api-version=2016-11-01", None),
    ]
    for method, path, body in calls:
        async with client.request(method, base + path, json=body) as resp:
            await resp.read()

    rows = page.locator("#rows tr")
    await expect(rows).to_have_count(len(calls), timeout=10_000)  # live: no reload
    await expect(rows.first).to_contain_text("/powerapps/providers/Microsoft.PowerApps/apps/42")
    await expect(page.locator("#count")).to_contain_text(f"{len(calls)} exchanges")

    # Filters: status class, free text, route.
    await page.locator("#status button", has_text="4xx").click()
    await expect(rows).to_have_count(2)  # the 429 and the 404 no_route
    await page.locator("#status button", has_text="All").click()
    await page.locator("#q").fill("contacts")
    await expect(rows).to_have_count(2)
    await page.locator("#q").fill("")
    await page.locator("#route").select_option("bap")
    await expect(rows).to_have_count(2)
    await page.locator("#route").select_option("")
    await expect(rows).to_have_count(len(calls))

    # A click opens the detail pane.
    await expect(page.locator("#detail")).to_be_hidden()
    await rows.filter(has_text="/dataverse/contacts").filter(has_text="POST").click()
    detail = page.locator("#detail")
    await expect(detail).to_be_visible()
    await expect(page.locator("#d-target")).to_have_text("/dataverse/contacts")
    await expect(page.locator("#d-body")).to_contain_text("Upstream time to first byte")
    await expect(page.locator("#d-body")).to_contain_text("appid")
    await page.screenshot(path=str(tmp_path / "tap-overview.png"))

    # Keyboard: 2 shows the request, 3 the response; Esc closes; j/k move the selection.
    await page.keyboard.press("2")
    await expect(page.locator("#d-body")).to_contain_text("Headers sent upstream")
    await expect(page.locator("#d-body pre.body")).to_contain_text('"firstname": "Ada"')
    await expect(page.locator("#d-body")).to_contain_text("[redacted]")  # Authorization
    await page.keyboard.press("3")
    await expect(page.locator("#d-body pre.body")).to_contain_text('"method": "POST"')
    await expect(page.locator("#d-body .j-k").first).to_be_visible()  # JSON highlighted
    await page.screenshot(path=str(tmp_path / "tap-response.png"))
    await page.keyboard.press("j")
    await expect(page.locator("#d-target")).to_have_text(
        "/dataverse/accounts?$select=name,revenue&$top=3"
    )
    await page.keyboard.press("1")
    await page.screenshot(path=str(tmp_path / "tap.png"))
    await page.keyboard.press("Escape")
    await expect(detail).to_be_hidden()

    # The binary download shows as size and type only.
    await rows.filter(has_text="/bap/_echo/bytes/2048").click()
    await page.keyboard.press("3")
    await expect(page.locator("#d-body .binary")).to_contain_text(
        "2.0 KiB of application/octet-stream"
    )

    token = dict((k.lower(), v) for k, v in echo.requests[0].headers)["authorization"][7:]
    assert token.split(".")[2] not in await page.content()
    assert problems == []
    target = os.environ.get("PPPROXY_TAP_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "tap.png", target)


async def test_page_lists_a_batchs_inner_requests_and_responses(
    start_proxy: StartProxy,
    browser: Browser,
    client: aiohttp.ClientSession,
    ca: LocalCA,
    tmp_path: Path,
) -> None:
    """A $batch's detail shows its inner requests (as checked) and inner responses."""
    async with DataverseUpstream(ssl_context=ca.server_context()) as dv:
        routes = [{"name": "dv", "prefix": "/dv", "upstream": dv.url, "rewrite_links": True}]
        proxy = await start_proxy(routes, tap={"enabled": True})
        root = f"{proxy.url}/dv/api/data/v9.2"
        body = batch(
            "batch_1",
            [
                request(f"POST {root}/accounts", {"name": "A"}),
                request("PATCH $1", {"name": "B"}),
            ],
            request("GET accounts?$select=name"),
            request("DELETE accounts(00000000-0000-0000-0000-000000000009)"),
        )
        async with client.post(
            f"{root}/$batch",
            data=body.encode(),
            headers={"Content-Type": "multipart/mixed; boundary=batch_1"},
        ) as resp:
            # The DELETE of a missing record fails and stops the batch, which answers its 404.
            assert resp.status == 404
            await resp.read()
        page = await browser.new_page(viewport={"width": 1440, "height": 720})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(f"{proxy.url}/_proxy/tap")
        await page.locator("#rows tr").first.click()
        detail = page.locator("#d-body")
        await expect(detail).to_contain_text("Batch · 4 requests · 1 change set")
        requests, answers = await detail.locator("table.inner").all_text_contents()
        assert "PATCH" in requests
        assert "$1" in requests
        assert "set 1 · 2" in requests
        assert "404" in answers
        assert "accounts(" in answers
        await page.screenshot(path=str(tmp_path / "tap-batch.png"))
        assert problems == []


async def test_page_copies_as_curl_resends_and_edits(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    browser: Browser,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Copy as curl puts a token-free command calling the proxy on the clipboard; Resend makes
    a new exchange, linked to the original, with the same upstream request; Edit and resend
    sends the edited one. The screenshot of the tools goes to $PPPROXY_TAP_TOOLS_SCREENSHOT
    when set (README's)."""
    proxy = await start_proxy(tap={"enabled": True})
    body = b'{"firstname":"Ada","lastname":"Lovelace"}'
    async with client.post(
        f"{proxy.url}/echo/contacts?$select=fullname",
        data=body,
        headers={"Content-Type": "application/json", "Prefer": "return=representation"},
    ) as resp:
        assert resp.status == 200
    context = await browser.new_context(
        viewport={"width": 1280, "height": 640}, permissions=["clipboard-read", "clipboard-write"]
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(f"{proxy.url}/_proxy/tap")
    rows = page.locator("#rows tr")
    await expect(rows).to_have_count(1, timeout=10_000)
    await rows.first.click()

    await page.locator("#copy-curl").click()
    await expect(page.locator("#d-msg")).to_have_text("curl command copied")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(f"curl '{proxy.url}/echo/contacts?$select=fullname'")
    assert "-H 'Prefer: return=representation'" in copied
    assert "--data-binary '" + body.decode() + "'" in copied
    token = dict((k.lower(), v) for k, v in echo.requests[0].headers)["authorization"][7:]
    assert token.split(".")[2] not in copied
    assert "Authorization" not in copied
    await page.locator("#copy-ps").click()
    await expect(page.locator("#d-msg")).to_have_text("PowerShell command copied")
    assert (await page.evaluate("navigator.clipboard.readText()")).startswith(
        "Invoke-RestMethod -Method POST"
    )

    await page.locator("#resend").click()
    await expect(rows).to_have_count(2, timeout=10_000)
    await expect(page.locator("#d-msg")).to_contain_text("Resent as #2 (from #1): 200")
    await expect(rows.first.locator(".resent")).to_have_attribute("title", "resent from #1")
    first, again = echo.requests
    assert (again.method, again.raw_path, again.body_sha256) == (
        first.method,
        first.raw_path,
        first.body_sha256,
    )

    await page.locator("#edit").click()
    await page.locator("#e-method").fill("PATCH")
    await page.locator("#e-target").fill("/echo/contacts(7)")
    await page.locator("#e-body").fill('{"jobtitle":"Analyst"}')
    await page.screenshot(path=str(tmp_path / "tap-tools.png"))
    await page.locator("#e-send").click()
    await expect(rows).to_have_count(3, timeout=10_000)
    edited = echo.requests[2]
    assert (edited.method, edited.raw_path, edited.body_bytes) == ("PATCH", "/contacts(7)", 22)
    assert ("Prefer", "return=representation") in edited.headers  # headers kept as captured
    assert problems == []
    target = os.environ.get("PPPROXY_TAP_TOOLS_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "tap-tools.png", target)
    await context.close()


async def test_a_page_of_another_origin_cannot_resend(
    start_proxy: StartProxy,
    echo: EchoUpstream,
    browser: Browser,
    client: aiohttp.ClientSession,
) -> None:
    """A page of another origin on the same site (127.0.0.1, another port: the guard's Host,
    Origin and Sec-Fetch-Site checks let it through) can neither send the page's header (the
    CORS preflight fails) nor resend without it."""
    proxy = await start_proxy(tap={"enabled": True})
    async with client.post(f"{proxy.url}/echo/x", data=b"{}") as resp:
        assert resp.status == 200

    async def elsewhere(_: web.Request) -> web.Response:
        return web.Response(text="<p>elsewhere</p>", content_type="text/html")

    evil = web.Application()
    evil.router.add_get("/", elsewhere)
    runner = web.AppRunner(evil)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    evil_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        page = await browser.new_page()
        await page.goto(evil_url + "/")
        outcome = await page.evaluate(
            """async (url) => {
                const out = [];
                try {
                    const headers = { "X-PPProxy-Tap": "resend" };
                    const r = await fetch(url, { method: "POST", headers });
                    out.push("with header: " + r.status);
                } catch (e) { out.push("with header: blocked"); }
                try {
                    await fetch(url, { method: "POST", mode: "no-cors", body: "{}" });
                    out.push("no-cors: sent");
                } catch (e) { out.push("no-cors: blocked"); }
                return out;
            }""",
            f"{proxy.url}/_proxy/tap/exchanges/1/resend",
        )
        assert outcome[0] == "with header: blocked"
        await asyncio.sleep(0.3)
    finally:
        await runner.cleanup()
    assert len(echo.requests) == 1
    async with client.get(f"{proxy.url}/_proxy/tap/exchanges") as resp:
        listed = (await resp.json())["exchanges"]
    # The preflight shows as the 404 it got; no resent exchange.
    assert [(x["method"], x["target"]) for x in listed if x["target"].startswith("/echo")] == [
        ("POST", "/echo/x")
    ]
    assert all(x["resend_of"] is None for x in listed)
