"""The first hour of a new user, run as that user would, through real processes: bare
``ppproxy``, every command's --help, ``init``, README's "Use it" from ``init`` to a successful
``check``, no configuration at all, the start-up banner, a port in use, and the demo's flows."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from proxy import banner, cli, observe
from proxy.commands.init import render
from proxy.config import from_dict, loads
from proxy.testing import IdentityProvider, LocalCA

from .conftest import SECRET, config_dict
from .processes import ROOT, free_port, read_until, spawn, write_config


async def run_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m proxy ARGS` in ``cwd`` (this checkout's package), its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- the command line itself --


async def test_bare_ppproxy_lists_every_command(tmp_path: Path) -> None:
    code, out, err = await run_in(tmp_path)
    assert (code, err) == (0, "")
    listed = re.findall(r"^  (\S+)  ", out, re.M)
    assert listed == [c.name for c in cli.COMMANDS]
    for name in ("init", "serve", "check", "token", "register-app", "keygen", "demo"):
        assert name in listed


@pytest.mark.parametrize("name", [c.name for c in cli.COMMANDS])
async def test_every_command_help_has_a_description_and_an_example(
    tmp_path: Path, name: str
) -> None:
    code, out, err = await run_in(tmp_path, name, "--help")
    assert code == 0, err
    command = next(c for c in cli.COMMANDS if c.name == name)
    assert command.description.split()[0] in out
    examples = out.split("examples:\n", 1)[1]
    assert f"  ppproxy {name}" in examples


async def test_no_configuration_says_how_to_get_one(tmp_path: Path) -> None:
    """No --config, no ./proxy.toml and no AZURE_* variable: init, --config or the variables."""
    env = {k: "" for k in os.environ if k.startswith("AZURE_")}
    code, _out, err = await run_in(tmp_path, "serve", env=env)
    assert code == 2
    assert "ppproxy serve: no configuration" in err
    assert "ppproxy init" in err
    assert "--config PATH" in err
    assert "./proxy.toml" in err
    assert "Traceback" not in err


# -- init --


@pytest.mark.parametrize("flow", ["secret", "certificate", "password", "managed-identity"])
def test_init_templates_load_with_their_variables(tmp_path: Path, flow: str) -> None:
    """Each flow's starter file is a valid configuration once its variables and files exist."""
    from proxy.testing import ClientCertificate

    ClientCertificate().write_pem(tmp_path / "client.pem")
    env = {"PP_TENANT_ID": "t", "PP_CLIENT_ID": "c", "PP_CLIENT_SECRET": "s",
           "PP_USERNAME": "u@contoso.test", "PP_PASSWORD": "p"}  # fmt: skip
    config = loads(render(flow), env, base_dir=tmp_path)
    kinds = {"secret": "client_secret", "certificate": "certificate",
             "password": "username_password", "managed-identity": "managed_identity"}  # fmt: skip
    assert config.identities["default"].kind == kinds[flow]
    assert [r.name for r in config.routes] == ["powerapps", "bap", "flow", "powerplatform"]
    assert config.identities["default"].literal_secrets == ()


async def test_init_writes_the_flow_and_prints_portal_steps_and_next_commands(
    tmp_path: Path,
) -> None:
    code, out, _ = await run_in(
        tmp_path, "init", "--flow", "password", "--tenant-id", "contoso.onmicrosoft.com",
        "--client-id", "00000000-0000-0000-0000-00000000000a",
    )  # fmt: skip
    assert code == 0
    text = (tmp_path / "proxy.toml").read_text()
    assert 'tenant_id = "contoso.onmicrosoft.com"' in text
    assert 'password = "${PP_PASSWORD}"' in text
    assert "Allow public client flows = Yes" in out
    assert "475226c6-020e-4fb2-8a90-7a972cbfc1d4" in out
    assert "Delegated permissions -> User" in out
    assert "export PP_PASSWORD=" in out
    assert out.rstrip().endswith("ppproxy check\n  ppproxy serve")


async def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    (tmp_path / "proxy.toml").write_text("# mine\n")
    code, _, err = await run_in(tmp_path, "init")
    assert code == 2
    assert "proxy.toml exists: not overwritten (give --force to replace it)" in err
    assert (tmp_path / "proxy.toml").read_text() == "# mine\n"
    code, _out, _ = await run_in(tmp_path, "init", "--force", "--path", "proxy.toml")
    assert code == 0
    assert "client_secret" in (tmp_path / "proxy.toml").read_text()


