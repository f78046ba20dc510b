"""Run the Cloud on uvicorn with the settings measured in design.md."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
import uvloop
from starlette.applications import Starlette
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from tether.cloud.http_timeouts import Unfinished, sweep, timed_protocol
from tether.cloud.proxy_listener import ProxiedServer, ProxyPolicy, parse_networks
from tether.cloud.settings import CloudSettings
from tether.protocol.frames import MAX_FRAME_SIZE

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


class LinkProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, but a keepalive timeout drops the
    connection at once. uvicorn closes the TLS transport politely, and the TLS
    layer then waits up to 30 s for the dead peer's close_notify before the app
    hears of it: a frozen agent or a silently cut network would stay `live`."""

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        if self.transport is not None:
            self.transport.abort()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A refused upgrade (HTTP 401/503) is complete; without this uvicorn
            # 0.54 logs "ASGI callable returned without completing handshake".
            self.handshake_complete = True

    def shutdown(self) -> None:
        # uvicorn 0.54 sends a close frame here even when the peer already
        # started the closing handshake, which raises InvalidState and aborts
        # uvicorn's loop over the remaining connections: drop such a link.
        try:
            super().shutdown()
        except InvalidState:
            self.transport.abort()


class _Server(uvicorn.Server):
    """uvicorn, but the app closes its links itself before uvicorn closes
    connections (uvicorn 0.54 raises InvalidState on links already closing and
    then skips the rest; and only the app can send Disconnect with a delay)."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from tether.cloud.app import run_shutdown_hooks

        for server in getattr(self, "servers", []):
            server.close()  # stop accepting first, so links do not come back meanwhile
        try:
            await asyncio.wait_for(run_shutdown_hooks(self.app), 20)
        except Exception:
            log.exception("closing the links at shutdown failed")
        await super().shutdown(sockets)


def keep_alive_seconds(settings: CloudSettings) -> int:
    """uvicorn's idle keep-alive timeout: the challenge's lifetime, 5 s at least."""
    return max(5, math.ceil(settings.challenge_ttl_seconds) + 1)


def _loop_factory(
    tls_handshake_timeout: float, proxy: ProxyPolicy | None = None
) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop, but a TLS handshake must finish within the given seconds (uvicorn
    passes no `ssl_handshake_timeout`, and the default 60 s lets a client that
    never sends a ClientHello hold a descriptor for a minute). With `proxy`
    (--trusted-proxy) the Cloud accepts connections itself, to read a PROXY
    protocol header before TLS (tether.cloud.proxy_listener)."""

    class Loop(uvloop.Loop):
        async def create_server(self, *args: Any, **kwargs: Any) -> Any:
            if proxy is not None:
                return ProxiedServer(
                    self,
                    args[0],
                    kwargs["sock"],
                    kwargs.get("ssl"),
                    proxy,
                    tls_handshake_timeout,
                    kwargs.get("backlog") or 2048,
                )
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", tls_handshake_timeout)
            return await super().create_server(*args, **kwargs)

    return Loop


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
    # Slow clients: request head, body and unfinished-connection cap (http_timeouts.py).
    unfinished: Unfinished[Any] = Unfinished(
        settings.header_timeout_seconds,
        settings.body_timeout_seconds,
        settings.max_unfinished_connections,
    )
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=timed_protocol(unfinished),
        ws=LinkProtocol,
        ws_per_message_deflate=False,
        ws_max_size=MAX_FRAME_SIZE,
        # Server pings every keepalive; a pong later than keepalive/2 drops the
        # link, so a dead node is offline within 1.5 keepalive intervals.
        ws_ping_interval=settings.keepalive_seconds,
        ws_ping_timeout=settings.keepalive_seconds / 2,
        lifespan="on",
        ssl_certfile=None if settings.insecure_http else cert_file,
        ssl_keyfile=None if settings.insecure_http else key_file,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=10,
        # An idle keep-alive connection lives as long as a challenge: the agent
        # answers on the connection it got the challenge on, and a fleet that
        # lags (a reconnect storm) must not have its answers cut by uvicorn's
        # 5 s default (each cut cost a full backoff).
        timeout_keep_alive=keep_alive_seconds(settings),
        server_header=False,
    )
    if not access_log:
        # uvicorn logs two INFO lines per WebSocket ("[accepted]", "connection
        # open"): at 10,000 links that is real CPU in a reconnect storm, and the
        # link logs its own line per node (tether.cloud.link).
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = _Server(config, app)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=sockets))
        sweeper = asyncio.create_task(sweep(unfinished))
        # uvicorn has no startup callback; `started` flips once sockets listen.
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            on_ready()
        # Everything made at start-up lives as long as the process: move it out
        # of the collector's reach, or each full collection walks all of it
        # (measured: 40-50 ms pauses about once a second under relay load).
        gc.collect()
        gc.freeze()
        try:
            await task
        finally:
            sweeper.cancel()

    # uvicorn re-raises the signal it caught after a graceful stop; these
    # no-op handlers make that a clean exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    proxy = (
        ProxyPolicy(parse_networks(settings.trusted_proxies), settings.require_proxy_header)
        if settings.trusted_proxies
        else None
    )
    loop_factory = _loop_factory(settings.header_timeout_seconds, proxy)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    if not server.started:
        return 1
    return 0
