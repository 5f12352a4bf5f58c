"""Configuration loading: values, defaults, presets and every error by key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy import config
from proxy.config import ConfigError, loads
from proxy.presets import POWERAPPS_SCOPE

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = """
[identities.default]
tenant_id = "contoso.onmicrosoft.com"
client_id = "client"
client_secret = "${SECRET}"
"""
ENV = {"SECRET": "s3cr3t-value"}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, ENV if env is None else env)
    return list(info.value.problems)


def test_example_file_loads() -> None:
    """proxy.example.toml is a working configuration with only the identity's variables."""
    env = {"PP_TENANT_ID": "t", "PP_CLIENT_ID": "c", "PP_CLIENT_SECRET": "s"}
    cfg = config.load(ROOT / "proxy.example.toml", env)
    assert [r.name for r in cfg.routes] == ["powerapps", "bap", "flow", "powerplatform"]
    assert cfg.identities["default"].authority_host == "https://login.microsoftonline.com"


def _uncommented(prefix: str) -> str:
    """The example with the first commented block starting with ``prefix`` switched on."""
    lines = (ROOT / "proxy.example.toml").read_text().splitlines()
    out, on, done = [], False, False
    for line in lines:
        on = (not done and line.startswith(prefix)) or (
            on and line.startswith("# ") and line[2:3] != " "
        )
        done = done or on
        out.append(line[2:] if on else line)
    return "\n".join(out) + "\n"


def test_example_dataverse_route_works_when_uncommented() -> None:
    env = {"PP_TENANT_ID": "t", "PP_CLIENT_ID": "c", "PP_CLIENT_SECRET": "s",
           "PP_DATAVERSE_HOST": "contoso.crm.dynamics.com"}  # fmt: skip
    cfg = loads(_uncommented("# [[routes]]"), env)
    dataverse = cfg.routes[-1]
    assert dataverse.name == "dataverse"
    # The origin: SDKs add /api/data/v9.2 themselves, and keep their own Prefer.
    assert dataverse.upstream == "https://contoso.crm.dynamics.com"
    assert dataverse.scope == "https://contoso.crm.dynamics.com/.default"
    assert dataverse.edits.default_request_headers == {"Prefer": "odata.maxpagesize=500"}
    assert not dataverse.edits.set_request_headers
    assert cfg.server.tls is None


def _uncommented_through(prefix: str) -> str:
    """The example with the commented block from the line starting with ``prefix`` to the end
    of the comment switched on: tables and ``key = value`` lines, past blank ``#`` lines and
    prose, which stay comments."""
    setting = re.compile(r"# (\[|[A-Za-z_][\w.-]* = )")
    out, on = [], False
    for line in (ROOT / "proxy.example.toml").read_text().splitlines():
        on = line.startswith(prefix) or (on and line.startswith("#"))
        out.append(line[2:] if on and setting.match(line) else line)
    return "\n".join(out) + "\n"


def test_example_sign_in_block_loads_when_uncommented() -> None:
    """[access.entra], its member entries and the route acting as the member, as they stand."""
    env = {"PP_TENANT_ID": "0f3c2b1a-0000-4000-8000-0000000000ff", "PP_CLIENT_ID": "c",
           "PP_CLIENT_SECRET": "s", "PP_DATAVERSE_HOST": "contoso.crm.dynamics.com"}  # fmt: skip
    cfg = loads(_uncommented_through("# [access.entra]"), env)

    assert cfg.access.entra is not None
    assert cfg.access.entra.audience == ("api://ppproxy", "c")
    route = cfg.routes[-1]
    assert (route.name, route.act_as, route.identity) == ("dataverse-as-me", "user", "default")
    assert [c.name for c in cfg.access.clients] == ["makers", "gateway-admins", "ann"]


def test_example_cloud_when_uncommented_moves_the_sign_in() -> None:
    """Nothing in the example pins the commercial Entra ID host against ``cloud``."""
    text = (
        (ROOT / "proxy.example.toml")
        .read_text()
        .replace('# cloud = "public"', 'cloud = "gcc-high"', 1)
    )
    cfg = loads(text, {"PP_TENANT_ID": "t", "PP_CLIENT_ID": "c", "PP_CLIENT_SECRET": "s"})
    assert cfg.identities["default"].authority_host == "https://login.microsoftonline.us"
    assert cfg.routes[0].upstream == "https://high.api.powerapps.us"


