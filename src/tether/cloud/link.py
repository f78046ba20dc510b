"""The Cloud's end of the link: `wss://CLOUD/aclk`, the live-link table, presence.

One WebSocket per node, on the Cloud's own port. The agent presents a one-time
link token (from tether.cloud.node_auth) as `Authorization: Bearer`; a missing,
used or expired token is refused with HTTP 401 before the upgrade (the agent
authenticates again). Then the link speaks `tether.protocol.link`: Hello ->
HelloAck (session id, keepalive), queries and answers, node updates, alerts,
Goodbye.

Presence comes from this table, one session id per connection:

- `live` when Hello arrives (metadata refreshed from Hello on every connection);
- `offline` when the link closes, with its cause; only the close of the node's
  current session counts, so a late close of a replaced link changes nothing;
- a second link for the same node replaces the first (closed with 4009) and a
  `duplicate` event records both addresses and host fingerprints;
- keepalive is uvicorn's WebSocket ping every `keepalive` seconds with a pong
  deadline of `keepalive/2`, so a dead link is offline within 1.5 intervals.

A sweeper runs every keepalive interval: it beats this process's heartbeat,
marks offline the nodes of Cloud processes that stopped beating, and closes
local links whose node was removed (4003) or taken over by a link on another
process (4009).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, lazyload
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from tether.cloud import node_metadata as meta
from tether.cloud import retention
from tether.cloud.batching import GroupCommit
from tether.cloud.db import Database
from tether.cloud.errors import error_response
from tether.cloud.limits import Clock, LogLimiter, address_key
from tether.cloud.link_budget import LinkBudget, Verdict
from tether.cloud.models import CloudProcess, Node, utcnow
from tether.cloud.node_auth import (
    OneTimeSecrets,
    consume_link_token,
    purge_expired,
    seal_challenge,
)
from tether.cloud.outage import DATABASE_ERRORS
from tether.cloud.routing import NatsRouter, NodeNotConnected, PresenceEvent, Router
from tether.cloud.settings import CloudSettings
from tether.cloud.store import nodes as node_store
from tether.protocol import auth
from tether.protocol import states as presence
from tether.protocol.frames import (
    AlertTransition,
    Disconnect,
    ErrorFrame,
    Frame,
    Goodbye,
    Hello,
    HelloAck,
    NodeUpdate,
    QueryRequest,
    QueryResponse,
)
from tether.protocol.link import (
    CLOSE_NODE_REMOVED,
    CLOSE_NORMAL,
    CLOSE_OVER_BUDGET,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REPLACED,
    CLOSE_SERVICE_RESTART,
    CloseLink,
    FrameReceived,
    LinkConnection,
    LinkState,
    Role,
    describe_close,
)

log = logging.getLogger("tether.cloud.link")

HELLO_TIMEOUT = 10.0
# A presence event's state meaning "the node was removed": the process that
# holds its link closes it with 4003 at once (not at the next sweep).
STATE_REMOVED = "removed"
_CHUNK = 500  # ids per IN (...) query
# Presence never needs a node's rooms; skip their extra SELECT.
_NO_ROOMS = [lazyload(Node.rooms)]
# Lines about one link (keyed by node, or address before auth): at most this
# many per interval, so one peer cannot fill the disk with log.
LOG_LINES_PER_KEY = 20
LOG_INTERVAL = 60.0
PRUNE_EVERY = 10.0  # seconds between history prunes at most (tether.cloud.retention)


def peer_address(conn: Request | WebSocket) -> str:
    host = conn.client.host if conn.client else "unknown"
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _clip(text: str, n: int) -> str:
    return text[:n]


@dataclass
class LiveLink:
    """One connected node: its WebSocket, state machine and queries in flight."""

    node_id: str
    session_id: str
    ws: WebSocket
    conn: LinkConnection
    address: str
    hello: Hello
    connected_at: float = field(default_factory=time.time)
    waiting: dict[int, asyncio.Future[QueryResponse | ErrorFrame]] = field(default_factory=dict)
    # Set when the Cloud closes the link (replaced, removed, restart, protocol
    # error), or by the agent's Goodbye: the cause recorded when it goes offline.
    cause: str | None = None
    cause_code: str | None = None
    expected_back_seconds: float | None = None
    recorded_offline: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        # One bound method object, so the router can tell this link's handler
        # from a newer one (`is` on a fresh bound method would never match).
        self.handler = self.query

    async def send(self, data: bytes) -> bool:
        try:
            await self.ws.send_bytes(data)
        except Exception:  # closed under us: the receive loop sees the disconnect
            return False
        return True

    async def query(self, req: QueryRequest) -> QueryResponse:
        """The router's handler: send `req` down this link, return the answer."""
        if self.closed or self.conn.state is not LinkState.READY:
            raise NodeNotConnected(self.node_id)
        qid = self.conn.next_query_id()
        fut: asyncio.Future[QueryResponse | ErrorFrame] = asyncio.get_running_loop().create_future()
        self.waiting[qid] = fut
        try:
            frame = msgspec.structs.replace(req, id=qid)
            if not await self.send(self.conn.send(frame)):
                raise NodeNotConnected(self.node_id)
            answer = await fut
        finally:
            self.waiting.pop(qid, None)
            self.conn.cancel_query(qid)
        if isinstance(answer, ErrorFrame):
            return _error_answer(req.id, answer)
        return msgspec.structs.replace(answer, id=req.id)

    def fail_waiting(self) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(NodeNotConnected(self.node_id))
        self.waiting.clear()

    async def close(self, code: int, reason: str, cause: str, cause_code: str) -> None:
        if self.cause is None:
            self.cause, self.cause_code = cause, cause_code
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, _clip(reason, 123))


