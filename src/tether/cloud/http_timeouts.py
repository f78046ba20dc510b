"""Slow clients are timed out: a request head must arrive within
`header_timeout` seconds, its body within `body_timeout` seconds, and at most
`max_unfinished` connections per process may be in the middle of sending a
request (past that the oldest such connection is closed).

uvicorn has no header or body read timeout of its own (its keep-alive timer is
cancelled by the first byte of a request), so a client that sends half a
request head holds a file descriptor for as long as it likes; enough of them
use up the descriptors the links need. `Unfinished` is the bookkeeping, free
of I/O and with an injected clock; `timed_protocol` is uvicorn's httptools
protocol reporting to it; `sweep` closes what is due.

What is not timed here: idle keep-alive connections (uvicorn's own
`timeout_keep_alive` closes those), requests the app is still answering, and
WebSocket links (an upgraded connection leaves this protocol for the link's).
The TLS handshake, which completes before the HTTP protocol sees the
connection, is bounded by the event loop's `ssl_handshake_timeout` (server.py
sets it to the header timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("tether.cloud")

K = TypeVar("K")
Phase = Literal["head", "body"]

# After a 408 the Cloud closes politely (TLS close_notify); a peer that never
# answers it is dropped this many seconds later instead of TLS's 30 s.
CLOSE_GRACE_SECONDS = 1.0

_408_BODY = (
    b'{"errorMsgKey":"ErrRequestTimeout","errorMessage":"The request body did not arrive '
    b"within the Cloud's body timeout; send the whole body promptly and try again.\"}"
)
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_408_BODY)).encode() + b"\r\n"
    b"cache-control: no-store\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"connection: close\r\n"
    b"\r\n" + _408_BODY
)


class Unfinished(Generic[K]):
    """Connections that have not finished sending a request, oldest first.

    A connection is in its `head` phase from when it is made (or, on a
    keep-alive connection, from the first byte of its next request) until the
    request head is complete, then in its `body` phase until the body is
    complete. Each phase has its own deadline; both phases count towards the
    cap. Entering a phase appends, so each dict stays ordered by start time
    (its deadlines too: one timeout per dict)."""

    def __init__(
        self,
        header_timeout: float,
        body_timeout: float,
        max_unfinished: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_unfinished = max_unfinished
        self.clock = clock
        self.heads: OrderedDict[K, float] = OrderedDict()
        self.bodies: OrderedDict[K, float] = OrderedDict()
        self.evicted = 0  # closed because of the cap, for the log

    def __len__(self) -> int:
        return len(self.heads) + len(self.bodies)

    def head(self, key: K) -> list[K]:
        """`key` starts (or goes on) waiting for a request head. Returns the
        connections to close because the cap is exceeded, oldest first."""
        if key not in self.heads:
            self.bodies.pop(key, None)
            self.heads[key] = self.clock()
        evicted: list[K] = []
        while len(self) > self.max_unfinished:
            evicted.append(self._pop_oldest())
        self.evicted += len(evicted)
        return evicted

    def body(self, key: K) -> None:
        """`key`'s request head is complete; its body is now due."""
        self.heads.pop(key, None)
        self.bodies[key] = self.clock()

    def done(self, key: K) -> None:
        """`key` finished its request, was upgraded, or is gone."""
        self.heads.pop(key, None)
        self.bodies.pop(key, None)

    def due(self) -> list[tuple[K, Phase]]:
        """Forget and return the connections past their phase's deadline."""
        now = self.clock()
        out: list[tuple[K, Phase]] = []
        for phase, entries, timeout in (
            ("head", self.heads, self.header_timeout),
            ("body", self.bodies, self.body_timeout),
        ):
            while entries:
                key, started = next(iter(entries.items()))
                if now - started < timeout:
                    break
                del entries[key]
                out.append((key, phase))  # type: ignore[arg-type]
        return out

    def _pop_oldest(self) -> K:
        head = next(iter(self.heads.items()), None)
        body = next(iter(self.bodies.items()), None)
        if body is None or (head is not None and head[1] <= body[1]):
            assert head is not None
            del self.heads[head[0]]
            return head[0]
        del self.bodies[body[0]]
        return body[0]


class _TimedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, reporting each connection's phase to
    `unfinished` (set on the subclass `timed_protocol` makes)."""

    unfinished: Unfinished[_TimedProtocol]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        for old in self.unfinished.head(self):
            old.expire("cap")

    def connection_lost(self, exc: Exception | None) -> None:
        self.unfinished.done(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first byte of a request on a kept-alive connection (on a new
        # connection the head phase began at connection_made and goes on).
        for old in self.unfinished.head(self):
            old.expire("cap")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            self.unfinished.done(self)  # becomes a WebSocket: not timed here
        else:
            self.unfinished.body(self)

    def on_message_complete(self) -> None:
        self.unfinished.done(self)
        super().on_message_complete()

    def expire(self, why: Literal["head", "body", "cap"]) -> None:
        """Close a connection whose request is late (or the oldest one when
        too many are unfinished). A late body is answered 408 if the app has
        not answered yet; a late head is just dropped, at once."""
        self.unfinished.done(self)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        if why == "body" and cycle is not None and not cycle.response_started:
            transport.write(_408)
            # The app's receive() now returns http.disconnect and its answer,
            # if any, is dropped: the 408 is the answer.
            cycle.response_started = cycle.response_complete = True
            cycle.disconnected = True
            cycle.message_event.set()
            transport.close()
            self.loop.call_later(CLOSE_GRACE_SECONDS, transport.abort)
        else:
            transport.abort()


def timed_protocol(unfinished: Unfinished[Any]) -> type[HttpToolsProtocol]:
    """The HTTP protocol class to give uvicorn (`Config(http=...)`)."""
    return type("TimedHttpProtocol", (_TimedProtocol,), {"unfinished": unfinished})


async def sweep(unfinished: Unfinished[Any], every: float | None = None) -> None:
    """Close the connections whose head or body is late, until cancelled."""
    if every is None:
        every = min(1.0, max(0.05, min(unfinished.header_timeout, unfinished.body_timeout) / 10))
    late = {"head": 0, "body": 0}
    last_log = time.monotonic()
    while True:
        await asyncio.sleep(every)
        for conn, phase in unfinished.due():
            late[phase] += 1
            conn.expire(phase)
        # One line a minute at most, however many clients are slow.
        if (any(late.values()) or unfinished.evicted) and time.monotonic() - last_log >= 60:
            log.warning(
                "closed slow HTTP clients in the last minute: %d late request heads, "
                "%d late bodies, %d over the cap of %d unfinished connections",
                late["head"],
                late["body"],
                unfinished.evicted,
                unfinished.max_unfinished,
            )
            late = {"head": 0, "body": 0}
            unfinished.evicted = 0
            last_log = time.monotonic()
