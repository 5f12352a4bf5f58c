"""``ppproxy demo``: a local HTTPS identity provider, an echo upstream and the proxy in front,
all on this machine, with no tenant; prints the curl command that shows the injected token."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from .app import create_app
from .config import from_dict
from .server import run


def main(port: int, *, tap: bool = False) -> int:
    """``ppproxy demo``: the exit code."""
    try:
        from . import testing
    except ImportError:
        print(
            "ppproxy demo needs the testing extra: pip install 'ppproxy[testing]'", file=sys.stderr
        )
        return 2
    return asyncio.run(_run(testing, port, tap))


async def _run(testing: Any, port: int, tap: bool = False) -> int:
    ca = testing.LocalCA()
    with tempfile.TemporaryDirectory(prefix="ppproxy-demo-") as tmp:
        ca_file = ca.write_ca_file(Path(tmp) / "demo-ca.pem")
        idp = testing.IdentityProvider(ca, clients={"demo-client": "demo-secret"})
        echo = testing.EchoUpstream(ssl_context=ca.server_context())
        async with idp, echo:
            config = from_dict(
                {
                    "server": {"port": port},
                    "outbound": {"ca_file": str(ca_file)},
                    "identities": {
                        "demo": {
                            "tenant_id": idp.tenant,
                            "client_id": "demo-client",
                            "client_secret": "demo-secret",
                            "authority_host": idp.authority_host,
                        }
                    },
                    "routes": [{"name": "demo", "prefix": "/demo", "upstream": echo.url}],
                    "tap": {"enabled": tap},
                },
                {},
                base_dir=Path(tmp),
            )

            async def ready(address: str) -> None:
                watch = (
                    f"Watch the exchange in the debugging tap: open {address}/_proxy/tap "
                    "in a browser.\n"
                    if tap
                    else ""
                )
                print(
                    f"\nppproxy demo is running: identity provider {idp.authority_host}, "
                    f"echo upstream {echo.url}, proxy {address}.\n"
                    "In another terminal, ask the echo upstream what it received:\n\n"
                    f"    curl -s {address}/demo/hello?name=world\n\n"
                    "The answer shows the Authorization header the proxy added and the token's "
                    f"claims.\n{watch}Press Ctrl+C to stop.\n",
                    flush=True,
                )

            try:
                await run(create_app(config), config.server, ready)
            except OSError as e:
                print(f"ppproxy demo: cannot listen on port {port}: {e.strerror}", file=sys.stderr)
                return 1
    return 0
