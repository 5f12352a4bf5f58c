"""The exchange and its observers: what an observer sees, in which order, and that it cannot
break a request; one State per configuration version."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app import RUNTIME, create_app
from proxy.config import from_dict
from proxy.exchange import Exchange, Observer
from proxy.state import State
from proxy.testing import EchoUpstream, IdentityProvider

from .conftest import config_dict, events, serve_app


class Recorder(Observer):
    """Writes down each call with a copy of the fields it can see at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _note(self, point: str, exchange: Exchange) -> None:
        seen = {
            "route": exchange.route,
            "status": exchange.status,
            "refused": exchange.refused,
            "error": exchange.error,
            "token_source": exchange.token_source,
            "bytes_out": exchange.bytes_out,
            "client": exchange.client,
            "request_id": exchange.request_id,
        }
        self.calls.append((point, seen))

    def received(self, exchange: Exchange) -> None:
        self._note("received", exchange)

    def response_started(self, exchange: Exchange) -> None:
        self._note("response_started", exchange)

    def finished(self, exchange: Exchange) -> None:
        self._note("finished", exchange)


class Broken(Observer):
    def finished(self, exchange: Exchange) -> None:
        raise RuntimeError("an observer's own bug")


async def start(
    idp: IdentityProvider,
    echo: EchoUpstream,
    ca_file: Path,
    *observers: Observer,
    **tables: Any,
) -> tuple[str, Any]:
    routes = [{"name": "echo", "prefix": "/echo", "upstream": echo.url}]
    config = from_dict(config_dict(idp, ca_file, routes, **tables), {}, base_dir=Path.cwd())
    app = create_app(config, observers=observers)
    runner, url = await serve_app(app)
    return url, runner


async def test_an_observer_sees_the_three_points_in_order(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path, client: aiohttp.ClientSession
) -> None:
    """Registered at start, never touching the forwarder: received, then response_started
    with the status known, then finished with the bytes counted."""
    seen = Recorder()
    url, runner = await start(idp, echo, ca_file, seen)
    try:
        async with client.get(f"{url}/echo/x", headers={"x-ms-client-request-id": "r-1"}) as r:
            body = await r.read()
    finally:
        await runner.cleanup()
    assert [point for point, _ in seen.calls] == ["received", "response_started", "finished"]
    received, started, finished = (fields for _, fields in seen.calls)
    assert received["status"] == 0
    assert received["route"] is None
    assert started["status"] == 200
    assert started["route"] == "echo"
    assert started["token_source"] == "entra"
    assert started["bytes_out"] is None
    assert finished["bytes_out"] == len(body)
    assert {f["request_id"] for f in (received, started, finished)} == {"r-1"}


async def test_proxy_answers_and_refusals_are_exchanges_too(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path, client: aiohttp.ClientSession
) -> None:
    """A 404 from the forwarder and a 403 from the guard reach observers with their codes;
    the guard's refusal is marked refused and never names a route."""
    seen = Recorder()
    url, runner = await start(idp, echo, ca_file, seen)
    try:
        async with client.get(f"{url}/nowhere") as r:
            assert r.status == 404
        async with client.get(f"{url}/echo/x", headers={"Host": "evil.example"}) as r:
            assert r.status == 403
    finally:
        await runner.cleanup()
    finished = [fields for point, fields in seen.calls if point == "finished"]
    assert [(f["status"], f["error"], f["refused"]) for f in finished] == [
        (404, "no_route", False),
        (403, "host_not_allowed", True),
    ]
    assert finished[1]["route"] is None
    assert len(echo.requests) == 0


async def test_a_failing_observer_breaks_nothing(
    idp: IdentityProvider,
    echo: EchoUpstream,
    ca_file: Path,
    client: aiohttp.ClientSession,
    captured: io.StringIO,
) -> None:
    """The request is answered in full, the other observers still run, and the failure is
    logged with the observer's name."""
    seen = Recorder()
    url, runner = await start(idp, echo, ca_file, Broken(), seen)
    try:
        async with client.get(f"{url}/echo/x") as r:
            assert r.status == 200
            await r.read()
    finally:
        await runner.cleanup()
    assert [point for point, _ in seen.calls][-1] == "finished"
    [failure] = [e for e in events(captured) if e["event"] == "observer.failed"]
    assert (failure["observer"], failure["error"]) == ("Broken", "RuntimeError")
    assert [e["status"] for e in events(captured) if e["event"] == "request"] == [200]


def test_exchange_repr_shows_no_headers() -> None:
    """Headers (the client's key, the upstream's token) never show in a repr."""
    exchange = Exchange({"X-Api-Key": "ppk_secret"}, "id", "GET", "/p", "/p?q=1")
    exchange.upstream_headers = [("Authorization", "Bearer eyJ.secret.token")]
    shown = repr(exchange)
    assert "ppk_secret" not in shown
    assert "eyJ.secret.token" not in shown


# -- one State per configuration version ---------------------------------------------------


def configs(idp: IdentityProvider, ca_file: Path, **changes: Any) -> Any:
    routes = [{"name": "echo", "prefix": "/echo", "upstream": "https://echo.example"}]
    raw = config_dict(idp, ca_file, routes)
    raw["identities"]["other"] = {**raw["identities"]["default"]}
    raw["routes"][0]["identity"] = "default"
    for identity, settings in changes.items():
        raw["identities"][identity] = {**raw["identities"][identity], **settings}
    return from_dict(raw, {}, base_dir=ca_file.parent)


def test_a_new_state_keeps_providers_of_unchanged_identities(
    idp: IdentityProvider, ca_file: Path
) -> None:
    """Tokens survive a reload for every identity whose settings did not change."""
    old = State.build(configs(idp, ca_file))
    new = State.build(configs(idp, ca_file, other={"client_id": "changed"}), previous=old)
    assert new.providers["default"] is old.providers["default"]
    assert new.providers["other"] is not old.providers["other"]
    assert new.config is not old.config
    with pytest.raises(AttributeError):
        new.config = old.config  # type: ignore[misc]  # frozen: a reload builds a new one


async def test_reload_swaps_the_state_in_one_step(
    idp: IdentityProvider, echo: EchoUpstream, ca_file: Path, client: aiohttp.ClientSession
) -> None:
    """After a reload the guard and the forwarder both use the new routes; a refused reload
    (a fixed setting changed) leaves the old state in place."""
    url, runner = await start(idp, echo, ca_file)
    runtime = runner.app[RUNTIME]
    try:
        raw = config_dict(idp, ca_file, [{"name": "new", "prefix": "/new", "upstream": echo.url}])
        before = runtime.state
        assert await runtime.reload(from_dict(raw, {}, base_dir=Path.cwd())) == []
        assert runtime.state is not before
        async with client.get(f"{url}/new/x") as r:
            assert r.status == 200
        async with client.get(f"{url}/echo/x") as r:
            assert r.status == 404
        raw["server"] = {"port": 1}
        current = runtime.state
        refused = await runtime.reload(from_dict(raw, {}, base_dir=Path.cwd()))
        assert refused
        assert "server.port" in refused[0]
        assert runtime.state is current
    finally:
        await runner.cleanup()
