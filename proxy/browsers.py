"""Keeping web pages out: the Host check (DNS rebinding) and Origin / Sec-Fetch-Site (pages of
other sites driving the proxy from a browser on this machine)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from .config import ServerConfig
from .errors import CrossSiteRequest, HostNotAllowed
from .peers import is_loopback

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_HOST = re.compile(r"^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+))(?::[0-9]{0,5})?$")


@functools.lru_cache(maxsize=1024)  # a handful of Host values, asked for on every request
def host_name(value: str) -> str | None:
    """The lowercased name in a ``Host`` value (``name``, ``name:port``, ``[v6]:port``)."""
    m = _HOST.match(value.strip())
    if m is None:
        return None
    return (m.group(1) or m.group(2)).lower()


def allowed_hosts(server: ServerConfig) -> frozenset[str]:
    """The loopback names plus ``server.allowed_hosts`` and the host of ``server.public_url``,
    as ``host_name`` returns them."""
    return LOOPBACK_HOSTS | _configured(server)


def allowed_origins(server: ServerConfig) -> frozenset[str]:
    """The hosts an ``Origin`` may name: on a loopback listener, the allowed hosts; on any other,
    or behind a reverse proxy (a gateway), only the names configured (``server.allowed_hosts``,
    the host of ``server.public_url``). A page served from the user's own machine
    (``http://localhost:3000``) is another site to a gateway reached over the network; list
    ``localhost`` in ``allowed_hosts`` to trust such pages anyway."""
    if is_loopback(server.host) and not server.public_url and not server.trusted_proxies:
        return allowed_hosts(server)
    # A gateway: listening on the network, or on loopback behind a reverse proxy (public_url,
    # trusted_proxies), which the network reaches it through.
    return frozenset(_configured(server))


def _configured(server: ServerConfig) -> set[str]:
    names = {h.strip().strip("[]").lower() for h in server.allowed_hosts}
    if server.public_url:
        names.add((urlsplit(server.public_url).hostname or "").lower())
    return names


def check_browser(
    headers: Mapping[str, str],
    allowed: frozenset[str],
    forwarded_hosts: tuple[str, ...] = (),
    origins: frozenset[str] | None = None,
) -> None:
    """403 unless ``Host`` is allowed and the request is not from another site's page.

    The Host check stops DNS rebinding: a page on evil.example whose name now resolves to
    127.0.0.1 still sends ``Host: evil.example``. Behind a trusted reverse proxy the name the
    client used arrives in ``Forwarded`` / ``X-Forwarded-Host`` (``forwarded_hosts``): each of
    those must be allowed too, as must the Host the proxy in front wrote. Origin and
    Sec-Fetch-Site stop a page from driving the proxy with a plain cross-site request; an
    ``Origin`` must name one of ``origins`` (default: ``allowed``, see :func:`allowed_origins`).
    """
    for value in (headers.get("Host", ""), *forwarded_hosts):
        if host_name(value) not in allowed:
            raise HostNotAllowed(
                f"Host {value[:100]!r} is not allowed; add its name to "
                "server.allowed_hosts if this proxy is meant to be reached by that name"
            )
    origin = headers.get("Origin")
    if origin is not None:
        try:
            origin_host = urlsplit(origin).hostname
        except ValueError:
            origin_host = None
        if origin_host not in (allowed if origins is None else origins):
            raise CrossSiteRequest("requests from web pages of other sites are refused")
    if headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        raise CrossSiteRequest("requests from web pages of other sites are refused")
