"""The baseline of the reconnect storm: a bare WebSocket server and its clients.

    .venv/bin/python bench/bare_ws.py serve --port P --cert C --key K
    .venv/bin/python bench/bare_ws.py connect --url wss://127.0.0.1:P/ --ca CA -n N

`serve` is what a link costs at the least on this machine: uvicorn with uvloop
and websockets-sansio, per-message deflate off, TLS with the Cloud's own
certificate, pings every 20 s, as `tether-cloud serve` runs; its one route
accepts a WebSocket, reads one binary message and answers one (Hello and
HelloAck without the protocol), then holds the link. No database, no auth.

`connect` opens N links the way the simulator does (`websockets` asyncio
client, compression off) with at most `--concurrency` upgrades in flight,
prints `{"event": "linked", "seconds": ...}` once all N are up and holds them
until its input ends. bench/reconnect_storm.py runs both in the same run as
the Cloud's storm, so the ratio between the two is measured under the same
machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import connect


async def _link(ws: WebSocket) -> None:
    await ws.accept()
    msg = await ws.receive()
    if msg.get("bytes") is not None:
        await ws.send_bytes(b"\x81\xa1t\xa9hello_ack")
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


def serve(a: argparse.Namespace) -> int:
    app = Starlette(routes=[WebSocketRoute("/", _link)])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=a.port,
        loop="uvloop",
        ws=WebSocketsSansIOProtocol,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=10.0,
        ssl_certfile=a.cert,
        ssl_keyfile=a.key,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    return 0


async def _connect(a: argparse.Namespace) -> int:
    ctx = ssl.create_default_context(cafile=a.ca)
    gate = asyncio.Semaphore(a.concurrency)
    links: list[Any] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        for _ in range(20):
            try:
                async with gate:
                    ws = await connect(
                        a.url,
                        ssl=ctx,
                        proxy=None,
                        compression=None,
                        ping_interval=20.0,
                        ping_timeout=20.0,
                        open_timeout=60,
                    )
                    await ws.send(b"\x81\xa1t\xa5hello")
                    await ws.recv()
                links.append(ws)
                return
            except Exception:
                errors += 1
                await asyncio.sleep(1.0)

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(a.nodes)))
    took = time.monotonic() - t0
    print(json.dumps({"event": "linked", "n": len(links), "errors": errors, "seconds": took}))
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("connect")
    c.add_argument("--url", required=True)
    c.add_argument("--ca", required=True)
    c.add_argument("-n", "--nodes", type=int, default=1000)
    c.add_argument("--concurrency", type=int, default=200)
    a = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.cmd == "serve":
        return serve(a)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(_connect(a))
    sys.stdout.flush()
    os._exit(code)  # skip closing thousands of links one by one


if __name__ == "__main__":
    raise SystemExit(main())
