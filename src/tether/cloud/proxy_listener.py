"""Accepting connections that may start with a PROXY protocol header.

uvicorn has no PROXY protocol support, and the header comes before the TLS
handshake, so it cannot be read by anything above TLS. With `--trusted-proxy
CIDR` the Cloud accepts connections itself (`ProxiedServer`, in place of the
event loop's server that uvicorn would make): it reads exactly the header off
the raw socket (peeking, so the TLS bytes after it stay on the socket), then
hands the socket to the event loop with TLS as usual
(`loop.connect_accepted_socket`). The HTTP and WebSocket protocols then see
the client the header names as their peer (`_PeerTransport`), so claims,
limits, "connected from" and the logs show the real client.

Who may send a header (`ProxyPolicy`):
- a peer inside a trusted network with a header: the header's source is the client;
  a LOCAL header (the balancer's own health check) keeps the peer's address;
- a peer inside a trusted network without one: refused with `--require-proxy-header`,
  else served as itself;
- any other peer with a header: refused (closed at once, logged): else
  anyone could claim any address;
- any other peer without one: served as itself.
The header must arrive within the header timeout. Parsing is in
tether.cloud.proxy_protocol (no I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from tether.cloud import proxy_protocol
from tether.cloud.limits import LogLimiter

log = logging.getLogger("tether.cloud.proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PEEK_BYTES = proxy_protocol.V2_FIXED + proxy_protocol.V2_MAX_PAYLOAD
# While a header is cut in two TCP segments, look again after this, doubling.
PEEK_AGAIN_SECONDS = 0.005
PEEK_MAX_PAUSE_SECONDS = 0.25


class Refused(Exception):
    """A connection refused before TLS; the message says why (for the log)."""


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """`--trusted-proxy` values: CIDRs or single addresses. ValueError says which is wrong."""
    out: list[Network] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--trusted-proxy {value!r} is not a network: give an address or a CIDR "
                "such as 10.0.0.5 or 10.0.0.0/24 (the balancer's address as the Cloud sees it)"
            ) from None
    return tuple(out)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # an IPv4 peer of a dual-stack socket
    return ip


@dataclass(frozen=True)
class ProxyPolicy:
    trusted: tuple[Network, ...]
    required: bool = False  # a trusted peer must send a header

    def trusts(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.trusted)


def decide(policy: ProxyPolicy, peer: str, has_header: bool) -> str | None:
    """Why a connection from `peer` is refused, or None when it is served."""
    trusted = policy.trusts(peer)
    if has_header and not trusted:
        return f"PROXY header from {peer}, which is not a trusted proxy (--trusted-proxy)"
    if not has_header and trusted and policy.required:
        return f"no PROXY header from trusted proxy {peer} (--require-proxy-header)"
    return None


class _PeerTransport(asyncio.Transport):
    """A transport as it is, but its peer is the client the PROXY header named:
    uvicorn takes the peer from `get_extra_info("socket").getpeername()`, else
    from "peername"."""

    def __init__(self, inner: asyncio.Transport, peer: tuple[str, int]) -> None:
        super().__init__()
        self._inner = inner
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "socket":
            return None
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()


class _Relabelled(asyncio.Protocol):
    """Hands the connection to `inner` at once, with `_PeerTransport` as its
    transport; every later event goes to `inner` directly (no extra hop)."""

    def __init__(self, inner: asyncio.Protocol, peer: tuple[str, int]) -> None:
        self.inner = inner
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is a transport without being an asyncio.Transport.
        inner = cast(asyncio.Transport, transport)
        inner.set_protocol(self.inner)
        self.inner.connection_made(_PeerTransport(inner, self.peer))

    # Only reached if an event came before connection_made handed over.
    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, seen: int) -> bytes:
    """The bytes waiting on `sock`, once there are more than `seen` of them."""
    pause = PEEK_AGAIN_SECONDS
    while True:
        try:
            data = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        if not data:
            raise Refused("closed before sending anything")
        if len(data) > seen:
            return data
        # The rest of a split header is on its way (the socket stays readable,
        # so wait by time); a peer that sends a byte and stalls is looked at
        # less and less often until the header timeout ends it.
        await asyncio.sleep(pause)
        pause = min(PEEK_MAX_PAUSE_SECONDS, pause * 2)


async def read_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, peer: str, policy: ProxyPolicy
) -> proxy_protocol.ProxyHeader | None:
    """The PROXY header at the start of `sock`, consumed (and nothing after it);
    None when there is none. Refused when the policy says no or it is malformed."""
    data = b""
    while (starts := proxy_protocol.begins_header(data)) is None:
        data = await _peek(loop, sock, len(data))
    reason = decide(policy, peer, starts)
    if reason is not None:
        raise Refused(reason)
    if not starts:
        return None
    try:
        # v2 says its length in its first 16 bytes: read on until all are there.
        while (length := proxy_protocol.header_length(data)) is None or len(data) < length:
            data = await _peek(loop, sock, len(data))
        header = proxy_protocol.parse(data[:length])
    except proxy_protocol.ProxyHeaderError as exc:
        raise Refused(f"bad PROXY header from {peer}: {exc}") from None
    taken = sock.recv(length)  # all of it was peeked: it is there
    if len(taken) != length:
        raise Refused(f"PROXY header from {peer} vanished while read")
    return header


class ProxiedServer:
    """Accepts on `sock` itself, reads a PROXY header as the policy allows,
    then serves the connection with `factory`'s protocol (TLS when `ssl`).
    Stands in for the `asyncio.Server` uvicorn would hold (close, wait_closed)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.Protocol],
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None,
        policy: ProxyPolicy,
        header_timeout: float,
        backlog: int = 2048,
    ) -> None:
        self.loop = loop
        self.factory = factory
        self.sock = sock
        self.sockets = [sock]
        self.ssl = ssl_context
        self.policy = policy
        self.header_timeout = header_timeout
        self._pending: set[asyncio.Task[None]] = set()
        self._refusals = LogLimiter(10, 60.0, time.monotonic)
        sock.setblocking(False)
        sock.listen(backlog)
        self._accepting = loop.create_task(self._accept())

    async def _accept(self) -> None:
        while True:
            try:
                conn, addr = await self.loop.sock_accept(self.sock)
            except OSError as exc:  # EMFILE and the like: keep accepting once it clears
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = self.loop.create_task(self._serve(conn, str(addr[0])))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        conn.setblocking(False)
        try:
            async with asyncio.timeout(self.header_timeout):
                header = await read_header(self.loop, conn, peer, self.policy)
        except (Refused, TimeoutError, OSError) as exc:
            why = "no data within the header timeout" if isinstance(exc, TimeoutError) else exc
            allowed, suppressed = self._refusals.allow(peer)
            if allowed and not isinstance(exc, TimeoutError | OSError):
                more = f" ({suppressed} similar lines left out)" if suppressed else ""
                log.warning("connection from %s refused: %s%s", peer, why, more)
            conn.close()
            return
        source = header.source if header is not None else None

        def protocol() -> asyncio.Protocol:
            inner = self.factory()
            return _Relabelled(inner, source) if source is not None else inner

        try:
            await self.loop.connect_accepted_socket(
                protocol,
                conn,
                ssl=self.ssl,
                ssl_handshake_timeout=self.header_timeout if self.ssl else None,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()  # a failed handshake: as the loop's own server would

    def close(self) -> None:
        self._accepting.cancel()
        for task in list(self._pending):
            task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()

    def is_serving(self) -> bool:
        return not self._accepting.done()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._accepting, *self._pending, return_exceptions=True)
