"""The configuration's data: frozen, slotted dataclasses built once and passed explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from .. import presets
from ..credential_files import read_first_line
from ..peers import is_loopback
from .access import AccessConfig
from .route_options import RouteEdits, RouteLimits, RoutePolicy, RouteThrottling
from .tap import TapConfig


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential value that never shows itself in a repr, a log or an error."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """HTTPS on every listener: a PEM chain and key given by the user, or (``local_dir``) the
    certificate for localhost that the proxy's local CA issues."""

    cert: Path  # the chain, leaf first; for the local CA's certificate also the key
    key: Path | None = None  # None: the key is in ``cert``
    key_password: Secret | None = None
    key_password_file: Path | None = None  # first line, re-read on every (re)load
    local_dir: Path | None = None  # tls = "local": the folder of the CA and the certificate
    literal_secrets: tuple[str, ...] = ()  # key paths whose secret is written in the file

    def password(self) -> str | None:
        """The key's password, read now (its file may have changed since the last load)."""
        if self.key_password_file is not None:
            return read_first_line(self.key_password_file)
        return None if self.key_password is None else self.key_password.reveal()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the loopback ones
    allow_anonymous_remote: bool = False  # bind a non-loopback address without [access]
    drain_delay: float = 0.0  # seconds between "not ready" and closing the listener
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish on shutdown
    workers: int = 1
    event_loop: str = "auto"  # "auto" (uvloop when installed), "asyncio" or "uvloop"
    body_timeout: float = 30.0  # seconds a request body may pause between two chunks
    tls: TlsConfig | None = None  # None: plain HTTP
    public_url: str | None = None  # scheme://host[:port] clients use, e.g. behind a reverse proxy
    trusted_proxies: tuple[str, ...] = ()  # networks whose Forwarded / X-Forwarded-* count
    state_dir: Path | None = None  # the proxy's own files (the local CA); None: none known
    header_timeout: float = 10.0  # seconds a request head may take to arrive
    idle_timeout: float = 75.0  # seconds a kept-alive connection may wait for its next request
    max_connections: int = 1000  # per process; more wait in the kernel's backlog
    # Bytes of $batch bodies held at once while they are read and checked (proxy.batch.budget).
    max_held_batch_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    ca_file: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    proxy: str | None = None
    replay_body_bytes: int = 65536  # bodies up to this size are kept to retry once after a 401
    # HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY as read at load (keys lower-case).
    proxy_env: Mapping[str, str] = field(default_factory=dict)

    def proxy_for(self, url: str) -> str | None:
        """The outbound proxy for ``url``: ``proxy`` when set, else the environment's, unless
        NO_PROXY exempts the host. Decided once per upstream, never per request.

        Never a proxy for a loopback host (it is on this machine: a proxy could only see what
        goes to it), nor for plain ``http://`` (the proxy would read the token in clear)."""
        parsed = URL(url)
        if parsed.scheme != "https" or is_loopback(parsed.host):
            return None
        if self.proxy is not None:
            return self.proxy
        env = self.proxy_env
        chosen = env.get("https_proxy") or env.get("all_proxy")
        if not chosen or parsed.host is None:
            return None
        if _no_proxy(parsed.host, parsed.port, env.get("no_proxy", "")):
            return None
        return chosen

    def configured_proxy(self) -> tuple[str, str] | None:
        """The key a proxy comes from and its URL, before any exemption; ``None`` without one."""
        if self.proxy is not None:
            return "outbound.proxy", self.proxy
        for name in ("http_proxy", "https_proxy", "all_proxy"):
            if name in self.proxy_env:
                return f"{name.upper()} (environment)", self.proxy_env[name]
        return None


def _no_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY exempts host[:port]: "*", or an entry equal to the host or a domain
    suffix of it (".example.com" and "example.com" alike), optionally with a port."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


@dataclass(frozen=True, slots=True)
class TokensConfig:
    wait_timeout: float = 5.0
    prefetch: bool = True
    min_refresh_interval: float = 10.0  # seconds between two refreshes forced by upstream 401s


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """One identity; exactly one credential form is set (checked in config/identities.py)."""

    name: str
    tenant_id: str
    client_id: str
    client_secret: Secret | None = None
    authority_host: str = presets.DEFAULT_AUTHORITY_HOST
    cloud: str = presets.DEFAULT_CLOUD
    client_secret_file: Path | None = None  # first line, re-read for every token request
    certificate_path: Path | None = None  # PEM (key and certificate) or PFX/PKCS#12
    certificate_password: Secret | None = None
    certificate_password_file: Path | None = None  # first line, re-read with the certificate
    send_certificate_chain: bool = False  # Subject Name/Issuer authentication (x5c)
    username: str | None = None
    password: Secret | None = None
    password_file: Path | None = None  # first line, re-read for every token request
    managed_identity: tuple[str, str] | None = None  # ("system", "") or ("client_id", id) ...
    federated_token_file: Path | None = None  # re-read for every token request
    literal_secrets: tuple[str, ...] = ()  # key paths whose secret is written in the file

    @property
    def kind(self) -> str:
        """client_secret, certificate, username_password, managed_identity or workload_identity."""
        if self.certificate_path is not None:
            return "certificate"
        if self.username is not None:
            return "username_password"
        if self.managed_identity is not None:
            return "managed_identity"
        if self.federated_token_file is not None:
            return "workload_identity"
        return "client_secret"

    def read_certificate_password(self) -> str | None:
        """The certificate's password: from ``certificate_password_file`` (read now, as the
        certificate is) or ``certificate_password``; None when the key is not encrypted."""
        if self.certificate_password_file is not None:
            return read_first_line(self.certificate_password_file)
        if self.certificate_password is not None:
            return self.certificate_password.reveal()
        return None

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def instance_discovery(self) -> bool:
        return URL(self.authority_host).host in presets.KNOWN_AUTHORITY_HOSTS


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    prefix: str
    upstream: str
    scope: str
    identity: str
    strip_prefix: bool = True
    port: int | None = None  # a listener of its own: every path there goes to this route
    # How the upstream sees a signed-in member: "service" (the identity's own token) or "user"
    # (a token for the member, by on-behalf-of); impersonate adds CallerObjectId (Dataverse).
    act_as: str = "service"
    impersonate: bool = False
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    limits: RouteLimits = field(default_factory=RouteLimits)
    edits: RouteEdits = field(default_factory=RouteEdits)
    throttling: RouteThrottling = field(default_factory=RouteThrottling)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    outbound: OutboundConfig = OutboundConfig()
    tokens: TokensConfig = TokensConfig()
    identities: Mapping[str, IdentityConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    access: AccessConfig = field(default_factory=AccessConfig)
    tap: TapConfig = field(default_factory=TapConfig)