async def test_init_prints_a_path_with_spaces_quoted_so_the_commands_paste(
    tmp_path: Path,
) -> None:
    code, out, _ = await run_in(tmp_path, "init", "--path", "my config.toml")
    assert code == 0
    assert (tmp_path / "my config.toml").is_file()
    assert "ppproxy check --config 'my config.toml'" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-id", "not a guid/../x"], "--client-id must be a GUID"),
        (["--tenant-id", 'x"\n[server]'], "--tenant-id must be a GUID or a domain name"),
    ],
)
async def test_init_refuses_ids_that_are_not_ids(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, _, err = await run_in(tmp_path, "init", *args)
    assert code == 2
    assert message in err
    assert not (tmp_path / "proxy.toml").exists()


def _readme_block(section: str, language: str = "sh") -> list[str]:
    text = (ROOT / "README.md").read_text()
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = part.split(f"```{language}\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


async def test_readme_use_it_from_init_to_a_successful_check(
    ca: LocalCA, ca_file: Path, tmp_path: Path
) -> None:
    """README's "Use it", command by command, against the local identity provider: the only
    edits to the written file point it at that provider instead of Entra ID."""
    lines = _readme_block("Use it")
    init, export, check, serve, curl = lines
    assert init.startswith("ppproxy init ")
    assert export.startswith("export PP_CLIENT_SECRET=")
    assert (check, serve) == ("ppproxy check", "ppproxy serve")
    assert curl.startswith("curl 'http://localhost:8080/bap/")
    client_id = re.search(r"--client-id (\S+)", init).group(1)  # type: ignore[union-attr]
    code, out, err = await run_in(tmp_path, *init.split()[1:])
    assert code == 0, err
    assert "ppproxy check" in out
    written = tmp_path / "proxy.toml"
    async with IdentityProvider(ca, clients={client_id: SECRET}) as idp:
        text = written.read_text()
        text = text.replace('# ca_file = "corp-ca.pem"', f'ca_file = "{ca_file}"')
        text = text.replace('# cloud = "public"', f'authority_host = "{idp.authority_host}"')
        written.write_text(text)
        code, out, err = await run_in(tmp_path, "check", env={"PP_CLIENT_SECRET": SECRET})
    assert code == 0, out + err
    assert out.count("ok, expires in") == 4
    assert {r.client_id for r in idp.requests} == {client_id}
    assert {r.tenant for r in idp.requests} == {"contoso.onmicrosoft.com"}


# -- serve: the banner, a token that cannot be had, a port in use --


async def test_serve_prints_one_ready_event_with_every_route(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path
) -> None:
    port = free_port()
    routes = [
        {"name": "bap", "preset": "bap"},
        {"name": "own", "prefix": "/own", "upstream": "https://own.example", "port": free_port()},
    ]
    raw = config_dict(idp, ca_file, routes, server={"port": port}, tap={"enabled": True})
    proc = await spawn("serve", "--config", str(write_config(tmp_path, raw)))
    assert proc.stderr is not None
    try:
        seen = await read_until(proc.stderr, "server.ready")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 20)
    event = next(json.loads(line) for line in seen.splitlines() if "server.ready" in line)
    base = f"http://127.0.0.1:{port}"
    assert event["tap"] == f"{base}/_proxy/tap"
    assert event["routes"][0] == {
        "name": "bap", "url": f"{base}/bap", "upstream": "https://api.bap.microsoft.com",
        "scope": "https://service.powerapps.com//.default", "identity": "default",
    }  # fmt: skip
    assert event["routes"][1]["own_port_url"] == f"http://127.0.0.1:{routes[1]['port']}"


def test_console_banner_is_a_table() -> None:
    """On a terminal the same information is a table a person reads."""
    config = from_dict(
        {"identities": {"sp": {"tenant_id": "t", "client_id": "c", "client_secret": "s"}},
         "routes": [{"preset": "bap"}], "tap": {"enabled": True}},
        {}, base_dir=Path.cwd(),
    )  # fmt: skip
    stream = io.StringIO()
    observe.configure("info", stream=stream, json=False, cache=False)
    try:
        banner.ready(config, "http://127.0.0.1:8080")
    finally:
        observe.configure("info", stream=io.StringIO(), json=True, cache=False)
    text = stream.getvalue()
    assert "is ready on http://127.0.0.1:8080" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("bap "))
    assert row.split() == ["bap", "http://127.0.0.1:8080/bap", "https://api.bap.microsoft.com",
                           "https://service.powerapps.com//.default", "sp"]  # fmt: skip
    assert "debugging tap: http://127.0.0.1:8080/_proxy/tap" in text


