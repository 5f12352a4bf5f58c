"""``ppproxy demo``: a local HTTPS identity provider, an echo upstream and the proxy in front,
all on this machine, with no tenant. ``--flow`` picks how the proxy signs in (client secret,
certificate, or username and password); the demo writes the local CA, the credential files and
a ready configuration into a folder, runs the proxy from that configuration, and prints how to
use them (curl, ``ppproxy check``, ``ppproxy token``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .app import create_app
from .config import load
from .server import run

FLOWS = ("secret", "certificate", "password")
CLIENT = "demo-client"
USER = "demo.admin@contoso.test"


def main(port: int, *, tap: bool = False, flow: str = "secret", folder: Path | None = None) -> int:
    """``ppproxy demo``: the exit code."""
    try:  # the testing extra: trustme (LocalCA) and PyJWT (signing), imported lazily there
        import jwt  # noqa: F401
        import trustme  # noqa: F401

        from . import testing
    except ImportError as e:
        print(
            f"ppproxy demo needs the testing extra ({e.name or 'a module'} is missing): "
            "pip install 'ppproxy[testing]'",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_run(testing, port, tap, flow, folder))


@contextlib.contextmanager
def _folder(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="ppproxy-demo-") as tmp:
        yield Path(tmp)


async def _run(testing: Any, port: int, tap: bool, flow: str, folder: Path | None) -> int:
    ca = testing.LocalCA()
    with _folder(folder) as where:
        ca.write_ca_file(where / "demo-ca.pem")
        idp = testing.IdentityProvider(ca, clients={})
        credential, files = _credential(testing, idp, flow, where)
        echo = testing.EchoUpstream(ssl_context=ca.server_context())
        # MSAL looks a user's realm up on port 443 of the authority's host whatever port the
        # authority names; a local identity provider cannot listen there without privileges,
        # so the password flow's calls go through a relay that takes port 443 to it.
        async with contextlib.AsyncExitStack() as running:
            await running.enter_async_context(idp)
            await running.enter_async_context(echo)
            relay = None
            if flow == "password":
                idp_port = int(idp.authority_host.rsplit(":", 1)[1])
                relay = testing.ConnectProxy(ports={443: idp_port})
                await running.enter_async_context(relay)
            path = where / "proxy.toml"
            relay_url = relay.url if relay is not None else None
            text = _config_text(flow, port, idp, credential, echo.url, relay_url, tap)
            path.write_text(text, encoding="utf-8")
            path.chmod(0o600)
            config = load(path, {})

            async def ready(address: str) -> None:
                print(_instructions(flow, address, idp, echo.url, where, files, tap), flush=True)

            try:
                await run(create_app(config), config.server, ready)
            except OSError as e:
                print(f"ppproxy demo: cannot listen on port {port}: {e.strerror}", file=sys.stderr)
                return 1
    return 0


def _credential(testing: Any, idp: Any, flow: str, where: Path) -> tuple[str, list[str]]:
    """Register the demo client with the identity provider; its identity keys and files."""
    if flow == "certificate":
        cert = testing.ClientCertificate("ppproxy demo client")
        cert.write_pem(where / "client.pem")
        (where / "client.pem").chmod(0o600)  # a private key: as a real one would be kept
        (where / "client.crt").write_bytes(cert.cert_pem)
        idp.certificates[CLIENT] = [cert.cert_pem]
        return 'certificate_path = "client.pem"', [
            "client.pem   private key and certificate (certificate_path)",
            "client.crt   the certificate alone: what you upload to the app registration",
        ]
    if flow == "password":
        idp.public_clients.add(CLIENT)
        idp.users[USER] = "demo-password"
        (where / "password").write_text("demo-password\n")
        (where / "password").chmod(0o600)
        return f'username = "{USER}"\npassword_file = "password"', [
            "password     the demo user's password (password_file)"
        ]
    idp.clients[CLIENT] = "demo-secret"
    (where / "client-secret").write_text("demo-secret\n")
    (where / "client-secret").chmod(0o600)
    return 'client_secret_file = "client-secret"', [
        "client-secret  the client secret (client_secret_file)"
    ]


# A name under proxy.testing's TEST_DOMAIN (its CA's certificate covers it; the relay takes it to
# 127.0.0.1). Not imported: proxy.testing needs the testing extra, checked later.
_RELAYED_NAME = "login.ppproxy.test"


def _config_text(
    flow: str, port: int, idp: Any, credential: str, upstream: str, relay: str | None, tap: bool
) -> str:
    proxy = (
        f'proxy = "{relay}"  # the relay to port 443 (see README, ppproxy demo)\n' if relay else ""
    )
    # Through the relay the identity provider goes by a name under ppproxy.test (its certificate
    # covers it): a loopback address would never be sent through an outbound proxy.
    authority = idp.authority_host
    if relay:
        authority = authority.replace("127.0.0.1", _RELAYED_NAME)
    return f"""\
# ppproxy demo configuration ({flow}): the local identity provider stands in for Entra ID.
[server]
port = {port}

[outbound]
ca_file = "demo-ca.pem"  # the local CA, trusted instead of the system's
{proxy}
[identities.demo]
tenant_id = "{idp.tenant}"
client_id = "{CLIENT}"
authority_host = "{authority}"
{credential}

[[routes]]
name = "demo"
prefix = "/demo"
upstream = "{upstream}"

[tap]
enabled = {"true" if tap else "false"}
"""


def _instructions(
    flow: str, address: str, idp: Any, upstream: str, where: Path, files: list[str], tap: bool
) -> str:
    config = where / "proxy.toml"
    every = [
        "proxy.toml   the configuration this demo runs",
        "demo-ca.pem  the local CA (outbound.ca_file)",
        *files,
    ]
    listed = "\n".join(f"    {f}" for f in every)
    watch = (
        f"Watch the exchange in the debugging tap: open {address}/_proxy/tap in a browser.\n"
        if tap
        else ""
    )
    return (
        f"\nppproxy demo is running ({flow} flow): identity provider {idp.authority_host}, "
        f"echo upstream {upstream}, proxy {address}.\n"
        f"Files in {where}:\n{listed}\n"
        "In another terminal, ask the echo upstream what it received:\n\n"
        f"    curl -s '{address}/demo/hello?name=world'\n\n"
        "The answer shows the Authorization header the proxy added and the token's claims.\n"
        f"The same configuration works with the other commands while the demo runs:\n\n"
        f"    ppproxy check --config '{config}'\n"
        f"    ppproxy token --config '{config}' --route demo --decode\n\n"
        f"{watch}Press Ctrl+C to stop.\n"
    )
