"""Run the Cloud on uvicorn with the settings measured in design.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from tether.cloud.settings import CloudSettings

log = logging.getLogger("tether.cloud")


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Bind the listening socket. `::` means dual-stack (IPv4-mapped allowed);
    if the host has no IPv6, fall back to 0.0.0.0."""
    if host in ("::", ""):
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError as exc:
            with contextlib.suppress(NameError):
                sock.close()
            if exc.errno in (98,):  # address in use: the same on 0.0.0.0
                raise
            log.warning("IPv6 is not available (%s); listening on 0.0.0.0 only", exc)
            host = "0.0.0.0"
        else:
            sock.set_inheritable(True)
            return [sock]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    return [sock]


def run(
    settings: CloudSettings,
    app: Starlette,
    *,
    cert_file: str | None,
    key_file: str | None,
    on_ready: Callable[[], None] | None = None,
    access_log: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT; call `on_ready` once connections are accepted."""
    sockets = listen_sockets(settings.host, settings.port)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="on",
        ssl_certfile=None if settings.insecure_http else cert_file,
        ssl_keyfile=None if settings.insecure_http else key_file,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=sockets))
        # uvicorn has no startup callback; `started` flips once sockets listen.
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            on_ready()
        await task

    # uvicorn re-raises the signal it caught after a graceful stop; these
    # no-op handlers make that a clean exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    loop_factory = config.get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    if not server.started:
        return 1
    return 0
