"""The [identities] tables, or one identity from azure-identity's environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from yarl import URL

from .. import presets
from .model import IdentityConfig, Secret
from .parse import NAME, Problems, get, only, show

_AZURE_ENV = {
    "tenant_id": "AZURE_TENANT_ID",
    "client_id": "AZURE_CLIENT_ID",
    "client_secret": "AZURE_CLIENT_SECRET",
    "authority_host": "AZURE_AUTHORITY_HOST",
}


def parse_identities(raw: Any, env: Mapping[str, str], p: Problems) -> dict[str, IdentityConfig]:
    if raw is None:
        # No [identities]: one identity named "default" from azure-identity's variables.
        raw = {"default": {k: env[v] for k, v in _AZURE_ENV.items() if env.get(v)}}
        missing = [v for k, v in _AZURE_ENV.items() if k != "authority_host" and not env.get(v)]
        if missing:
            p.add("identities", f"no [identities] table, and {', '.join(missing)} not set")
            return {}
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
        only(t, {"tenant_id", "client_id", "client_secret", "authority_host"}, path, p)
        values = {}
        for key in ("tenant_id", "client_id", "client_secret"):
            values[key] = get(t, key, str, path, p, "")
            if key not in t or t[key] == "":
                p.add(f"{path}.{key}", "is required")
        authority = get(t, "authority_host", str, path, p, presets.DEFAULT_AUTHORITY_HOST)
        url = URL(authority.rstrip("/"))
        if url.scheme != "https" or not url.host or url.path not in ("", "/") or url.query_string:
            p.add(f"{path}.authority_host", f"must be an https:// origin, got {show(authority)}")
        result[name] = IdentityConfig(
            name,
            values["tenant_id"],
            values["client_id"],
            Secret(values["client_secret"]),
            str(url.origin()) if url.host else authority,
        )
    return result
