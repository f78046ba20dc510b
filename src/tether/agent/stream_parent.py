"""The parent side of streaming: accept children, keep each child's metrics
in memory in a `Store` of its own (the same storage and query code as the
agent's own), and answer the local API for them at `/host/CHILD/api/v1/...`.

`tether.conf`:

    [stream]
        enabled = yes
        api keys = KEY1 KEY2          # any of them admits a child (else $TETHER_STREAM_API_KEYS)
        bind = 0.0.0.0:19998
        tls = yes                     # no: plain TCP, only on a trusted network
        ssl certificate = /path/cert.pem
        ssl key = /path/key.pem

Nothing from a child is trusted: the protocol bounds every frame
(`tether.protocol.stream`), this side bounds metrics per child, children, the
frame rate per connection (reading pauses: the child's ring absorbs it) and
failed handshakes per address (refused for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether.agent.storage import Store
from tether.agent.system import StartupError
from tether.node.config import AgentConfig
from tether.protocol import stream as sp
from tether.protocol.frames import ChildState

log = logging.getLogger("tether.agent")

DEFAULT_PORT = 19998
KEYS_ENV = "TETHER_STREAM_API_KEYS"  # used when [stream] api keys is empty
HELLO_TIMEOUT = 10.0
# A child sends samples every second; this long without a frame and it is gone.
IDLE_TIMEOUT = 60.0
READ_CHUNK = 64 * 1024
MAX_CHILDREN = 1_000
MAX_METRICS_PER_CHILD = 50_000
FRAMES_PER_SECOND = 2_000.0  # sustained, per connection
FRAME_BURST = 4_000.0
FAILED_HELLOS = 5  # per address within FAILURE_WINDOW, then refused
FAILURE_WINDOW = 60.0
# A child's clock may run this far ahead of the parent's.
FUTURE_SLACK = 60

Clock = Callable[[], float]


class TokenBucket:
    """`rate` per second, up to `burst` at once; `wait_for` says how long to
    pause before `n` more are allowed (0: now)."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()

    def take(self, n: float) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class ChildHost:
    """One child as the parent knows it; quacks like the agent for the API's
    chart and data endpoints (`store`, `hostname`, `update_every`, `os_info`)."""

    machine_guid: str
    hostname: str
    store: Store
    update_every: int
    os_info: dict[str, str] = field(default_factory=dict)
    agent_version: str = ""
    boot_id: str = ""
    boot_ids_seen: int = 1
    connected: bool = False
    connected_since: float = 0.0
    disconnected_at: float | None = None
    connections: int = 0
    peer: str = ""
    samples: int = 0
    replayed: int = 0
    last_error: str = ""
    # Another machine presenting the GUID of the child keyed `clone_of`.
    clone_of: str | None = None
    # chart id -> dimension ids in the order the child sends values.
    layout: dict[str, list[str]] = field(default_factory=dict)
    # The connection feeding this entry (a newer one replaces it).
    session: int = 0
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    @property
    def alert_count(self) -> int:
        return 0  # children's alerts are not streamed

    def newest_t(self) -> int:
        return max((c.last_t for c in self.store.charts.values()), default=0)

    def metrics(self) -> int:
        return self.store.dimension_count()

    def status(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "machine_guid": self.machine_guid,
            "boot_id": self.boot_id,
            "reachable": self.connected,
            "connected_since": self.connected_since if self.connected else None,
            "disconnected_at": self.disconnected_at,
            "connections": self.connections,
            "peer": self.peer,
            "agent_version": self.agent_version,
            "charts": len(self.store.charts),
            "metrics": self.metrics(),
            "samples": self.samples,
            "replayed": self.replayed,
            "last_entry": self.newest_t(),
            "last_error": self.last_error or None,
            "clone_of": self.clone_of,
        }

    def link_state(self, key: str) -> ChildState:
        """This child as the parent's link announces it to the Cloud."""
        os_text = f"{self.os_info.get('os_name', '')} {self.os_info.get('os_version', '')}"
        return ChildState(
            id=key[:401],
            machine_guid=self.machine_guid[:200],
            hostname=self.hostname[:255],
            state="live" if self.connected else "offline",
            boot_id=self.boot_id[:64],
            agent_version=self.agent_version[:64],
            os=os_text.strip()[:200],
            clone_of=(self.clone_of or "")[:401],
        )

    def info(self, parent_hostname: str) -> dict[str, Any]:
        return {
            "uid": self.machine_guid,
            "machine_guid": self.machine_guid,
            "hostname": self.hostname,
            "version": self.agent_version,
            "boot_id": self.boot_id,
            **self.os_info,
            "update_every": self.update_every,
            "history": self.store.size * self.update_every,
            "charts-count": len(self.store.charts),
            "metrics-count": self.metrics(),
            "streamed": True,
            "via": parent_hostname,
            "reachable": self.connected,
            "stream": self.status(),
        }