def _error_answer(query_id: int, err: ErrorFrame) -> QueryResponse:
    status = 504 if err.code == "timeout" else 502
    key = "ErrGatewayTimeout" if status == 504 else "ErrAgentError"
    body = json.dumps(
        {"errorMsgKey": key, "errorMessage": f"the agent answered {err.code}: {err.text}"}
    ).encode()
    return QueryResponse(id=query_id, status=status, body=body)


def _fingerprint(
    address: str | None, machine_id: str | None, boot_id: str | None
) -> dict[str, Any]:
    return {"address": address, "machine_id": machine_id or None, "boot_id": boot_id or None}


# -- database work (run in a thread) ----------------------------------------------


@dataclass
class Connected:
    hostname: str
    space_id: str
    duplicate: dict[str, Any] | None


@dataclass(frozen=True)
class ConnectRecord:
    """A link that sent its Hello, to be recorded live."""

    node_id: str
    session_id: str
    hello: Hello
    address: str
    process_id: str
    grace_seconds: float = 60.0


@dataclass(frozen=True)
class DisconnectRecord:
    """A closed link, to be recorded offline if it is still the node's session."""

    node_id: str
    session_id: str
    cause: str
    cause_code: str
    expected_back_seconds: float | None


def db_connect(s: Session, rec: ConnectRecord) -> Connected | None:
    """Mark the node live for this session, refresh its metadata from Hello and
    record a duplicate when another session was live (on a Cloud process that
    is still beating). None if the node is gone."""
    node_id, session_id, hello, address = rec.node_id, rec.session_id, rec.hello, rec.address
    node = s.get(Node, node_id, with_for_update=True, options=_NO_ROOMS)
    if node is None:
        return None
    duplicate = None
    now = utcnow()
    if (
        node.state == "live"
        and node.connected_session_id not in (None, session_id)
        and _process_alive(s, node.link_process, now, rec.grace_seconds)
    ):
        duplicate = {
            "previous": {
                "session_id": node.connected_session_id,
                **_fingerprint(node.last_address, node.machine_id, node.boot_id),
            },
            "current": {
                "session_id": session_id,
                **_fingerprint(address, hello.machine_id, hello.boot_id),
            },
            "same_host": bool(hello.machine_id)
            and hello.machine_id == node.machine_id
            and hello.boot_id == node.boot_id,
        }
        node.duplicate_detected_at = now
        node.duplicate_detail = json.dumps(duplicate)
        node_store.record_event(
            s,
            node,
            "duplicate",
            cause=f"a second link for this node from {address} replaced the one from "
            f"{node.last_address} (cloned machine or copied cloud.d?)",
            detail=duplicate,
        )
    # `hello` was sanitized on arrival (meta.clean_hello): stored as it is.
    node.hostname = hello.hostname or node.hostname
    node.os = hello.os or None
    node.agent_version = hello.agent_version or None
    node.machine_id = hello.machine_id or None
    node.boot_id = hello.boot_id or None
    if hello.machine_guid:
        node.machine_guid = hello.machine_guid
    node.link_process = rec.process_id
    cause = f"replaced: a new link from {address}" if duplicate else f"connected from {address}"
    node_store.set_state(
        s,
        node,
        "live",
        cause,
        session_id=session_id,
        address=address[:64],
        detail={
            "cause_code": presence.CAUSE_REPLACED if duplicate else presence.CAUSE_CONNECTED,
            "session_id": session_id,
            "address": address,
            "agent_version": hello.agent_version,
        },
    )
    return Connected(node.hostname, node.space_id, duplicate)


def _process_alive(
    s: Session, process_id: str | None, now: dt.datetime, grace_seconds: float
) -> bool:
    if process_id is None:
        return False
    beat = s.scalar(select(CloudProcess.heartbeat_at).where(CloudProcess.id == process_id))
    if beat is None:
        return False
    if beat.tzinfo is None:  # SQLite hands back naive UTC
        beat = beat.replace(tzinfo=dt.UTC)
    return beat >= now - dt.timedelta(seconds=grace_seconds)


def db_disconnect(s: Session, rec: DisconnectRecord) -> bool:
    """Mark the node offline if `rec.session_id` is still its live session."""
    node = s.get(Node, rec.node_id, with_for_update=True, options=_NO_ROOMS)
    if node is None:
        return False
    return _offline(s, node, rec.session_id, rec.cause, rec.cause_code, rec.expected_back_seconds)


def _offline(
    s: Session,
    node: Node,
    session_id: str | None,
    cause: str,
    cause_code: str,
    expected_back_seconds: float | None = None,
) -> bool:
    if node.state != "live" or (session_id is not None and node.connected_session_id != session_id):
        return False
    detail: dict[str, Any] = {"cause_code": cause_code, "session_id": node.connected_session_id}
    if expected_back_seconds is not None:
        detail["expected_back_seconds"] = expected_back_seconds
    node_store.set_state(s, node, "offline", cause, session_id=session_id, detail=detail)
    node.link_process = None
    return True