async def test_serve_says_loudly_when_a_token_cannot_be_had_at_start(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path
) -> None:
    idp.fail_with("invalid_client", code=7000215)
    port = free_port()
    raw = config_dict(idp, ca_file, [{"name": "bap", "preset": "bap"}], server={"port": port},
                      tokens={"prefetch": True})  # fmt: skip
    proc = await spawn("serve", "--config", str(write_config(tmp_path, raw)))
    assert proc.stderr is not None
    try:
        seen = await read_until(proc.stderr, "server.token_unavailable")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 20)
    event = next(json.loads(line) for line in seen.splitlines() if "token_unavailable" in line)
    assert event["level"] == "error"
    assert (event["identity"], event["routes"], event["error"]) == (
        "default",
        ["bap"],
        "invalid_client",
    )
    assert event["hint"].startswith("wrong client secret")
    assert SECRET not in seen


async def test_port_in_use_fails_within_two_seconds_naming_port_and_flag(
    tmp_path: Path, idp: IdentityProvider, ca_file: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = config_dict(idp, ca_file, [{"name": "bap", "preset": "bap"}],
                          server={"port": port}, tokens={"prefetch": True})  # fmt: skip
        path = write_config(tmp_path, raw)
        started = time.monotonic()
        proc = await spawn("serve", "--config", str(path))
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in err.decode()
    assert "--port" in err.decode()
    assert elapsed < 2 + 1.5, elapsed  # the interpreter's start-up on a loaded machine aside


# -- the demo --


async def test_demo_without_the_testing_extra_says_so_in_one_line(tmp_path: Path) -> None:
    """As if trustme were not installed: one line naming the extra, exit status 2."""
    code_text = (
        "import sys; sys.modules['trustme'] = None; "
        "from proxy.cli import main; sys.exit(main(['demo', '--port', '0']))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code_text, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().splitlines() == [
        "ppproxy demo needs the testing extra (trustme is missing): pip install 'ppproxy[testing]'"
    ]
    assert out == b""


@pytest.mark.parametrize("flow", ["secret", "certificate", "password"])
async def test_demo_flow_runs_and_its_files_work_with_check(tmp_path: Path, flow: str) -> None:
    """`ppproxy demo --flow F --dir D`: the curl shows a token issued to the demo client by
    that flow, and `ppproxy check --config D/proxy.toml` succeeds while the demo runs."""
    port = free_port()
    proc = await spawn("demo", "--port", str(port), "--flow", flow, "--dir", str(tmp_path))
    assert proc.stdout is not None
    try:
        text = await read_until(proc.stdout, r"Press Ctrl\+C")
        url = re.search(r"curl -s '(\S+)'", text).group(1)  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            body = await resp.json()
        check = await spawn("check", "--config", str(tmp_path / "proxy.toml"))
        out, err = await asyncio.wait_for(check.communicate(), 60)
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 20)
    assert body["token_claims"]["appid"] == "demo-client"
    assert check.returncode == 0, out.decode() + err.decode()
    secret = {"secret": "client-secret", "certificate": "client.pem", "password": "password"}
    if os.name == "posix":  # the credential files are the owner's alone, as real ones are kept
        assert (tmp_path / secret[flow]).stat().st_mode & 0o777 == 0o600
    if flow == "certificate":
        assert (tmp_path / "client.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
        assert "client.crt" in text
    if flow == "password":
        assert body["token_claims"]["upn"] == "demo.admin@contoso.test"


async def test_keygen_prints_a_paste_ready_block(tmp_path: Path) -> None:
    code, out, err = await run_in(tmp_path, "keygen", "--name", "ci-pipeline")
    assert code == 0
    block = out.split("\n\n", 1)[1]
    assert block.startswith('[[access.clients]]\nname = "ci-pipeline"')
    assert "not shown again" in err


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (65001, "Grant admin consent"),
        (7000218, "Allow public client flows = Yes"),
        (700027, "Certificates -> upload this certificate"),
        (700024, "Federated credentials"),
        (7000215, "New client secret"),
        (700016, "client_id"),
        (50126, "wrong username or password"),
        (50076, "use a certificate or a client secret"),
        (50079, "use a certificate or a client secret"),
    ],
)
def test_every_common_aadsts_code_names_its_portal_step(code: int, words: str) -> None:
    from proxy import aadsts

    assert words in (aadsts.hint([code]) or "")
    assert aadsts.hint(description=f"AADSTS{code}: something") == aadsts.hint([code])
    assert aadsts.hint([90033]) is None
