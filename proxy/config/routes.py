"""The [[routes]] array: presets, prefixes, upstreams and scopes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from yarl import URL

from .. import presets
from ..peers import is_loopback
from .model import IdentityConfig, RouteConfig
from .parse import NAME, Problems, get, only, show
from .route_options import (
    OPTION_KEYS,
    parse_edits,
    parse_limits,
    parse_policy,
    parse_throttling,
)
from .signin import ACT_AS

_ROUTE_KEYS = {
    "name",
    "prefix",
    "upstream",
    "scope",
    "identity",
    "strip_prefix",
    "preset",
    "port",
    "act_as",
    "impersonate",
} | OPTION_KEYS


def parse_routes(
    raw: Any, identities: Mapping[str, IdentityConfig], p: Problems
) -> tuple[RouteConfig, ...]:
    if raw is None:
        raw = [{"preset": name} for name in presets.DEFAULT_ROUTE_PRESETS]
    if not isinstance(raw, list) or not raw:
        p.add("routes", "must be a non-empty array of tables, written [[routes]]")
        return ()
    routes: list[RouteConfig] = []
    for i, t in enumerate(raw):
        path = f"routes[{i}]"
        if not isinstance(t, Mapping):
            p.add(path, "must be a table")
            continue
        only(t, _ROUTE_KEYS, path, p)
        route = _route(t, path, identities, p)
        if route is not None:
            routes.append(route)
    for field_name in ("name", "prefix", "port"):
        seen: dict[str, int] = {}
        for i, r in enumerate(routes):
            value = getattr(r, field_name)
            if value is None:
                continue
            if value in seen:
                p.add(
                    f"routes[{i}].{field_name}", f"{value!r} is also used by routes[{seen[value]}]"
                )
            seen.setdefault(value, i)
    return tuple(routes)


def _route(
    t: Mapping[str, Any], path: str, identities: Mapping[str, IdentityConfig], p: Problems
) -> RouteConfig | None:
    preset_name = get(t, "preset", str, path, p, None)
    preset = presets.Preset(None, None)
    if preset_name is not None:
        if preset_name not in presets.PRESETS:
            choices = ", ".join(presets.PRESETS)
            p.add(f"{path}.preset", f"unknown preset {preset_name!r} (choose from: {choices})")
        # Presets follow the cloud of the route's identity (hosts and audiences differ).
        preset = presets.preset_for(preset_name, _identity_cloud(t, identities)) or preset
    name = get(t, "name", str, path, p, preset_name or "")
    if not name:
        p.add(f"{path}.name", "is required (or give a preset)")
    elif not NAME.match(name):
        p.add(f"{path}.name", "must be letters, digits, '_', '.' or '-'")
    prefix = get(t, "prefix", str, path, p, f"/{name}")
    if not prefix.startswith("/") or "?" in prefix or "#" in prefix or "//" in prefix:
        p.add(f"{path}.prefix", f"must be a path starting with '/', got {show(prefix)}")
    prefix = prefix.rstrip("/") or "/"
    upstream = get(t, "upstream", str, path, p, preset.upstream or "")
    if not upstream:
        p.add(f"{path}.upstream", "is required" + (" for this preset" if preset_name else ""))
    else:
        upstream = _check_upstream(upstream, f"{path}.upstream", p)
    scope = get(t, "scope", str, path, p, preset.scope or "")
    if not scope and upstream:
        scope = presets.default_scope(upstream)
    if "scope" in t and not scope:
        p.add(f"{path}.scope", "must not be empty")
    identity = get(t, "identity", str, path, p, "")
    if not identity:
        if len(identities) == 1:
            identity = next(iter(identities))
        elif len(identities) > 1:
            p.add(f"{path}.identity", f"is required: there are {len(identities)} identities")
    elif identities and identity not in identities:
        p.add(f"{path}.identity", f"no identity named {identity!r} in [identities]")
    strip = get(t, "strip_prefix", bool, path, p, True)
    port = get(t, "port", int, path, p, None)
    if port is not None and not 1 <= port <= 65535:
        p.add(f"{path}.port", f"must be between 1 and 65535, got {port}")
    act_as = get(t, "act_as", str, path, p, "service")
    if act_as not in ACT_AS:
        p.add(f"{path}.act_as", f'must be "service" or "user", got {show(act_as)}')
    impersonate = get(t, "impersonate", bool, path, p, False)
    if impersonate and act_as == "user":
        p.add(
            f"{path}.impersonate",
            'cannot go with act_as = "user": impersonation sends the service token naming the '
            'member, act_as = "user" the member\'s own token; choose one',
        )
    return RouteConfig(
        name,
        prefix,
        upstream,
        scope,
        identity,
        strip,
        port,
        act_as,
        impersonate,
        parse_policy(t, path, p),
        parse_limits(t, path, p),
        parse_edits(t, path, p),
        parse_throttling(t, path, p),
    )


def _identity_cloud(t: Mapping[str, Any], identities: Mapping[str, IdentityConfig]) -> str:
    """The cloud of the identity a route names, or of the only identity."""
    name = t.get("identity")
    if isinstance(name, str) and name in identities:
        return identities[name].cloud
    if "identity" not in t and len(identities) == 1:
        return next(iter(identities.values())).cloud
    return presets.DEFAULT_CLOUD


def _check_upstream(upstream: str, path: str, p: Problems) -> str:
    try:
        url = URL(upstream)
    except ValueError:
        p.add(path, f"not a URL: {show(upstream)}")
        return upstream
    if url.scheme not in ("http", "https") or not url.host:
        p.add(path, f"must be an https:// URL, got {show(upstream)}")
    elif url.scheme == "http" and not is_loopback(url.host):
        p.add(
            path,
            "http:// only for a loopback host: a token never crosses a network in clear",
        )
    if url.user or url.password or url.raw_query_string or url.raw_fragment:
        p.add(path, "must not hold user info, a query or a fragment")
    return upstream.rstrip("/")