def db_mark_offline(
    db: Database, sessions: dict[str, str], cause: str, cause_code: str
) -> list[str]:
    """Bulk: take these (node id -> session) offline; the ids that changed."""
    changed: list[str] = []
    ids = list(sessions)
    for i in range(0, len(ids), _CHUNK):
        with db.session(write_lock=True) as s:
            rows = s.scalars(
                select(Node)
                .options(*_NO_ROOMS)
                .where(Node.id.in_(ids[i : i + _CHUNK]))
                .with_for_update()
            )
            for node in rows:
                if _offline(s, node, sessions[node.id], cause, cause_code):
                    changed.append(node.id)
    return changed


def db_node_update(db: Database, node_id: str, upd: NodeUpdate) -> None:
    with db.session(write_lock=True) as s:
        node = s.get(Node, node_id, with_for_update=True, options=_NO_ROOMS)
        if node is None:
            return
        upd = meta.clean_update(upd)
        if upd.hostname:
            node.hostname = upd.hostname
        if upd.os is not None:
            node.os = upd.os or None
        if upd.agent_version is not None:
            node.agent_version = upd.agent_version or None


def apply_alert(s: Session, item: tuple[str, AlertTransition]) -> None:
    """Record an alert's status change. Its value is a metric value: never stored."""
    node_id, alert = item
    node = s.get(Node, node_id)
    if node is None:
        return
    name = meta.clean(alert.name, meta.MAX_ALERT_NAME)
    chart = meta.clean(alert.chart, meta.MAX_ALERT_NAME)
    old = meta.clean(alert.old_status, meta.MAX_ALERT_STATUS)
    new = meta.clean(alert.new_status, meta.MAX_ALERT_STATUS)
    node_store.record_event(
        s,
        node,
        "alert",
        cause=f"{name} on {chart}: {old} -> {new}",
        detail={
            "name": name,
            "chart": chart,
            "old_status": old,
            "new_status": new,
            "at": meta.clean_time(alert.at),
        },
    )


def db_heartbeat(db: Database, process_id: str, description: str) -> None:
    now = utcnow()
    with db.session(write_lock=True) as s:
        row = s.get(CloudProcess, process_id)
        if row is None:
            s.add(
                CloudProcess(
                    id=process_id, started_at=now, heartbeat_at=now, description=description[:200]
                )
            )
        else:
            row.heartbeat_at = now


def db_reap_dead_processes(db: Database, grace_seconds: float) -> list[tuple[str, str]]:
    """Offline the live nodes whose Cloud process stopped beating; (node, session)."""
    cutoff = utcnow() - dt.timedelta(seconds=grace_seconds)
    changed: list[tuple[str, str]] = []
    with db.session(write_lock=True) as s:
        alive = select(CloudProcess.id).where(CloudProcess.heartbeat_at >= cutoff)
        rows = s.scalars(
            select(Node)
            .where(
                Node.state == "live",
                (Node.link_process.is_(None)) | (Node.link_process.not_in(alive)),
            )
            .with_for_update()
        )
        for node in rows:
            session = node.connected_session_id or ""
            if _offline(
                s, node, None, "link lost: its Cloud process stopped", presence.CAUSE_CLOUD_CLOSED
            ):
                changed.append((node.id, session))
        s.execute(delete(CloudProcess).where(CloudProcess.heartbeat_at < cutoff))
    return changed


def db_mark_all_offline(db: Database, cause: str) -> list[tuple[str, str]]:
    """Single-process start: no link survived the last process."""
    changed: list[tuple[str, str]] = []
    with db.session(write_lock=True) as s:
        for node in s.scalars(select(Node).where(Node.state == "live").with_for_update()):
            session = node.connected_session_id or ""
            if _offline(s, node, None, cause, presence.CAUSE_CLOUD_CLOSED):
                changed.append((node.id, session))
    return changed


def db_current_sessions(db: Database, node_ids: list[str]) -> dict[str, str | None]:
    """node id -> its connected session id, for the ids that still exist."""
    out: dict[str, str | None] = {}
    with db.session() as s:
        for i in range(0, len(node_ids), _CHUNK):
            rows = s.execute(
                select(Node.id, Node.connected_session_id).where(
                    Node.id.in_(node_ids[i : i + _CHUNK])
                )
            )
            out.update({nid: sid for nid, sid in rows})
    return out


def db_reassert_live(db: Database, node_id: str, session_id: str, process_id: str) -> bool:
    """Mark live again a node whose link is up but was recorded offline."""
    with db.session(write_lock=True) as s:
        node = s.get(Node, node_id, with_for_update=True, options=_NO_ROOMS)
        if node is None or node.connected_session_id is not None:
            return False
        node.link_process = process_id
        node_store.set_state(
            s,
            node,
            "live",
            "link still up",
            session_id=session_id,
            detail={"cause_code": presence.CAUSE_CONNECTED, "session_id": session_id},
        )
        return True


def db_forget_process(db: Database, process_id: str) -> None:
    with db.session(write_lock=True) as s:
        s.execute(update(Node).where(Node.link_process == process_id).values(link_process=None))
        s.execute(delete(CloudProcess).where(CloudProcess.id == process_id))


# -- the service -------------------------------------------------------------------