def test_defaults() -> None:
    cfg = loads(IDENTITY, ENV)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert (cfg.outbound.connect_timeout, cfg.outbound.read_timeout) == (10.0, 120.0)
    assert cfg.identities["default"].authority_host == "https://login.microsoftonline.com"


@pytest.mark.parametrize(
    ("preset", "upstream", "scope"),
    [
        ("powerapps", "https://api.powerapps.com", "https://service.powerapps.com//.default"),
        ("bap", "https://api.bap.microsoft.com", "https://service.powerapps.com//.default"),
        ("flow", "https://api.flow.microsoft.com", "https://service.flow.microsoft.com//.default"),
        (
            "powerplatform",
            "https://api.powerplatform.com",
            "https://api.powerplatform.com/.default",
        ),
    ],
)
def test_presets_fill_upstream_and_scope(preset: str, upstream: str, scope: str) -> None:
    cfg = loads(IDENTITY + f'[[routes]]\npreset = "{preset}"\n', ENV)
    (route,) = cfg.routes
    assert (route.name, route.prefix, route.upstream, route.scope) == (
        preset,
        f"/{preset}",
        upstream,
        scope,
    )


def test_powerapps_scope_kept_byte_for_byte() -> None:
    """The double slash in the Power Apps scope survives, given or from a preset."""
    text = (
        IDENTITY
        + f'[[routes]]\nname="x"\nupstream="https://api.powerapps.com"\nscope="{POWERAPPS_SCOPE}"\n'
    )
    assert loads(text, ENV).routes[0].scope == "https://service.powerapps.com//.default"


def test_scope_defaults_to_upstream_origin() -> None:
    text = (
        IDENTITY
        + '[[routes]]\nname="dv"\nupstream="https://org.crm4.dynamics.com/api/data/v9.2/"\n'
    )
    route = loads(text, ENV).routes[0]
    assert route.scope == "https://org.crm4.dynamics.com/.default"
    assert route.upstream == "https://org.crm4.dynamics.com/api/data/v9.2"


def test_no_routes_means_the_four_presets() -> None:
    assert [r.name for r in loads(IDENTITY, ENV).routes] == [
        "powerapps",
        "bap",
        "flow",
        "powerplatform",
    ]


def test_interpolation_from_env() -> None:
    cfg = loads(IDENTITY + '[server]\nhost = "${HOST}"\n', {**ENV, "HOST": "127.0.0.2"})
    assert cfg.server.host == "127.0.0.2"
    assert cfg.identities["default"].client_secret.reveal() == "s3cr3t-value"


def test_missing_variable_names_key_and_variable() -> None:
    assert problems(IDENTITY, {}) == [
        "identities.default.client_secret: environment variable SECRET is not set",
    ]


def test_every_problem_listed_by_key_path() -> None:
    text = """
[server]
port = "eighty"
bogus = 1
header_timeout = 0
idle_timeout = "long"
max_connections = 0
[tokens]
min_refresh_interval = -1
[outbound]
read_timeout = -1
ca_file = "does-not-exist.pem"
[identities.a]
tenant_id = "t"
client_id = "c"
client_secret = "x"
authority_host = "http://login.example"
[identities.b]
tenant_id = "t"
client_id = "c"
client_secret = "x"
[[routes]]
name = "one"
upstream = "ftp://example.com"
[[routes]]
name = "one"
preset = "nope"
upstream = "https://example.com"
identity = "zzz"
"""
    found = problems(text)
    for expected in [
        "server.port: must be an integer",
        "server.bogus: unknown key",
        "server.header_timeout: must be a positive number",
        "server.idle_timeout: must be a number",
        "server.max_connections: must be 1 or more",
        "tokens.min_refresh_interval: must be 0 or more seconds",
        "outbound.read_timeout: must be a positive number",
        "outbound.ca_file: no such file",
        "identities.a.authority_host: must be an https:// origin",
        "routes[0].upstream: must be an https:// URL",
        "routes[0].identity: is required: there are 2 identities",
        "routes[1].preset: unknown preset 'nope'",
        "routes[1].identity: no identity named 'zzz'",
        "routes[1].name: 'one' is also used by routes[0]",
        "routes[1].prefix: '/one' is also used by routes[0]",
    ]:
        assert any(p.startswith(expected) for p in found), (expected, found)


