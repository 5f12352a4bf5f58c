"""The [identities] tables, or one identity from azure-identity's environment variables.

Every identity has exactly one credential form: a client secret (``client_secret`` or
``client_secret_file``), a certificate (``certificate_path``), a user (``username`` with
``password`` or ``password_file``), ``managed_identity`` or ``federated_token_file``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..credential_files import CredentialError, load_certificate, read_first_line
from .model import IdentityConfig, Secret
from .parse import NAME, Problems, _FromEnv, cloud_and_authority, get, only

_KEYS = {
    "tenant_id",
    "client_id",
    "authority_host",
    "cloud",
    "client_secret",
    "client_secret_file",
    "certificate_path",
    "certificate_password",
    "certificate_password_file",
    "send_certificate_chain",
    "username",
    "password",
    "password_file",
    "managed_identity",
    "federated_token_file",
}
_SECRETS = ("client_secret", "password", "certificate_password")
_FILES = (
    "client_secret_file",
    "password_file",
    "federated_token_file",
    "certificate_path",
    "certificate_password_file",
)
# A credential form and the keys that select it; the first key names the form in messages.
_FORMS = {
    "client secret": ("client_secret", "client_secret_file"),
    "certificate": ("certificate_path",),
    "username and password": ("username", "password", "password_file"),
    "managed identity": ("managed_identity",),
    "workload identity": ("federated_token_file",),
}
_MANAGED_ID_KEYS = ("client_id", "resource_id", "object_id")
# azure-identity's username/password credential signs in against "organizations" by default.
_DEFAULT_USER_TENANT = "organizations"


def parse_identities(
    raw: Any, env: Mapping[str, str], p: Problems, base_dir: Path | None = None
) -> dict[str, IdentityConfig]:
    """Validate [identities]; relative file paths are relative to ``base_dir`` (the config
    file's folder) when given, else to the working directory."""
    from_env = raw is None
    if raw is None:
        table = _from_environment(env, p)
        if table is None:
            return {}
        raw = {"default": table}
    if not isinstance(raw, Mapping) or not raw:
        p.add("identities", "must be a table of named identities, e.g. [identities.default]")
        return {}
    result = {}
    for name, t in raw.items():
        path = f"identities.{name}"
        if not isinstance(t, Mapping):
            p.add(path, "must be a table")
            continue
        if not NAME.match(name):
            p.add(path, "name must be letters, digits, '_', '.' or '-'")
        only(t, _KEYS, path, p)
        identity = _identity(name, t, path, p, base_dir or Path.cwd(), from_env)
        if identity is not None:
            result[name] = identity
    return result


def _identity(
    name: str, t: Mapping[str, Any], path: str, p: Problems, base: Path, from_env: bool
) -> IdentityConfig | None:
    forms = [form for form, keys in _FORMS.items() if any(k in t for k in keys)]
    if not forms:
        p.add(
            path,
            "no credential: give client_secret (or client_secret_file), certificate_path, "
            "username with password (or password_file), managed_identity or "
            "federated_token_file",
        )
        return None
    if len(forms) > 1:
        p.add(path, f"give exactly one credential form, found: {' and '.join(forms)}")
        return None
    form = forms[0]
    managed = None
    if form == "managed identity":
        managed = _managed_identity(t.get("managed_identity"), f"{path}.managed_identity", p)
    needs_app = form != "managed identity"
    tenant = get(t, "tenant_id", str, path, p, "")
    client = get(t, "client_id", str, path, p, "")
    for key in ("tenant_id", "client_id"):
        if needs_app and (key not in t or t[key] == ""):
            p.add(f"{path}.{key}", "is required")
    secrets = {k: _secret(t, k, path, p) for k in _SECRETS}
    files = {k: _file(t, k, path, p, base) for k in _FILES}
    _pairs(t, form, path, p)
    cloud, authority = cloud_and_authority(t, path, p)
    send_chain = get(t, "send_certificate_chain", bool, path, p, False)
    certificate = files["certificate_path"]
    password_file = files["certificate_password_file"]
    if certificate is not None and certificate.is_file():
        try:
            load_certificate(certificate, _certificate_password(secrets, password_file))
        except CredentialError as e:
            p.add(f"{path}.certificate_path", str(e))
    literal = () if from_env else tuple(
        f"{path}.{k}" for k in _SECRETS if isinstance(t.get(k), str) and not _is_env(t[k])
    )  # fmt: skip
    username = get(t, "username", str, path, p, None) if "username" in t else None
    return IdentityConfig(
        name,
        tenant,
        client,
        secrets["client_secret"],
        authority,
        cloud,
        client_secret_file=files["client_secret_file"],
        certificate_path=certificate,
        certificate_password=secrets["certificate_password"],
        certificate_password_file=password_file,
        send_certificate_chain=send_chain,
        username=username,
        password=secrets["password"],
        password_file=files["password_file"],
        managed_identity=managed,
        federated_token_file=files["federated_token_file"],
        literal_secrets=literal,
    )


def _pairs(t: Mapping[str, Any], form: str, path: str, p: Problems) -> None:
    """Keys that come in pairs, or only with their partner."""
    if "client_secret" in t and "client_secret_file" in t:
        p.add(path, "give client_secret or client_secret_file, not both")
    if form == "username and password":
        if "username" not in t:
            p.add(f"{path}.username", "is required with password or password_file")
        if "password" in t and "password_file" in t:
            p.add(path, "give password or password_file, not both")
        elif "password" not in t and "password_file" not in t:
            p.add(f"{path}.password", "is required with username (or give password_file)")
    for key in ("certificate_password", "certificate_password_file", "send_certificate_chain"):
        if key in t and form != "certificate":
            p.add(f"{path}.{key}", "is only used with certificate_path")
    if "certificate_password" in t and "certificate_password_file" in t:
        p.add(path, "give certificate_password or certificate_password_file, not both")


def _certificate_password(secrets: Mapping[str, Secret | None], file: Path | None) -> str | None:
    if file is not None:
        return read_first_line(file) if file.is_file() else None
    password = secrets["certificate_password"]
    return password.reveal() if password else None


def _secret(t: Mapping[str, Any], key: str, path: str, p: Problems) -> Secret | None:
    if key not in t:
        return None
    value = t[key]
    if not isinstance(value, str):
        p.add(f"{path}.{key}", "must be a string")  # the value may be a secret: not shown
        return None
    if not value:
        p.add(f"{path}.{key}", "must not be empty")
    return Secret(value)


def _file(t: Mapping[str, Any], key: str, path: str, p: Problems, base: Path) -> Path | None:
    value = get(t, key, str, path, p, None)
    if value is None:
        return None
    if not value:
        p.add(f"{path}.{key}", "must not be empty")
        return None
    file = (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    if not file.is_file():
        p.add(f"{path}.{key}", f"no such file: {value}")
    return file


def _managed_identity(value: Any, path: str, p: Problems) -> tuple[str, str] | None:
    if value == "system":
        return ("system", "")
    if isinstance(value, Mapping):
        given = [k for k in _MANAGED_ID_KEYS if k in value]
        only(value, set(_MANAGED_ID_KEYS), path, p)
        if len(given) == 1 and isinstance(value[given[0]], str) and value[given[0]]:
            return (given[0], value[given[0]])
    p.add(
        path,
        '"system", or a table with exactly one of client_id, resource_id or object_id '
        "(a user-assigned identity)",
    )
    return None


def _is_env(value: str) -> bool:
    return isinstance(value, _FromEnv)


# azure-identity's variables, in EnvironmentCredential's order (secret, certificate,
# username/password), then WorkloadIdentityCredential's federated token file.
_ENV_FORMS: tuple[tuple[str, dict[str, str], tuple[str, ...]], ...] = (
    ("AZURE_CLIENT_SECRET", {"client_secret": "AZURE_CLIENT_SECRET"}, ("AZURE_TENANT_ID",)),
    (
        "AZURE_CLIENT_CERTIFICATE_PATH",
        {
            "certificate_path": "AZURE_CLIENT_CERTIFICATE_PATH",
            "certificate_password": "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        },
        ("AZURE_TENANT_ID",),
    ),
    ("AZURE_USERNAME", {"username": "AZURE_USERNAME", "password": "AZURE_PASSWORD"}, ()),
    (
        "AZURE_FEDERATED_TOKEN_FILE",
        {"federated_token_file": "AZURE_FEDERATED_TOKEN_FILE"},
        ("AZURE_TENANT_ID",),
    ),
)


def _from_environment(env: Mapping[str, str], p: Problems) -> dict[str, Any] | None:
    """One identity table from the environment, as azure-identity would choose it."""

    def has(name: str) -> bool:
        return bool(env.get(name))

    # A username without a password does not select the form (azure-identity skips it too).
    selected = [f for f in _ENV_FORMS if has(f[0])]
    usable = [f for f in selected if f[0] != "AZURE_USERNAME" or has("AZURE_PASSWORD")]
    # Nothing usable: report what the variables that are set still need (AZURE_USERNAME asks
    # for AZURE_PASSWORD, not for a client secret); with none set, the client secret's.
    chosen = (usable or selected or [_ENV_FORMS[0]])[0]
    selector, keys, tenant_vars = chosen
    required = [*tenant_vars, "AZURE_CLIENT_ID", selector]
    if selector == "AZURE_USERNAME":
        required.append("AZURE_PASSWORD")
    missing = [v for v in required if not has(v)]
    if missing:
        p.add("identities", f"no [identities] table, and {', '.join(missing)} not set")
        return None
    table: dict[str, Any] = {
        "tenant_id": env.get("AZURE_TENANT_ID") or _DEFAULT_USER_TENANT,
        "client_id": env["AZURE_CLIENT_ID"],
    }
    table.update({key: env[var] for key, var in keys.items() if has(var)})
    if selector == "AZURE_CLIENT_CERTIFICATE_PATH":
        chain = env.get("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "").strip().lower()
        table["send_certificate_chain"] = chain in ("1", "true")
    if has("AZURE_AUTHORITY_HOST"):
        table["authority_host"] = env["AZURE_AUTHORITY_HOST"]
    return table
