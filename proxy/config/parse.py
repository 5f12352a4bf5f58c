"""Building blocks for validation: the problem list, ``${VAR}`` interpolation, typed getters.

Every check reports into one :class:`Problems` so that a bad file yields one error listing
every problem by key path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from yarl import URL

from .. import presets

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _FromEnv(str):
    """A string that took a value from the environment: error messages never show it."""

    __slots__ = ()


def show(value: object) -> str:
    """``value`` for an error message; values from the environment may be secrets."""
    return "(value from the environment)" if isinstance(value, _FromEnv) else f"{value!r:.80}"


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.unset: set[str] = set()  # keys whose ${VAR} was missing: one message is enough

    def add(self, path: str, message: str) -> None:
        if path not in self.unset:
            self.items.append(f"{path}: {message}")

    def missing_variable(self, path: str, name: str) -> None:
        self.add(path, f"environment variable {name} is not set")
        self.unset.add(path)


def interpolate(value: Any, env: Mapping[str, str], path: str, p: Problems) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                p.missing_variable(path, m.group(1))
                return ""
            return env[m.group(1)]

        replaced = _VAR.sub(sub, value)
        return _FromEnv(replaced) if replaced != value else replaced
    if isinstance(value, Mapping):
        return {k: interpolate(v, env, join(path, k), p) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]", p) for i, v in enumerate(value)]
    return value


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def only(table: Mapping[str, Any], allowed: set[str], path: str, p: Problems) -> None:
    for key in table:
        if key not in allowed:
            p.add(join(path, key), f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def table(raw: Mapping[str, Any], key: str, p: Problems) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        p.add(key, "must be a table")
        return {}
    return value


def get(t: Mapping[str, Any], key: str, kind: type, path: str, p: Problems, default: Any) -> Any:
    if key not in t:
        return default
    value = t[key]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        # Secret keys never come here (identities read them with their own check), and
        # show() hides values that came from the environment.
        p.add(join(path, key), f"must be {_KIND_NAMES[kind]}, got {show(value)}")
        return default
    return value


def cloud_and_authority(t: Mapping[str, Any], path: str, p: Problems) -> tuple[str, str]:
    """``cloud`` and ``authority_host`` (the cloud's unless given), as identities and
    ``[access.entra]`` take them."""
    cloud = get(t, "cloud", str, path, p, presets.DEFAULT_CLOUD)
    if cloud not in presets.CLOUDS:
        p.add(f"{path}.cloud", f"must be one of {', '.join(presets.CLOUDS)}, got {show(cloud)}")
        cloud = presets.DEFAULT_CLOUD
    authority = get(t, "authority_host", str, path, p, presets.CLOUDS[cloud].authority_host)
    url = URL(authority.rstrip("/"))
    if url.scheme != "https" or not url.host or url.path not in ("", "/") or url.query_string:
        p.add(f"{path}.authority_host", f"must be an https:// origin, got {show(authority)}")
        return cloud, authority
    if "cloud" in t and "authority_host" in t and not presets.cloud_accepts(cloud, authority):
        # Each key alone is fine; together they must agree, or sign-ins would go to the
        # authority_host while the presets follow the cloud.
        p.add(
            f"{path}.authority_host",
            f"{show(authority)} is not the Entra ID host of cloud = {cloud!r} "
            f"({presets.CLOUDS[cloud].authority_host}): remove authority_host, or fix cloud",
        )
    return cloud, str(url.origin())


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