class StreamParent:
    def __init__(
        self,
        config: AgentConfig,
        hostname: Callable[[], str],
        history_seconds: int,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        # The environment serves containers, whose keys live in a Secret.
        raw = config.get("stream", "api keys", "") or os.environ.get(KEYS_ENV, "")
        self.keys = [k.encode() for k in raw.split()]
        if not self.keys:
            raise StartupError(
                "[stream] enabled = yes needs [stream] api keys = KEY ... in tether.conf "
                "(make one with: uuidgen); children send one of them as their [stream] api key"
            )
        self.bind = config.get("stream", "bind", f"0.0.0.0:{DEFAULT_PORT}")
        self.ssl = _server_ssl(config)
        self.hostname = hostname
        self.history_seconds = history_seconds
        self.clock, self.wall = clock, wall
        self.children: dict[str, ChildHost] = {}
        self._failures: dict[str, list[float]] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        # Set whenever a child connects or goes: the link (tether.agent.aclk)
        # waits on it to announce the children to the Cloud.
        self.changed = asyncio.Event()

    # -- the API's view ----------------------------------------------------

    def lookup(self, name: str) -> ChildHost | None:
        """A child by machine GUID, else by hostname (the live one first)."""
        if name in self.children:
            return self.children[name]
        named = [c for c in self.children.values() if c.hostname == name]
        named.sort(key=lambda c: (not c.connected, -c.connected_since))
        return named[0] if named else None

    def child_states(self) -> list[ChildState]:
        """Every child, as the link announces them (docs/protocol.md, children)."""
        return [c.link_state(key) for key, c in self.children.items()]

    def status(self) -> dict[str, Any]:
        return {
            "role": "parent",
            "bind": self.bind,
            "tls": self.ssl is not None,
            "children": [c.status() for c in self.children.values()],
        }

    # -- serving -------------------------------------------------------------

    async def start(self) -> None:
        host, _, port = self.bind.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            self._server = await asyncio.start_server(
                self._accept, host, int(port), ssl=self.ssl, limit=READ_CHUNK
            )
        except (OSError, ValueError) as exc:
            raise StartupError(
                f"[stream] bind = {self.bind}: cannot listen ({exc}); change it in tether.conf"
            ) from exc
        log.info(
            "stream: accepting children on %s (%s)",
            self.bind,
            "TLS" if self.ssl else "plain TCP, trusted network",
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        try:
            await self._serve(reader, writer, address)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): the connection task ends here, quietly
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    def _refuse(
        self,
        writer: asyncio.StreamWriter,
        conn: sp.StreamConnection,
        code: str,
        text: str,
        retry: float = 60.0,
    ) -> None:
        writer.write(conn.send(sp.Refused(code=code, text=text, retry_after_seconds=retry)))

    def _failed_recently(self, address: str) -> bool:
        now = self.clock()
        recent = [t for t in self._failures.get(address, []) if now - t < FAILURE_WINDOW]
        self._failures[address] = recent
        return len(recent) >= FAILED_HELLOS

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        conn = sp.StreamConnection(sp.Role.PARENT)
        hello = await self._read_hello(reader, conn, address)
        if hello is None:
            return
        if self._failed_recently(address):
            self._refuse(writer, conn, "rate_limited", "too many failed handshakes", FAILURE_WINDOW)
            await writer.drain()
            return
        if not self._key_ok(hello.api_key):
            self._failures.setdefault(address, []).append(self.clock())
            log.error(
                "stream: refused child %r (%s) from %s: wrong API key; it must send one of "
                "this parent's [stream] api keys",
                hello.hostname[:60],
                hello.machine_guid[:60],
                address,
            )
            self._refuse(
                writer,
                conn,
                "bad_api_key",
                "the API key is not one of the parent's [stream] api keys",
            )
            await writer.drain()
            return
        key = self._key_for(hello)
        child = self._admit(key, hello)
        if child is None:
            self._refuse(
                writer,
                conn,
                "too_many_children",
                f"this parent keeps at most {MAX_CHILDREN} children",
                300.0,
            )
            await writer.drain()
            return
        if child.connected and child.writer is not None:
            # The same machine again (a reboot, a new route) before its old
            # connection timed out: the newer connection wins.
            log.info(
                "stream: child %s (%s) reconnected; closing its older connection",
                child.hostname,
                child.machine_guid,
            )
            child.writer.close()
        child.session += 1
        session, child.writer = child.session, writer
        writer.write(conn.send(sp.Welcome(resume_after=child.newest_t())))
        await writer.drain()
        child.connected, child.connected_since, child.disconnected_at = True, self.wall(), None
        child.connections += 1
        child.peer = address
        child.last_error = ""
        self.changed.set()
        log.info(
            "stream: child %s (%s) connected from %s", child.hostname, child.machine_guid, address
        )
        reason = "closed the connection"
        try:
            reason = await self._receive(reader, conn, child)
        finally:
            # Replaced by a newer connection: that one owns the entry now.
            if child.session == session:
                child.connected, child.writer = False, None
                child.disconnected_at = self.wall()
                self.changed.set()
                log.info(
                    "stream: child %s (%s) is gone: %s", child.hostname, child.machine_guid, reason
                )

    async def _read_hello(
        self, reader: asyncio.StreamReader, conn: sp.StreamConnection, address: str
    ) -> sp.Hello | None:
        async with asyncio.timeout(HELLO_TIMEOUT):
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return None
                events = conn.receive_data(data)
                # A frame after Hello, before Welcome, is a fault too (it shows here).
                for ev in events:
                    if isinstance(ev, sp.StreamFault):
                        log.warning("stream: connection from %s refused: %s", address, ev.reason)
                        self._failures.setdefault(address, []).append(self.clock())
                        return None
                if events:
                    first = events[0]
                    assert isinstance(first, sp.FrameReceived)
                    return first.frame if isinstance(first.frame, sp.Hello) else None

    def _key_ok(self, given: str) -> bool:
        raw = given.encode()
        ok = False
        for key in self.keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(raw, key)
        return ok

    def _key_for(self, hello: sp.Hello) -> str:
        """The entry for this Hello: the machine GUID, except when a child
        with another hostname streams under that GUID right now (a cloned
        machine or image): then both are kept, the newcomer as `GUID~HOSTNAME`
        flagged `clone_of`, never one refused or both mixed in one store."""
        guid = hello.machine_guid
        first = self.children.get(guid)
        if first is None or not first.connected or first.hostname == hello.hostname:
            return guid
        log.warning(
            "stream: child %r streams with machine GUID %s, already used by %r: kept as a clone. "
            "To fix: on the clone, remove var/lib/tether/registry/tether.public.unique.id and "
            "restart it to give it its own identity",
            hello.hostname[:60],
            guid[:60],
            first.hostname,
        )
        return f"{guid}~{hello.hostname}"

    def _admit(self, key: str, hello: sp.Hello) -> ChildHost | None:
        """The child's entry: a restart (a new boot id) or a new address keeps
        it and its data."""
        child = self.children.get(key)
        os_info = {
            "os_name": hello.os_name,
            "os_id": hello.os_id,
            "os_version": hello.os_version,
            "kernel_name": hello.kernel_name,
            "kernel_version": hello.kernel_version,
            "architecture": hello.architecture,
        }
        if child is None:
            if len(self.children) >= MAX_CHILDREN:
                return None
            child = ChildHost(
                machine_guid=hello.machine_guid,
                hostname=hello.hostname,
                store=Store(self.history_seconds, hello.update_every),
                update_every=hello.update_every,
                boot_id=hello.boot_id,
                clone_of=hello.machine_guid if key != hello.machine_guid else None,
            )
            self.children[key] = child
        elif child.update_every != hello.update_every:
            # The ring is laid out by the step: start this child's store afresh.
            child.store = Store(self.history_seconds, hello.update_every)
            child.update_every = hello.update_every
            child.layout.clear()
        if hello.boot_id != child.boot_id:
            child.boot_ids_seen += 1
            child.boot_id = hello.boot_id
        child.hostname = hello.hostname
        child.agent_version = hello.agent_version
        child.os_info = os_info
        return child

    async def _receive(
        self, reader: asyncio.StreamReader, conn: sp.StreamConnection, child: ChildHost
    ) -> str:
        bucket = TokenBucket(FRAMES_PER_SECOND, FRAME_BURST, self.clock)
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                return f"nothing received for {IDLE_TIMEOUT:g} s"
            if not data:
                return "closed the connection"
            events = conn.receive_data(data)
            for ev in events:
                if isinstance(ev, sp.StreamFault):
                    child.last_error = ev.reason
                    return f"protocol fault: {ev.reason}"
                fault = self._apply(child, ev.frame)
                if fault:
                    child.last_error = fault
                    return fault
                if isinstance(ev.frame, sp.Goodbye):
                    return f"said goodbye ({ev.frame.reason[:60]})"
            # Over the rate: stop reading for a while; TCP pushes back to the
            # child, whose ring holds what it could not send yet.
            pause = bucket.take(len(events))
            if pause > 0:
                await asyncio.sleep(min(pause, 5.0))

    def _apply(self, child: ChildHost, frame: sp.Frame) -> str | None:
        """Store one frame; a reason when the child broke this parent's limits."""
        if isinstance(frame, sp.ChartDef):
            existing = child.store.charts.get(frame.id)
            new_dims = len(frame.dimensions) - (len(existing.dimensions) if existing else 0)
            if child.metrics() + max(0, new_dims) > MAX_METRICS_PER_CHILD:
                return f"more than {MAX_METRICS_PER_CHILD} metrics"
            chart = child.store.chart(
                frame.id,
                frame.title,
                frame.units,
                frame.family,
                (),
                context=frame.context or None,
                chart_type=frame.chart_type,
                priority=frame.priority,
            )
            for dim_id, name in frame.dimensions:
                if chart.dimension(dim_id) is None:
                    chart.add_dimension(dim_id, name or dim_id)
            child.layout[frame.id] = [d for d, _ in frame.dimensions]
        elif isinstance(frame, sp.Samples):
            t = frame.at
            if t % child.update_every:
                return f"sample time {t} is not a multiple of update every {child.update_every}"
            if t > self.wall() + FUTURE_SLACK:
                return f"sample time {t} is in the future (check the child's clock)"
            for chart_id, values in frame.values.items():
                chart = child.store.charts[chart_id]
                dims = child.layout[chart_id]
                chart.store(
                    t,
                    {d: (math.nan if v is None else v) for d, v in zip(dims, values, strict=False)},
                )
            if frame.replay:
                child.replayed += 1
            else:
                child.samples += 1
        return None


def _server_ssl(config: AgentConfig) -> ssl.SSLContext | None:
    if not config.get_bool("stream", "tls", True):
        return None
    cert = config.get("stream", "ssl certificate", "")
    key = config.get("stream", "ssl key", "")
    if not cert or not key:
        raise StartupError(
            "[stream] enabled = yes with TLS needs [stream] ssl certificate and ssl key "
            "(PEM files) in tether.conf; on a trusted network set [stream] tls = no instead"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"[stream] ssl certificate = {cert} / ssl key = {key}: cannot load ({exc})"
        ) from exc
    return ctx
