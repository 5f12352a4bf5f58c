"""``ppproxy token`` and ``ppproxy register-app`` against the local identity provider and a
local BAP stand-in that records the call."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from proxy import cli
from proxy.commands import DEVICE_CODE_CLIENT_ID, describe_token
from proxy.testing import IdentityProvider, LocalCA
from proxy.testing.bap import AdminApplications

from .conftest import CLIENT, SECRET, idp_on_443

USER, PASSWORD = "admin@contoso.test", "admin-password"
PUBLIC_CLIENT = "public-client"
APP_ID = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def write_config(tmp_path: Path, ca_file: Path, identities: dict[str, dict[str, Any]]) -> Path:
    lines = [f'[outbound]\nca_file = "{ca_file}"\n[tokens]\nprefetch = false\n']
    for name, table in identities.items():
        lines.append(f"[identities.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    lines.append('[[routes]]\nname = "bap"\npreset = "bap"\n')
    path = tmp_path / "proxy.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def secret_identity(idp: IdentityProvider) -> dict[str, Any]:
    return {
        "tenant_id": idp.tenant,
        "client_id": CLIENT,
        "client_secret": "${PP_SECRET}",
        "authority_host": idp.authority_host,
    }


async def run(
    capsys: pytest.CaptureFixture[str], *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the command line; its own streams, so no logger keeps a stream pytest closes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(cli.main, list(args), {"PP_SECRET": SECRET, **(env or {})})
    return code, out.getvalue(), err.getvalue()


async def test_token_prints_az_shaped_json(
    idp: IdentityProvider, ca_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, ca_file, {"sp": secret_identity(idp)})

    code, out, _ = await run(capsys, "token", "--config", str(config), "--route", "bap")

    assert code == 0
    printed = json.loads(out)
    assert set(printed) == {"accessToken", "expiresOn", "expires_on", "tenant", "tokenType"}
    claims = idp.verify(printed["accessToken"])
    assert claims["aud"] == "https://service.powerapps.com/"
    assert printed["tenant"] == idp.tenant


async def test_token_decode_shows_the_claims_that_explain_a_401(
    idp: IdentityProvider, ca_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, ca_file, {"sp": secret_identity(idp)})
    scope = "https://api.powerplatform.com/.default"

    code, out, _ = await run(capsys, "token", "--config", str(config), "--scope", scope, "--decode")

    assert code == 0
    assert '  alg: "RS256"' in out
    assert '  aud: "https://api.powerplatform.com"' in out
    assert f'  appid: "{CLIENT}"' in out
    assert "  roles: []" in out
    assert "  exp: 20" in out  # an ISO local time, not epoch seconds
    assert "eyJ" not in out  # the token itself is not printed


def test_describe_token_says_when_a_token_is_opaque() -> None:
    assert describe_token("opaque") == (
        "(the token cannot be decoded: not a JWT (expected three dot-separated parts))\n"
    )


async def test_token_errors_exit_1_with_entra_s_error(
    idp: IdentityProvider, ca_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, ca_file, {"sp": secret_identity(idp)})

    code, out, err = await run(
        capsys, "token", "--config", str(config), "--route", "bap", env={"PP_SECRET": "wrong"}
    )

    assert (code, out) == (1, "")
    assert "ppproxy token: invalid_client: AADSTS7000215" in err
    assert "wrong" not in err.replace("wrong secret", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--route", "nope"], "--route: no route named 'nope' (routes: bap)"),
        (["--scope", "https://x/.default", "--identity", "zz"], "no identity named 'zz'"),
    ],
)
async def test_token_usage_errors_exit_2(
    idp: IdentityProvider,
    ca_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    config = write_config(tmp_path, ca_file, {"sp": secret_identity(idp)})

    code, _, err = await run(capsys, "token", "--config", str(config), *args)

    assert code == 2
    assert message in err


@pytest.fixture
async def bap() -> AsyncIterator[AdminApplications]:
    async with AdminApplications() as server:
        yield server


async def test_register_app_with_device_code(
    idp: IdentityProvider,
    bap: AdminApplications,
    ca_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A service-principal identity has no user: the admin signs in with a device code."""
    idp.public_clients.add(DEVICE_CODE_CLIENT_ID)
    idp.device_sign_in = USER
    config = write_config(tmp_path, ca_file, {"sp": secret_identity(idp)})

    code, out, err = await run(
        capsys, "register-app", "--config", str(config), "--client-id", APP_ID,
        "--bap-url", bap.url,
    )  # fmt: skip

    assert code == 0, err
    assert "enter the code" in err
    assert f"{idp.authority_host}/devicelogin" in err
    assert f"registered {APP_ID}" in out
    [call] = bap.calls
    assert (call.method, call.path_qs) == (
        "PUT",
        f"/providers/Microsoft.BusinessAppPlatform/adminApplications/{APP_ID}"
        "?api-version=2020-10-01",
    )
    claims = idp.verify(call.token)
    assert (claims["upn"], claims["aud"]) == (USER, "https://service.powerapps.com/")
    assert bap.applications == [APP_ID]


async def test_register_app_list(
    idp: IdentityProvider,
    bap: AdminApplications,
    ca_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    idp.public_clients.add(DEVICE_CODE_CLIENT_ID)
    idp.device_sign_in = USER
    bap.applications.append(APP_ID)
    config = write_config(tmp_path, ca_file, {"sp": secret_identity(idp)})

    code, out, _ = await run(
        capsys, "register-app", "--config", str(config), "--list", "--bap-url", bap.url
    )

    assert code == 0
    assert APP_ID in out
    assert [(c.method, c.path_qs) for c in bap.calls] == [
        ("GET", "/providers/Microsoft.BusinessAppPlatform/adminApplications?api-version=2020-10-01")
    ]


async def test_register_app_refuses_a_cleartext_remote_bap_url(
    idp: IdentityProvider, ca_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, ca_file, {"sp": secret_identity(idp)})

    code, _, err = await run(
        capsys, "register-app", "--config", str(config), "--client-id", APP_ID,
        "--bap-url", "http://bap.example.com",
    )  # fmt: skip

    assert code == 2
    assert "--bap-url must be an https:// URL" in err


@pytest.fixture
async def idp443(ca: LocalCA) -> AsyncIterator[IdentityProvider]:
    async with idp_on_443(ca, public_client=PUBLIC_CLIENT, users={USER: PASSWORD}) as server:
        yield server


async def test_register_app_with_the_identity_s_username_and_password(
    idp443: IdentityProvider,
    bap: AdminApplications,
    ca_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = {
        "tenant_id": idp443.tenant,
        "client_id": PUBLIC_CLIENT,
        "username": USER,
        "password": "${PP_PASSWORD}",
        "authority_host": idp443.authority_host,
    }
    config = write_config(tmp_path, ca_file, {"admin": admin})

    code, out, err = await run(
        capsys, "register-app", "--config", str(config), "--client-id", APP_ID,
        "--bap-url", bap.url, env={"PP_PASSWORD": PASSWORD},
    )  # fmt: skip

    assert code == 0, err
    assert "enter the code" not in err
    [call] = bap.calls
    assert idp443.verify(call.token)["upn"] == USER
    assert PASSWORD not in out + err