class LinkService:
    """The live-link table of this Cloud process, its endpoint and its sweeper."""

    def __init__(
        self, settings: CloudSettings, db: Database, router: Router, clock: Clock = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.router = router
        self.keepalive = settings.keepalive_seconds
        self.process_id = router.process_id if isinstance(router, NatsRouter) else uuid.uuid4().hex
        self.links: dict[str, LiveLink] = {}
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = False
        self._restart_spread = 2.0
        self._purged_at = time.monotonic()
        # Frame budgets per node (tether.cloud.link_budget): kept across its
        # reconnects, forgotten by the sweeper once idle.
        self.budgets: dict[str, LinkBudget] = {}
        self.log_limiter = LogLimiter(LOG_LINES_PER_KEY, LOG_INTERVAL, clock)
        self.retention = retention.Retention(
            settings.history_days, settings.node_events_per_node, settings.claim_audit_rows
        )
        self._pruned_at: float | None = None  # None: the first prune checks every node
        # One process keeps challenges and link tokens in memory; processes
        # sharing the database (NATS) keep them as rows (see node_auth).
        self.secrets: OneTimeSecrets | None = None if settings.nats_url else OneTimeSecrets()
        # Challenges of a single process: the node's key read in shared batches.
        self.seals = GroupCommit(db, seal_challenge, key=str, write=False)
        self._connects = GroupCommit(db, db_connect, key=lambda r: r.node_id)
        self._disconnects = GroupCommit(db, db_disconnect, key=lambda r: r.node_id)
        # Alert rows are written in shared transactions off the receive loop: a
        # burst of hundreds (a host with many mounts) must not stall the link.
        self._alerts = GroupCommit(db, apply_alert, key=lambda r: r[0])
        self._alert_writes: set[asyncio.Task[None]] = set()
        if isinstance(router, NatsRouter):
            router.subscribe_takeover(self._taken_over)
        router.subscribe_presence(self._on_presence)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        await self.router.start()
        description = f"{socket.gethostname()} pid {os.getpid()}"
        await run_in_threadpool(db_heartbeat, self.db, self.process_id, description)
        if self.settings.nats_url:
            changed = await run_in_threadpool(db_reap_dead_processes, self.db, self._grace())
        else:
            changed = await run_in_threadpool(db_mark_all_offline, self.db, "Cloud restarted")
        if changed:
            log.info(
                "%d node(s) whose links died with an earlier Cloud process are offline",
                len(changed),
            )
        for node_id, session in changed:
            await self._publish(
                node_id, "offline", session, presence.CAUSE_CLOUD_CLOSED, "Cloud restarted"
            )
        self._sweeper = asyncio.create_task(self._sweep_forever(description))

    def _grace(self) -> float:
        """A process that missed three heartbeats (one per sweep) is gone."""
        return max(10.0, 3 * self._sweep_interval() + 5)

    def _sweep_interval(self) -> float:
        return min(30.0, max(0.5, self.keepalive))

    async def stop(self) -> None:
        """Close every link (Disconnect with a jittered delay, then 1012), record
        the nodes offline in bulk, stop routing. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        links = list(self.links.values())
        # Spread the fleet's return: about 1 s per 500 links, 1 s at least.
        self._restart_spread = max(2.0, min(30.0, len(links) / 500))
        for link in links:
            link.recorded_offline = True  # done in bulk below
            await self._close_for_restart(link)
        sessions = {link.node_id: link.session_id for link in links}
        try:
            changed = await run_in_threadpool(
                db_mark_offline, self.db, sessions, "Cloud restart", presence.CAUSE_CLOUD_CLOSED
            )
            for node_id in changed:
                await self._publish(
                    node_id,
                    "offline",
                    sessions[node_id],
                    presence.CAUSE_CLOUD_CLOSED,
                    "Cloud restart",
                )
            if links:
                log.info("closed %d link(s) for the Cloud restart", len(links))
            await run_in_threadpool(db_forget_process, self.db, self.process_id)
        except Exception:
            log.exception("could not record the links closed at shutdown")
        # Let the link handlers finish (they skip the database now). Links that
        # were half-way through their handshake close themselves on seeing
        # `closing` (and record themselves offline).
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._alert_writes:
            await asyncio.wait(list(self._alert_writes), timeout=5)
        try:
            await self.router.close()
        except Exception:
            log.exception("could not close the router")

    def _write_alert(self, node_id: str, alert: AlertTransition) -> None:
        async def write() -> None:
            try:
                await self._alerts.submit((node_id, alert))
            except Exception as exc:
                self._log(
                    logging.WARNING,
                    node_id,
                    "could not record an alert of node %s: %s",
                    node_id,
                    exc,
                )

        task = asyncio.create_task(write())
        self._alert_writes.add(task)
        task.add_done_callback(self._alert_writes.discard)

    async def _close_for_restart(self, link: LiveLink) -> None:
        link.cause, link.cause_code = "Cloud restart", presence.CAUSE_CLOUD_CLOSED
        if link.conn.state is LinkState.READY:
            delay = round(random.uniform(1.0, self._restart_spread), 2)  # noqa: S311 - jitter
            frame = Disconnect(
                code="cloud_restart", text="the Cloud is restarting", reconnect_after_seconds=delay
            )
            with contextlib.suppress(Exception):
                await link.send(link.conn.send(frame))
        await link.close(
            CLOSE_SERVICE_RESTART, "Cloud restarting", "Cloud restart", presence.CAUSE_CLOUD_CLOSED
        )

    # -- sweeper ------------------------------------------------------------------

    async def _sweep_forever(self, description: str) -> None:
        interval = self._sweep_interval()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sweep(description)
            except asyncio.CancelledError:
                raise
            except DATABASE_ERRORS:
                pass  # the outage is logged once (tether.cloud.outage); the next sweep retries
            except Exception:
                log.exception("link sweep failed")

    async def _sweep(self, description: str) -> None:
        await run_in_threadpool(db_heartbeat, self.db, self.process_id, description)
        if time.monotonic() - self._purged_at > 60:
            self._purged_at = time.monotonic()
            await run_in_threadpool(purge_expired, self.db)
            if self.secrets is not None:
                self.secrets.purge()
        await self._prune_history()
        self._forget_idle_budgets()
        for node_id, session in await run_in_threadpool(
            db_reap_dead_processes, self.db, self._grace()
        ):
            await self._publish(
                node_id,
                "offline",
                session,
                presence.CAUSE_CLOUD_CLOSED,
                "link lost: its Cloud process stopped",
            )
        if not self.links:
            return
        # Links added while the query runs are not judged by it.
        snapshot = dict(self.links)
        current = await run_in_threadpool(db_current_sessions, self.db, list(snapshot))
        for node_id, link in snapshot.items():
            if self.links.get(node_id) is not link or link.closed:
                continue
            if node_id not in current:
                log.info("ACLK node %s was removed: closing its link", node_id)
                await link.close(
                    CLOSE_NODE_REMOVED,
                    "node removed from its Space",
                    "node removed",
                    presence.CAUSE_REMOVED,
                )
            elif current[node_id] is None:
                # Marked offline while its link is up here (this process was
                # slow to beat): the link table is the truth, so say so again.
                if await run_in_threadpool(
                    db_reassert_live, self.db, node_id, link.session_id, self.process_id
                ):
                    await self._publish(node_id, "live", link.session_id, "reasserted")
            elif current[node_id] != link.session_id:
                await self._close_replaced(node_id, link)

    async def _prune_history(self) -> None:
        """Bound node_events and claim_audit (tether.cloud.retention)."""
        now = self.clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        every_node = self._pruned_at is None
        self._pruned_at = now
        pruned = await run_in_threadpool(retention.prune, self.db, self.retention, None, every_node)
        if pruned.node_events or pruned.claim_audit:
            log.info(
                "history pruned: %d node event(s), %d claim audit row(s)",
                pruned.node_events,
                pruned.claim_audit,
            )

    def _forget_idle_budgets(self) -> None:
        for node_id, budget in list(self.budgets.items()):
            if node_id not in self.links and budget.forgettable():
                del self.budgets[node_id]

    def over_budget_refusal(self, node_id: str) -> tuple[int, JSONResponse] | None:
        """For a node closed over budget that may not link yet: the seconds to
        wait and the 429 to answer (at the challenge and at the upgrade)."""
        budget = self.budgets.get(node_id)
        wait = budget.retry_after() if budget is not None else 0
        if not wait:
            return None
        return wait, error_response(
            429,
            "ErrOverBudget",
            "This node's link was closed because it sent more frames than the Cloud "
            f"accepts (see docs/protocol.md, budgets); reconnect after {wait} s.",
            {"Retry-After": str(wait)},
        )

    def _budget(self, node_id: str) -> LinkBudget:
        budget = self.budgets.get(node_id)
        if budget is None:
            budget = self.budgets[node_id] = LinkBudget(self.clock)
        return budget

    def _log(self, level: int, key: str, msg: str, *args: object) -> None:
        """A line about one link, keyed by its node (or address before the
        token check): at most LOG_LINES_PER_KEY per LOG_INTERVAL; the next line
        after a quiet spell says how many were left out. Peer-supplied text in
        `args` must go through meta.for_log."""
        allowed, suppressed = self.log_limiter.allow(key)
        if not allowed:
            return
        if suppressed:
            msg += " (%d similar lines suppressed)"
            args = (*args, suppressed)
        log.log(level, msg, *args)

    async def _taken_over(self, node_id: str) -> None:
        """Another process announced a link for a node linked here: the
        database says which session is current; close this one if it is not."""
        link = self.links.get(node_id)
        if link is None:
            return
        current = await run_in_threadpool(db_current_sessions, self.db, [node_id])
        if current.get(node_id) not in (None, link.session_id) and not link.closed:
            await self._close_replaced(node_id, link)

    async def _close_replaced(self, node_id: str, link: LiveLink) -> None:
        log.warning(
            "ACLK node %s: a newer link on another Cloud process took over; closing this one",
            node_id,
        )
        await link.close(
            CLOSE_REPLACED,
            "replaced by a newer connection",
            "replaced by a newer link",
            presence.CAUSE_REPLACED,
        )

    # -- node removal -------------------------------------------------------------

    async def close_node(self, node_id: str) -> None:
        """The node was removed (its row is gone): close its live link now with
        4003, here or, through the router, on whichever process holds it."""
        await self._close_removed(node_id)
        await self._publish(node_id, STATE_REMOVED, "", presence.CAUSE_REMOVED, "removed")

    async def _close_removed(self, node_id: str) -> None:
        if self.secrets is not None:
            self.secrets.forget_node(node_id)
        link = self.links.get(node_id)
        if link is None or link.closed:
            return
        log.info("ACLK node %s was removed: closing its link", node_id)
        await link.close(
            CLOSE_NODE_REMOVED,
            "node removed from its Space",
            "node removed",
            presence.CAUSE_REMOVED,
        )

    async def _on_presence(self, event: PresenceEvent) -> None:
        if event.state == STATE_REMOVED:
            await self._close_removed(event.node_id)

    # -- presence -----------------------------------------------------------------

    async def _publish(
        self,
        node_id: str,
        state: str,
        session_id: str,
        cause: str,
        detail: str = "",
        expected_back_seconds: float | None = None,
    ) -> None:
        event = PresenceEvent(
            node_id=node_id,
            state=state,
            session_id=session_id,
            at=time.time(),
            cause=cause,
            detail=detail,
            expected_back_seconds=expected_back_seconds,
        )
        try:
            await self.router.publish_presence(event)
        except Exception as exc:
            log.warning("could not publish the presence of node %s: %s", node_id, exc)

    # -- the endpoint ---------------------------------------------------------------

    async def endpoint(self, ws: WebSocket) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(ws)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, ws: WebSocket) -> None:
        address = peer_address(ws)
        if self.closing:
            await ws.send_denial_response(
                error_response(
                    503, "ErrServiceUnavailable", "The Cloud is restarting.", {"Retry-After": "5"}
                )
            )
            return
        token = auth.bearer_token(ws.headers.get("authorization"))
        node_id: str | None = None
        if token and self.secrets is not None:
            node_id = self.secrets.consume_token(token)
        elif token:
            node_id = await run_in_threadpool(consume_link_token, self.db, token)
        if node_id is None:
            self._log(
                logging.WARNING,
                "addr:" + address_key(address),
                "ACLK link from %s refused: link token %s",
                address,
                "missing" if token is None else "invalid, expired or already used",
            )
            await ws.send_denial_response(
                error_response(
                    401,
                    "ErrLinkTokenInvalid",
                    "The link token is missing, expired or already used: authenticate again "
                    f"({auth.challenge_path('{claim_id}')}).",
                )
            )
            return
        refusal = self.over_budget_refusal(node_id)
        if refusal is not None:
            wait, answer = refusal
            self._log(
                logging.WARNING,
                node_id,
                "ACLK node %s from %s refused: closed over budget, may link again in %d s",
                node_id,
                address,
                wait,
            )
            await ws.send_denial_response(answer)
            return
        await ws.accept()
        conn = LinkConnection(Role.CLOUD)
        hello = await self._await_hello(ws, conn, node_id, address)
        if hello is None:
            return
        session_id = uuid.uuid4().hex
        try:
            connected = await self._connects.submit(
                ConnectRecord(node_id, session_id, hello, address, self.process_id, self._grace())
            )
        except Exception:
            log.exception("ACLK node %s: could not record the connection", node_id)
            await ws.close(1011, "the Cloud could not record the connection; retry later")
            return
        if connected is None:
            self._log(
                logging.WARNING,
                node_id,
                "ACLK node %s from %s: node removed; closing with 4003",
                node_id,
                address,
            )
            await ws.close(CLOSE_NODE_REMOVED, "node removed from its Space")
            return
        link = LiveLink(node_id, session_id, ws, conn, address, hello)
        ack = HelloAck(
            session_id=session_id, keepalive_seconds=self.keepalive, cloud_time=time.time()
        )
        await link.send(conn.send(ack))
        old = self.links.get(node_id)
        self.links[node_id] = link
        try:
            await self.router.register(node_id, link.handler)
            if old is not None:
                await old.close(
                    CLOSE_REPLACED,
                    f"replaced by a newer connection from {address}",
                    f"replaced by a newer link from {address}",
                    presence.CAUSE_REPLACED,
                )
            if connected.duplicate:
                prev = connected.duplicate["previous"]
                self._log(
                    logging.WARNING,
                    node_id,
                    "ACLK node %s: DUPLICATE identity: a link from %s (machine-id %s, boot id %s) "
                    "replaced the live one from %s (machine-id %s, boot id %s)",
                    node_id,
                    address,
                    meta.for_log(hello.machine_id or "?"),
                    meta.for_log(hello.boot_id or "?"),
                    prev["address"],
                    meta.for_log(prev["machine_id"] or "?"),
                    meta.for_log(prev["boot_id"] or "?"),
                )
            self._log(
                logging.INFO,
                node_id,
                "ACLK node %s (%s) live from %s, session %s, agent %s",
                node_id,
                meta.for_log(connected.hostname),
                address,
                session_id,
                meta.for_log(hello.agent_version),
            )
            await self._publish(
                node_id,
                "live",
                session_id,
                presence.CAUSE_REPLACED if old or connected.duplicate else presence.CAUSE_CONNECTED,
                f"connected from {address}",
            )
            if self.closing:  # the Cloud began stopping while this link was connecting
                await self._close_for_restart(link)
            else:
                await self._receive_loop(link)
        finally:
            await self._closed(link)

    async def _await_hello(
        self, ws: WebSocket, conn: LinkConnection, node_id: str, address: str
    ) -> Hello | None:
        try:
            message = await asyncio.wait_for(ws.receive(), HELLO_TIMEOUT)
        except TimeoutError:
            self._log(
                logging.WARNING,
                node_id,
                "ACLK node %s from %s sent no Hello within %g s",
                node_id,
                address,
                HELLO_TIMEOUT,
            )
            await ws.close(CLOSE_PROTOCOL_ERROR, f"no Hello within {HELLO_TIMEOUT:g} s")
            return None
        data = await self._message_bytes(ws, message, node_id, address)
        if data is None:
            return None
        for event in conn.receive_data(data):
            if isinstance(event, CloseLink):
                self._log(
                    logging.WARNING,
                    node_id,
                    "ACLK node %s from %s: %s; closing",
                    node_id,
                    address,
                    meta.for_log(event.reason),
                )
                await ws.close(event.code, event.reason)
                return None
        if conn.hello is None or conn.state is not LinkState.HELLO_RECEIVED:
            await ws.close(CLOSE_PROTOCOL_ERROR, "the first frame must be Hello")
            return None
        # Sanitized, never refused: a node is not kept offline by its metadata.
        return meta.clean_hello(conn.hello)

    async def _message_bytes(
        self, ws: WebSocket, message: Mapping[str, Any], node_id: str, address: str
    ) -> bytes | None:
        """The bytes of a received message; None (link closed) otherwise."""
        if message["type"] != "websocket.receive":
            return None
        data = message.get("bytes")
        if data is None:
            self._log(
                logging.WARNING,
                node_id,
                "ACLK node %s from %s sent a text message; closing",
                node_id,
                address,
            )
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_PROTOCOL_ERROR, "text messages are not part of the protocol")
            return None
        return bytes(data)

    async def _receive_loop(self, link: LiveLink) -> None:
        ws, conn = link.ws, link.conn
        budget = self._budget(link.node_id)
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                code = int(message.get("code") or 1005)
                if link.cause is None:
                    link.cause, link.cause_code = _close_cause(code, message.get("reason") or "")
                return
            data = await self._message_bytes(ws, message, link.node_id, link.address)
            if data is None:
                await link.close(
                    CLOSE_PROTOCOL_ERROR,
                    "text message",
                    "protocol error: a text message",
                    "protocol_error",
                )
                return
            stale = conn.stale_responses
            events = conn.receive_data(data)
            if conn.stale_responses != stale:  # an answer to no query in flight
                if await self._charge(link, budget, "stale_response", len(data)) is Verdict.CLOSE:
                    return
                continue
            for event in events:
                if isinstance(event, CloseLink):
                    self._log(
                        logging.WARNING,
                        link.node_id,
                        "ACLK node %s from %s: %s; closing with %d",
                        link.node_id,
                        link.address,
                        meta.for_log(event.reason),
                        event.code,
                    )
                    await link.close(
                        event.code,
                        event.reason,
                        f"protocol error: {event.reason}",
                        "protocol_error",
                    )
                    return
                assert isinstance(event, FrameReceived)
                kind = _budget_kind(link, event.frame)
                if kind is not None:
                    verdict = await self._charge(link, budget, kind, len(data))
                    if verdict is Verdict.CLOSE:
                        return
                    if verdict is Verdict.DROP:
                        continue
                if await self._on_frame(link, event):
                    return

    async def _charge(self, link: LiveLink, budget: LinkBudget, kind: str, size: int) -> Verdict:
        """Charge one frame of `kind` to the node's budget. Over it, the frame is
        dropped (counted); over it for too long, the link is closed with 4008
        after a Disconnect saying when to come back."""
        verdict = budget.admit(kind, size)
        if verdict is Verdict.OK:
            return verdict
        if verdict is Verdict.DROP:
            if budget.dropped[kind] == 1:
                self._log(
                    logging.WARNING,
                    link.node_id,
                    "ACLK node %s from %s is over its %s budget: dropping its %s frames",
                    link.node_id,
                    link.address,
                    kind,
                    kind,
                )
            await asyncio.sleep(0)  # let the other links' frames through first
            return verdict
        back = budget.punish()
        dropped = budget.take_dropped()
        summary = ", ".join(f"{k} {n}" for k, n in sorted(dropped.items()))
        self._log(
            logging.WARNING,
            link.node_id,
            "ACLK node %s from %s stayed over budget (dropped %s): closing with %d; "
            "refusing its link for %g s",
            link.node_id,
            link.address,
            summary,
            CLOSE_OVER_BUDGET,
            back,
        )
        frame = Disconnect(
            code="over_budget",
            text=f"too many frames (dropped {summary}); see the budgets in docs/protocol.md",
            reconnect_after_seconds=back,
        )
        with contextlib.suppress(Exception):
            await link.send(link.conn.send(frame))
        await link.close(
            CLOSE_OVER_BUDGET,
            "over budget",
            f"closed over budget: dropped {summary}; may reconnect after {back:g} s",
            presence.CAUSE_CLOUD_CLOSED,
        )
        return verdict

    async def _on_frame(self, link: LiveLink, event: FrameReceived) -> bool:
        """Handle one frame; True when the link is done."""
        frame = event.frame
        if isinstance(frame, QueryResponse | ErrorFrame) and frame.id is not None:
            fut = link.waiting.get(frame.id)
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif isinstance(frame, ErrorFrame):
            self._log(
                logging.WARNING,
                link.node_id + "/reports",  # its own key: reports cannot crowd out the rest
                "ACLK node %s reported an error: %s %s",
                link.node_id,
                meta.for_log(frame.code, 40),
                meta.for_log(frame.text, 200),
            )
        elif isinstance(frame, NodeUpdate):
            await run_in_threadpool(db_node_update, self.db, link.node_id, frame)
        elif isinstance(frame, AlertTransition):
            self._write_alert(link.node_id, frame)
        elif isinstance(frame, Goodbye):
            back = meta.clean_seconds(frame.expected_back_seconds)
            link.cause = f"goodbye: agent {frame.reason}" + (
                f", expected back in {back:g} s" if back is not None else ""
            )
            link.cause_code = presence.CAUSE_GOODBYE
            link.expected_back_seconds = back
            self._log(
                logging.INFO,
                link.node_id,
                "ACLK node %s says goodbye: %s",
                link.node_id,
                link.cause,
            )
            await link.close(CLOSE_NORMAL, "goodbye", link.cause, presence.CAUSE_GOODBYE)
            return True
        return False

    async def _closed(self, link: LiveLink) -> None:
        link.closed = True
        link.fail_waiting()
        if self.links.get(link.node_id) is link:
            del self.links[link.node_id]
        with contextlib.suppress(Exception):
            await self.router.unregister(link.node_id, link.handler)
        cause = link.cause or "closed"
        code = link.cause_code or presence.CAUSE_CLOSED
        self._log(
            logging.INFO,
            link.node_id,
            "ACLK node %s link from %s closed (session %s): %s",
            link.node_id,
            link.address,
            link.session_id,
            meta.for_log(cause, 300),
        )
        if link.recorded_offline:
            return
        try:
            applied = await self._disconnects.submit(
                DisconnectRecord(
                    link.node_id, link.session_id, cause, code, link.expected_back_seconds
                )
            )
        except Exception:
            log.exception("ACLK node %s: could not record the link closing", link.node_id)
            return
        if applied:
            await self._publish(
                link.node_id, "offline", link.session_id, code, cause, link.expected_back_seconds
            )

    # -- admin commands -------------------------------------------------------------

    async def disconnect(self, node_id: str, delay: float | None, text: str) -> bool:
        """Ask a locally linked node to disconnect and come back after `delay`."""
        link = self.links.get(node_id)
        if link is None or link.conn.state is not LinkState.READY:
            return False
        frame = Disconnect(code="admin", text=text, reconnect_after_seconds=delay)
        await link.send(link.conn.send(frame))
        await link.close(
            CLOSE_NORMAL,
            "disconnect requested",
            f"disconnected: {text}",
            presence.CAUSE_CLOUD_CLOSED,
        )
        return True


def _budget_kind(link: LiveLink, frame: Frame) -> str | None:
    """The budget a frame is charged to (link_budget.BUDGETS); None for answers
    the Cloud is waiting for and for Goodbye."""
    if isinstance(frame, AlertTransition):
        return "alert"
    if isinstance(frame, NodeUpdate):
        return "node_update"
    if isinstance(frame, QueryResponse | ErrorFrame) and frame.id is not None:
        fut = link.waiting.get(frame.id)
        return None if fut is not None and not fut.done() else "stale_response"
    if isinstance(frame, ErrorFrame):
        return "error"
    return None


def _close_cause(code: int, reason: str) -> tuple[str, str]:
    if code in (1005, 1006):
        return (
            "link lost (no close frame: agent killed, network or proxy cut, or keepalive timeout)",
            presence.CAUSE_KEEPALIVE,
        )
    if code == 1009:
        return "closed: the agent sent a frame over the size limit (1009)", presence.CAUSE_CLOSED
    text = f"closed by the agent: {describe_close(code)} ({code})"
    reason = meta.clean(reason, 120)  # the agent's words, stored and shown
    if reason:
        text += f": {reason}"
    return text, presence.CAUSE_CLOSED


# -- routes ------------------------------------------------------------------------


async def aclk(ws: WebSocket) -> None:
    service: LinkService = ws.app.state.links
    await service.endpoint(ws)


async def disconnect_node(request: Request) -> Response:
    """Ask a node to disconnect and reconnect after a delay (manager or admin)."""
    from tether.cloud.auth import require_user
    from tether.cloud.body import read_json
    from tether.cloud.store import spaces as space_store

    user = await require_user(request)
    space_id = str(request.path_params["space_id"]).lower()
    node_id = str(request.path_params["node_id"]).lower()
    try:
        body = await read_json(request, optional=True)  # 400 if not JSON or too deep
        delay = body.get("reconnect_after_seconds") if isinstance(body, dict) else None
        if delay is not None and not (isinstance(delay, int | float) and 0 <= delay <= 86400):
            raise ValueError
    except ValueError:
        return error_response(
            400, "ErrBadRequest", 'Send JSON {"reconnect_after_seconds": 0..86400} or no body.'
        )

    def check() -> str | None:
        with request.app.state.db.session() as s:
            role = space_store.role_of(s, space_id, user.user_id)
            if role is None or node_store.in_space(s, space_id, node_id) is None:
                return "missing"
            return None if space_store.at_least(role, "manager") else role

    problem = await run_in_threadpool(check)
    if problem == "missing":
        return error_response(
            404, "ErrNotFound", "Node not found, or you are not a member of its Space."
        )
    if problem is not None:
        return error_response(
            403, "ErrForbidden", f"This needs the manager role in the Space; you are {problem}."
        )
    service: LinkService = request.app.state.links
    done = await service.disconnect(node_id, delay, f"requested by {user.email}")
    if not done:
        return error_response(
            409, "ErrNodeNotLinkedHere", "The node has no live link on this Cloud process."
        )
    return JSONResponse({"disconnected": True, "reconnect_after_seconds": delay})


def routes() -> list[BaseRoute]:
    return [
        WebSocketRoute(auth.LINK_PATH, aclk),
        Route(
            "/api/v1/spaces/{space_id}/nodes/{node_id}/disconnect",
            disconnect_node,
            methods=["POST"],
        ),
    ]
