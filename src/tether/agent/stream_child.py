"""The child side of streaming: send this agent's metrics to a parent.

`tether.conf`:

    [stream]
        destination = PARENT:19998
        api key = KEY                 # one of the parent's keys (else $TETHER_STREAM_API_KEY)
        tls = yes                     # no: plain TCP, only on a trusted network
        ssl ca file = /path/ca.pem    # else the system CAs

The child's ring buffer is its send queue: a cursor (`sent_through`) says up
to which second the parent has everything. After a reconnect the parent says
what it holds (`Welcome.resume_after`) and the child replays the gap from its
ring; a parent that reads slowly makes `drain()` wait (TCP backpressure, with
a bounded write buffer) and the cursor falls behind, never a queue that grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
import time
from typing import TYPE_CHECKING, Any

from tether import __version__
from tether.agent import host
from tether.node.config import AgentConfig
from tether.protocol import stream as sp
from tether.protocol.backoff import Backoff

if TYPE_CHECKING:
    from tether.agent.runtime import Agent

log = logging.getLogger("tether.agent")

KEY_ENV = "TETHER_STREAM_API_KEY"  # used when [stream] api key is empty
CONNECT_TIMEOUT = 10.0
WELCOME_TIMEOUT = 10.0
# The write buffer above which drain() waits for the parent.
WRITE_HIGH_WATER = 256 * 1024
# Charts per Samples frame, so a large child stays under the frame limit.
CHARTS_PER_FRAME = 400
STABLE_SECONDS = 60.0  # a connection up this long resets the backoff
DRAIN_TIMEOUT = 60.0


class StreamConfigError(Exception):
    """[stream] cannot be used as written; the message says what to change."""


def _read_id(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()[:200]
    except OSError:
        return ""


def _split_destination(raw: str) -> tuple[str, int]:
    dest = raw.split()[0] if raw.split() else ""
    hostpart, sep, port = dest.rpartition(":")
    if not sep or not hostpart or not port.isdigit() or not 0 < int(port) < 65536:
        raise StreamConfigError(
            f"[stream] destination = {raw!r}: write it as HOST:PORT (e.g. parent.lan:19998)"
        )
    return hostpart.strip("[]"), int(port)


class StreamChild:
    def __init__(self, agent: Agent, config: AgentConfig) -> None:
        self.agent = agent
        self.destination = config.get("stream", "destination", "")
        self.host, self.port = _split_destination(self.destination)
        self.api_key = config.get("stream", "api key", "") or os.environ.get(KEY_ENV, "")
        if not self.api_key:
            raise StreamConfigError(
                "[stream] destination is set but [stream] api key is empty: set it to one of "
                "the parent's [stream] api keys"
            )
        self.ssl = _client_ssl(config)
        self.backoff = Backoff(1.0, 60.0)
        self.connected = False
        self.connected_since: float | None = None
        self.last_error = ""
        self.fix = ""
        self.sent_through = 0
        self.samples_sent = 0
        self.replayed = 0
        self.connections = 0
        self._collected = asyncio.Event()

    def on_collect(self, t: int) -> None:
        self._collected.set()

    def status(self) -> dict[str, Any]:
        return {
            "role": "child",
            "destination": self.destination,
            "tls": self.ssl is not None,
            "connected": self.connected,
            "connected_since": self.connected_since,
            "connections": self.connections,
            "sent_through": self.sent_through,
            "samples_sent": self.samples_sent,
            "replayed": self.replayed,
            "last_error": self.last_error or None,
            "fix": self.fix or None,
        }

    def hello(self) -> sp.Hello:
        a = self.agent
        os_info = a.os_info
        oldest = min((c.oldest_t for c in a.store.charts.values() if c.last_t), default=0)
        return sp.Hello(
            api_key=self.api_key,
            machine_guid=a.machine_guid,
            hostname=a.hostname[:200],
            boot_id=_read_id(host.path("/proc/sys/kernel/random/boot_id")),
            agent_version=__version__,
            os_name=_short(os_info, "os_name"),
            os_id=_short(os_info, "os_id"),
            os_version=_short(os_info, "os_version"),
            kernel_name=_short(os_info, "kernel_name"),
            kernel_version=_short(os_info, "kernel_version"),
            architecture=_short(os_info, "architecture"),
            update_every=a.update_every,
            oldest_t=oldest,
        )

    async def run(self) -> None:
        while True:
            hint: float | None = None
            began = time.monotonic()
            try:
                hint = await self._session()
            except asyncio.CancelledError:
                raise
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self._failed(f"{type(exc).__name__}: {exc}", "")
            finally:
                self.connected = False
            if time.monotonic() - began > STABLE_SECONDS:
                self.backoff.reset()
            delay = self.backoff.next_delay(hint)
            log.info("stream: reconnecting to %s in %.1f s", self.destination, delay)
            await asyncio.sleep(delay)

    def _failed(self, error: str, fix: str) -> None:
        if error != self.last_error:
            log.error(
                "stream: to parent %s: %s%s",
                self.destination,
                error,
                f". To fix: {fix}" if fix else "",
            )
        self.last_error, self.fix = error, fix

    async def _session(self) -> float | None:
        """One connection; returns the parent's retry floor when it refused."""
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
            )
        try:
            writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            conn = sp.StreamConnection(sp.Role.CHILD)
            writer.write(conn.send(self.hello()))
            await writer.drain()
            answer = await self._welcome(reader, conn)
            if isinstance(answer, sp.Refused):
                fix = (
                    "set [stream] api key to one of the parent's [stream] api keys"
                    if answer.code == "bad_api_key"
                    else ""
                )
                self._failed(f"refused by the parent: {answer.code}: {answer.text}", fix)
                return answer.retry_after_seconds
            if answer is None:
                self._failed(f"the parent broke the protocol: {conn.fault}", "")
                return None
            self.connected, self.connected_since = True, time.time()
            self.connections += 1
            self.last_error = self.fix = ""
            log.info(
                "stream: connected to parent %s (resume after %d)",
                self.destination,
                conn.resume_after,
            )
            watcher = asyncio.create_task(self._watch(reader, conn))
            sender = asyncio.create_task(self._send(writer, conn))
            done, pending = await asyncio.wait(
                {watcher, sender}, return_when=asyncio.FIRST_COMPLETED
            )
            for t in pending:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
            self._failed("the parent closed the connection", "")
            return None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _welcome(
        self, reader: asyncio.StreamReader, conn: sp.StreamConnection
    ) -> sp.Welcome | sp.Refused | None:
        async with asyncio.timeout(WELCOME_TIMEOUT):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("the parent closed the connection before Welcome")
                for ev in conn.receive_data(data):
                    if isinstance(ev, sp.StreamFault):
                        return None
                    if isinstance(ev.frame, sp.Welcome | sp.Refused):
                        return ev.frame
                    return None

    async def _watch(self, reader: asyncio.StreamReader, conn: sp.StreamConnection) -> None:
        """The parent only speaks to refuse or say goodbye; EOF ends the session."""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, sp.StreamFault):
                    self._failed(f"the parent broke the protocol: {ev.reason}", "")
                    return
                if isinstance(ev.frame, sp.Goodbye | sp.Refused):
                    return

    async def _send(self, writer: asyncio.StreamWriter, conn: sp.StreamConnection) -> None:
        store = self.agent.store
        step = self.agent.update_every
        defined: dict[str, int] = {}  # chart id -> dimensions sent
        self.sent_through = conn.resume_after
        replaying = True
        while True:
            self._collected.clear()
            newest = max((c.last_t for c in store.charts.values()), default=0)
            oldest = min((c.oldest_t for c in store.charts.values() if c.last_t), default=newest)
            start = max(self.sent_through + step, oldest - oldest % step)
            for t in range(start, newest + 1, step):
                charts = [
                    c for c in store.charts.values() if c.last_t and c.oldest_t <= t <= c.last_t
                ]
                for c in charts:
                    if defined.get(c.id) != len(c.dimensions):
                        writer.write(conn.send(_chart_def(c)))
                        defined[c.id] = len(c.dimensions)
                replay = replaying and t < newest
                for i in range(0, len(charts), CHARTS_PER_FRAME):
                    values = {
                        c.id: [_value(c.value_at(d, t)) for d in c.dimensions]
                        for c in charts[i : i + CHARTS_PER_FRAME]
                    }
                    writer.write(conn.send(sp.Samples(at=t, values=values, replay=replay)))
                # Backpressure: wait while the parent is slow; a parent that
                # reads nothing for this long is gone (a half-open connection).
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await writer.drain()
                self.sent_through = t
                if replay:
                    self.replayed += 1
                else:
                    self.samples_sent += 1
            replaying = False
            await self._collected.wait()


def _short(info: dict[str, str], key: str) -> str:
    return str(info.get(key, ""))[:200]


def _value(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else v


def _chart_def(c: Any) -> sp.ChartDef:
    return sp.ChartDef(
        id=c.id,
        title=c.title[:1000],
        units=c.units[:200],
        family=c.family[:200],
        context=c.context[:200],
        chart_type=c.chart_type if c.chart_type in ("line", "area", "stacked") else "line",
        priority=c.priority,
        dimensions=[(d.id, d.name[:200]) for d in c.dimensions],
    )


def _client_ssl(config: AgentConfig) -> ssl.SSLContext | None:
    if not config.get_bool("stream", "tls", True):
        return None
    ca = config.get("stream", "ssl ca file", "")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca:
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            raise StreamConfigError(
                f"[stream] ssl ca file = {ca}: cannot load ({exc}); point it at the PEM file of "
                "the CA that signed the parent's [stream] ssl certificate"
            ) from exc
    return ctx