def test_secret_never_in_errors() -> None:
    """Neither a secret key's value nor any value from the environment is echoed."""
    text = IDENTITY.replace('"${SECRET}"', "42") + '[[routes]]\nname="x"\nupstream="${OTHER}"\n'
    with pytest.raises(ConfigError) as info:
        loads(text, {"OTHER": "s3cr3t-value"})
    rendered = info.value.render() + repr(info.value)
    assert "s3cr3t" not in rendered
    assert "42" not in rendered
    assert "identities.default.client_secret: must be a string" in rendered
    assert (
        "routes[0].upstream: must be an https:// URL, got (value from the environment)" in rendered
    )


def test_secret_repr_hides_value() -> None:
    cfg = loads(IDENTITY, ENV)
    assert "s3cr3t" not in repr(cfg)
    assert "s3cr3t" not in str(cfg.identities["default"])


def test_identity_from_azure_environment() -> None:
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_CLIENT_SECRET": "s",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/",
    }
    identity = loads("", env).identities["default"]
    assert (identity.tenant_id, identity.client_id, identity.client_secret.reveal()) == (
        "t",
        "c",
        "s",
    )
    assert identity.authority_host == "https://login.microsoftonline.us"
    assert identity.instance_discovery


def test_missing_azure_environment_is_named() -> None:
    assert problems("", {"AZURE_TENANT_ID": "t"}) == [
        "identities: no [identities] table, and AZURE_CLIENT_ID, AZURE_CLIENT_SECRET not set"
    ]


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_http_upstream_only_on_loopback(host: str, ok: bool) -> None:
    text = IDENTITY + f'[[routes]]\nname="x"\nupstream="http://{host}:9000"\n'
    if ok:
        assert loads(text, ENV).routes[0].upstream == f"http://{host}:9000"
    else:
        assert problems(text) == [
            "routes[0].upstream: http:// only for a loopback host: "
            "a token never crosses a network in clear"
        ]


def test_unknown_authority_host_skips_instance_discovery() -> None:
    text = IDENTITY + 'authority_host = "https://127.0.0.1:8443"\n'
    assert not loads(text, ENV).identities["default"].instance_discovery
    assert loads(IDENTITY, ENV).identities["default"].instance_discovery


def test_ca_file_relative_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "p.toml").write_text(IDENTITY + '[outbound]\nca_file = "ca.pem"\n')
    assert config.load(tmp_path / "p.toml", ENV).outbound.ca_file == tmp_path / "ca.pem"


def test_one_identity_is_implicit() -> None:
    text = IDENTITY + '[[routes]]\npreset="bap"\n'
    assert loads(text, ENV).routes[0].identity == "default"


def test_prefix_normalised_and_strip_prefix() -> None:
    text = IDENTITY + '[[routes]]\npreset="bap"\nprefix="/x/"\nstrip_prefix=false\n'
    route = loads(text, ENV).routes[0]
    assert (route.prefix, route.strip_prefix) == ("/x", False)


def test_toml_syntax_error_is_a_config_error() -> None:
    assert problems("[server\n")[0].startswith("TOML syntax:")


def test_credential_files_relative_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("from-file\n")
    (tmp_path / "p.toml").write_text(
        '[identities.a]\ntenant_id = "t"\nclient_id = "c"\nclient_secret_file = "secret.txt"\n'
    )
    identity = config.load(tmp_path / "p.toml", {}).identities["a"]
    assert identity.client_secret_file == tmp_path / "secret.txt"


def test_event_loop_must_be_known() -> None:
    with pytest.raises(ConfigError, match=r"server\.event_loop: must be one of auto, asyncio"):
        loads(
            '[server]\nevent_loop = "trio"\n',
            {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s"},
        )
