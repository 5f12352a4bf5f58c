"""The address clients see: the scheme and host they used to reach the proxy, for the links
the proxy hands back (``rewrite.ClientView``) and for the Host check (``browsers``).

- A client connected directly: the listener's scheme (``https`` when [server] has TLS) and its
  ``Host`` header.
- ``server.public_url``: the scheme and host of the main listener, whatever the request says
  (a reverse proxy or load balancer in front).
- A peer in ``server.trusted_proxies``: ``Forwarded`` (RFC 7239), else ``X-Forwarded-Proto`` /
  ``X-Forwarded-Host``, say what the client used. From any other peer these headers mean
  nothing. From every peer they are removed before forwarding (``headers.FORWARDING``): the
  upstream only ever sees the proxy as its client.

Without ``trusted_proxies`` nothing here runs per request but one attribute lookup.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from .config import RouteConfig, ServerConfig
from .peers import ip_of
from .rewrite import ClientView

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# One forwarded-pair (RFC 7239 §4): token "=" (token / quoted-string). Unquoted values are read
# up to the next delimiter, so that an unquoted "[2001:db8::1]:80" is not refused outright.
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^\s;,"]*)\s*')
_QUOTED = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What the peer in front said about the client's request."""

    trusted: bool  # a trusted proxy sent forwarding headers: they count
    proto: str | None = None  # "http" or "https"
    hosts: tuple[str, ...] = ()  # the hosts it named (Forwarded first); all must be allowed


NOTHING = Forwarding(False)
_NAMES = ("Forwarded", "X-Forwarded-Proto", "X-Forwarded-Host")
_KEY = web.RequestKey("forwarding", Forwarding)


class PublicAddress:
    """Prepared once per configuration from [server]."""

    __slots__ = ("_networks", "_public", "main_port", "scheme")

    def __init__(self, server: ServerConfig) -> None:
        self.scheme = "http" if server.tls is None else "https"
        self.main_port = server.port
        public = URL(server.public_url) if server.public_url else None
        self._public = None if public is None else (public.scheme, public.raw_authority)
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n) for n in server.trusted_proxies
        )

    def forwarding(self, request: web.BaseRequest) -> Forwarding:
        """What a trusted proxy says the client used (read once per request); ``NOTHING``
        when no proxy is trusted, none of the headers came, or the peer is not trusted."""
        if not self._networks:
            return NOTHING
        known: Forwarding | None = request.get(_KEY)
        if known is not None:
            return known
        headers = request.headers
        found = NOTHING
        if any(name in headers for name in _NAMES) and self.trusts(request.remote):
            found = self._read(headers)
        request[_KEY] = found
        return found

    def view(self, request: web.BaseRequest, listener: RouteConfig | None) -> ClientView:
        """The address the client of ``request`` used, for links (``listener``: the route whose
        own port took the request, or None for the main listener)."""
        host = request.headers.get("Host") or f"127.0.0.1:{self.main_port}"
        if listener is None and self._public is not None:
            scheme, public_host = self._public
            return ClientView(public_host, listener, self.main_port, scheme, behind_proxy=True)
        said = self.forwarding(request)
        if said.proto is None and not said.hosts:
            return ClientView(host, listener, self.main_port, self.scheme)
        return ClientView(
            said.hosts[0] if said.hosts else host,
            listener,
            self.main_port,
            said.proto or self.scheme,
            behind_proxy=True,
        )

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an IP address as the socket gives it) is a trusted proxy."""
        address = ip_of(peer) if peer else None  # a dual-stack socket's ::ffff:a.b.c.d is IPv4
        return address is not None and any(address in network for network in self._networks)

    def _read(self, headers: CIMultiDictProxy[str]) -> Forwarding:
        proto = None
        hosts = []
        if "Forwarded" in headers:
            elements = parse_forwarded(", ".join(headers.getall("Forwarded")))
            element = self._client_element(elements) if elements else None
            if element is not None:
                proto = element.get("proto")
                if element.get("host"):
                    hosts.append(element["host"])
        forwarded_host = _last(headers.getall("X-Forwarded-Host", []))
        if forwarded_host:
            hosts.append(forwarded_host)
        if proto is None:
            proto = _last(headers.getall("X-Forwarded-Proto", []))
        proto = proto.lower() if proto else None
        return Forwarding(True, proto if proto in ("http", "https") else None, tuple(hosts))

    def _client_element(self, elements: list[dict[str, str]]) -> Mapping[str, str]:
        """The element written by the proxy that received the client's own request: from the
        right (the trusted peer's own element), past every element whose ``for`` is another
        trusted proxy. Elements left of it were written by the client: never read."""
        index = len(elements) - 1
        while index > 0 and self.trusts(_node_address(elements[index].get("for", ""))):
            index -= 1
        return elements[index]


def parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """The elements of a ``Forwarded`` value (RFC 7239 §4), parameter names lower-cased and
    quoted values unquoted; None when it does not parse (then it is ignored whole)."""
    elements: list[dict[str, str]] = [{}]
    position, end = 0, len(value)
    while position < end:
        char = value[position]
        if char in " \t":
            position += 1
        elif char == ",":
            elements.append({})
            position += 1
        elif char == ";":
            position += 1
        else:
            match = _PAIR.match(value, position)
            if match is None or match.end() == position:
                return None
            name, raw = match.group(1).lower(), match.group(2)
            if raw.startswith('"'):
                raw = _QUOTED.sub(r"\1", raw[1:-1])
            elements[-1].setdefault(name, raw)
            position = match.end()
    return [e for e in elements if e] or None


def _node_address(node: str) -> str:
    """The IP address in a node (RFC 7239 §6): ``192.0.2.1``, ``192.0.2.1:80``,
    ``[2001:db8::1]:80``; anything else (``unknown``, ``_hidden``) gives ''."""
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else ""
    return node.rsplit(":", 1)[0] if node.count(":") == 1 else node


def _last(values: list[str]) -> str | None:
    """The last comma-separated value of a header that proxies append to: the one the nearest
    (trusted) proxy wrote."""
    if not values:
        return None
    return values[-1].rsplit(",", 1)[-1].strip() or None
