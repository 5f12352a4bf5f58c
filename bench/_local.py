"""The local world every benchmark runs in: a temp dir, the process registry, the HTTPS
identity provider (``proxy.testing``) and the CA bundle the proxies trust."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import trustme
from _harness import (
    CLIENT_ID,
    CLIENT_SECRET,
    HOST,
    Proc,
    Procs,
    Route,
    child_env,
    free_port,
    proxy_toml,
    wait_port,
)

from proxy.testing import IdentityProvider, LocalCA


@dataclass
class Local:
    tmp: Path
    procs: Procs
    ca: LocalCA
    idp: IdentityProvider
    ca_file: Path  # LocalCA's certificate and the nginx TLS CA, one bundle
    nginx_tls: tuple[Path, Path]  # certificate chain and key for an HTTPS nginx on 127.0.0.1

    def proxy_config(
        self,
        name: str,
        port: int,
        routes: list[Route],
        *,
        workers: int = 1,
        prefetch: bool = True,
        tap: bool = False,
        event_loop: str = "auto",
    ) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(
            proxy_toml(
                port=port,
                authority_host=self.idp.authority_host,
                tenant=self.idp.tenant,
                ca_file=self.ca_file,
                routes=routes,
                workers=workers,
                prefetch=prefetch,
                tap=tap,
                event_loop=event_loop,
            )
        )
        return path

    async def start_minimal(
        self, upstream: str, scope: str, *, uvloop: bool = False
    ) -> tuple[Proc, str]:
        """bench/minimal_proxy.py in front of ``upstream``, with a real token for ``scope``."""
        port = free_port()
        argv = [sys.executable, "bench/minimal_proxy.py", str(port), upstream]
        argv += ["--uvloop"] if uvloop else []
        name = "minimal-uvloop" if uvloop else "minimal"
        proc = await self.procs.start(
            name,
            argv,
            log=self.tmp / f"{name}.log",
            env=child_env(BENCH_TOKEN=await self.token(scope)),
        )
        await wait_port(port, proc)
        return proc, f"http://{HOST}:{port}"

    async def token(self, scope: str) -> str:
        """A real token from the identity provider, so that the reference proxies inject a
        header of the same size as ppproxy does."""
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": scope,
        }
        connector = aiohttp.TCPConnector(ssl=self.ca.client_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"{self.idp.authority}/oauth2/v2.0/token"
            async with session.post(url, data=form) as r:
                r.raise_for_status()
                return str((await r.json())["access_token"])


@contextlib.asynccontextmanager
async def local() -> AsyncIterator[Local]:
    """Set up the local world; everything started inside is stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="ppproxy-bench-") as name:
        tmp = Path(name)
        ca = LocalCA()
        # LocalCA does not hand out its server key, and nginx needs one in a file: a second
        # throwaway CA (the same library, trustme) issues nginx's certificate.
        nginx_ca = trustme.CA()
        leaf = nginx_ca.issue_cert(HOST)
        cert, key = tmp / "nginx-cert.pem", tmp / "nginx-key.pem"
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        ca_file = tmp / "ca-bundle.pem"
        ca_file.write_bytes(ca.cert_pem + nginx_ca.cert_pem.bytes())
        idp = IdentityProvider(ca, clients={CLIENT_ID: CLIENT_SECRET})
        async with idp, Procs() as procs:  # processes end before the IdP
            yield Local(tmp, procs, ca, idp, ca_file, (cert, key))
