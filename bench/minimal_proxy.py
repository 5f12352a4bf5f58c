"""The practical Python limit: a minimal aiohttp header-injecting streaming proxy.

    BENCH_TOKEN=... python bench/minimal_proxy.py PORT UPSTREAM_URL [--uvloop]

A fixed bearer token, hop-by-hop headers dropped, bodies streamed both ways, no cookies, no
decompression, no logging, no routing, no error mapping.
"""

import asyncio
import os
import sys

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host"}
DROP = HOP | {"content-length", "authorization", "cookie"}


async def main(port: int, upstream: str, token: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
        headers["Authorization"] = f"Bearer {token}"
        body = request.content if request.body_exists else None
        async with session.request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as up:
            response = web.StreamResponse(status=up.status, reason=up.reason)
            response.headers.extend((k, v) for k, v in up.headers.items() if k.lower() not in HOP)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    runner = web.ServerRunner(web.Server(handle), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until SIGTERM, whose default action ends the process


if __name__ == "__main__":
    factory = None
    if "--uvloop" in sys.argv[3:]:  # the same event loop ppproxy[speed] uses, for a fair pair
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(int(sys.argv[1]), sys.argv[2].rstrip("/"), os.environ["BENCH_TOKEN"]))
