"""Who is on the other end: the one loopback predicate for hosts, addresses and peers."""

from __future__ import annotations

import ipaddress

from aiohttp import web


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name, an IP literal, bracketed or with a zone) is this machine.

    IPv4-mapped IPv6 addresses count by their IPv4 address: a dual-stack listener sees a local
    IPv4 client as ``::ffff:127.0.0.1``, and ``ip_address(...).is_loopback`` is False for that
    on Python 3.11.
    """
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    address = ip_of(host)
    return address is not None and address.is_loopback


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``host`` spells (bracketed or with a zone), an IPv4-mapped IPv6 address
    as its IPv4 address; None for a name."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_is_loopback(request: web.Request) -> bool:
    """Whether the peer of ``request`` is on this machine: the TCP peer's address, as
    ``request.remote`` gives it (never a header a client could write)."""
    return is_loopback(request.remote)
