"""The `/aclk` endpoint: `wss://CLOUD/aclk`, the live-link table and each link's
receive loop.

One WebSocket per node, on the Cloud's own port. The agent presents a one-time
link token (from tether.cloud.node_auth) as `Authorization: Bearer`; a missing,
used or expired token is refused with HTTP 401 before the upgrade (the agent
authenticates again). Then the link speaks `tether.protocol.link`: Hello ->
HelloAck (session id, keepalive), queries and answers, node updates, alerts,
Goodbye. A second link for the same node replaces the first (closed with
4009); what each connect and close means for presence is
tether.cloud.link.presence. Keepalive is uvicorn's WebSocket ping every
`keepalive` seconds with a pong deadline of `keepalive/2`, so a dead link is
offline within 1.5 intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from tether.cloud import agent_labels, children
from tether.cloud import node_metadata as meta
from tether.cloud.batching import GroupCommit
from tether.cloud.client import client_address
from tether.cloud.db import Database
from tether.cloud.errors import error_response
from tether.cloud.limits import Clock, LogLimiter, address_key
from tether.cloud.link import admission, clones, presence, processes
from tether.cloud.link.admission import Admission, Pending
from tether.cloud.link.presence import ConnectRecord, DisconnectRecord
from tether.cloud.link_budget import LinkBudget, Verdict
from tether.cloud.models import Node
from tether.cloud.routing import NodeNotConnected, Router
from tether.cloud.secret_store import SecretStore
from tether.cloud.settings import CloudSettings
from tether.cloud.store import nodes as node_store
from tether.protocol import auth, states
from tether.protocol.frames import (
    CHILDREN_CAPABILITY,
    AlertTransition,
    ChildrenUpdate,
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
)

log = logging.getLogger("tether.cloud.link")

HELLO_TIMEOUT = 10.0
# Lines about one link (keyed by node, or address before auth): at most this
# many per interval, so one peer cannot fill the disk with log.
LOG_LINES_PER_KEY = 20
LOG_INTERVAL = 60.0


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
    planned_reason: str | None = None  # the Goodbye's reason: a planned stop
    recorded_offline: bool = False
    closed: bool = False
    announced_children: bool = False  # a parent: its children follow its link

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


def db_node_update(db: Database, node_id: str, upd: NodeUpdate) -> None:
    with db.session(write_lock=True) as s:
        node = s.get(Node, node_id, with_for_update=True, options=presence.NO_ROOMS)
        if node is None:
            return
        upd = meta.clean_update(upd)
        if upd.hostname:
            node.hostname = upd.hostname
        if upd.os is not None:
            node.os = upd.os or None
        if upd.agent_version is not None:
            node.agent_version = upd.agent_version or None
        agent_labels.apply(s, node, upd.labels)  # after `tether-cli reload-labels`


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


class Endpoint:
    """The live-link table of this Cloud process and its `/aclk` endpoint."""

    def __init__(
        self,
        settings: CloudSettings,
        db: Database,
        router: Router,
        secret_store: SecretStore,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.router = router
        self.keepalive = settings.keepalive_seconds
        self.process_id = router.process_id
        self.links: dict[str, LiveLink] = {}
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._restart_spread = 2.0
        # The connect rate and the handshakes in flight (admission.py).
        self.admission = Admission(clock)
        self.resumed = 0  # links set up with a resume token (no challenge)
        # Frame budgets per node (tether.cloud.link_budget): kept across its
        # reconnects, forgotten by the sweeper once idle.
        self.budgets: dict[str, LinkBudget] = {}
        self.log_limiter = LogLimiter(LOG_LINES_PER_KEY, LOG_INTERVAL, clock)
        self.secret_store = secret_store  # node_auth's challenges and link tokens
        self._connects = GroupCommit(db, presence.db_connect, key=lambda r: r.node_id)
        self._disconnects = GroupCommit(db, presence.db_disconnect, key=lambda r: r.node_id)
        # Alert rows are written in shared transactions off the receive loop: a
        # burst of hundreds (a host with many mounts) must not stall the link.
        self._alerts = GroupCommit(db, apply_alert, key=lambda r: r[0])
        self._alert_writes: set[asyncio.Task[None]] = set()

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

    async def _close_for_restart(self, link: LiveLink, resume_token: str = "") -> None:
        link.cause, link.cause_code = "Cloud restart", states.CAUSE_CLOUD_CLOSED
        if link.conn.state is LinkState.READY:
            # Uniform over the spread: the fleet returns at the rate the Cloud takes it,
            # From when the Cloud is likely back (admission.RESTART_FLOOR).
            low = admission.RESTART_FLOOR
            delay = round(random.uniform(low, low + self._restart_spread), 2)  # noqa: S311
            frame = Disconnect(
                code="cloud_restart",
                text="the Cloud is restarting",
                reconnect_after_seconds=delay,
                resume_token=resume_token,
                resume_expires_in=self.settings.resume_token_ttl_seconds if resume_token else 0.0,
            )
            with contextlib.suppress(Exception):
                await link.send(link.conn.send(frame))
        await link.close(
            CLOSE_SERVICE_RESTART, "Cloud restarting", "Cloud restart", states.CAUSE_CLOUD_CLOSED
        )

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
        address = client_address(ws)
        if self.closing:
            await ws.send_denial_response(
                error_response(
                    503, "ErrServiceUnavailable", "The Cloud is restarting.", {"Retry-After": "5"}
                )
            )
            return
        wait = self.admission.refusal()
        if wait is not None:  # saturated: more handshakes would only queue
            await ws.send_denial_response(
                error_response(
                    503,
                    "ErrServiceUnavailable",
                    f"The Cloud is taking many links at once; come back in {wait} s.",
                    {"Retry-After": str(wait)},
                )
            )
            return
        pending = self.admission.begin()  # until HelloAck, or the handshake fails
        try:
            await self._handshake(ws, address, pending)
        finally:
            pending.done()

    async def _authenticate(self, ws: WebSocket, address: str) -> tuple[str | None, bool]:
        """The node of this upgrade and whether it resumed: a one-time link
        token (Authorization: Bearer), else a resume token (Tether-Resume);
        (None, resumed) when refused, after answering 401."""
        token = auth.bearer_token(ws.headers.get("authorization"))
        resume = None if token else auth.parse_resume_header(ws.headers.get(auth.RESUME_HEADER))
        node_id: str | None = None
        if token:
            node_id = await self.secret_store.consume_link_token(token)
        elif resume is not None:
            claimed, resume_token = resume
            if await self.secret_store.consume_resume_token(claimed, resume_token):
                node_id = claimed
        if node_id is not None:
            return node_id, resume is not None
        what = (
            "resume token invalid, expired, already used or not this node's"
            if resume is not None
            else "link token "
            + ("missing" if token is None else "invalid, expired or already used")
        )
        self._log(
            logging.WARNING,
            "addr:" + address_key(address),
            "ACLK link from %s refused: %s",
            address,
            what,
        )
        if resume is not None:
            answer = error_response(
                401,
                "ErrResumeRefused",
                "The resume token is invalid, expired, already used or not this node's: "
                f"authenticate with the challenge ({auth.challenge_path('{claim_id}')}).",
            )
        else:
            answer = error_response(
                401,
                "ErrLinkTokenInvalid",
                "The link token is missing, expired or already used: authenticate again "
                f"({auth.challenge_path('{claim_id}')}).",
            )
        await ws.send_denial_response(answer)
        return None, resume is not None

    async def _handshake(self, ws: WebSocket, address: str, pending: Pending) -> None:
        node_id, resumed = await self._authenticate(ws, address)
        if node_id is None:
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
        grace = processes.grace_seconds(self.keepalive)
        # A link set up by the challenge revokes the node's earlier resume tokens.
        grant = (
            self.secret_store.resume_grant(node_id, revoke_others=not resumed)
            if auth.RESUME_CAPABILITY in hello.capabilities
            else None
        )
        # Another host's live link held here must answer, or it is replaced (clones).
        unresponsive = await clones.probe(self.links.get(node_id), hello)
        record = ConnectRecord(
            node_id,
            session_id,
            hello,
            address,
            self.process_id,
            grace,
            resume=grant,
            current_unresponsive=unresponsive,
        )
        try:
            connected = await self._connects.submit(record)
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
        if connected.conflict is not None:  # its identity is live on another host
            await clones.refuse(ws, node_id, connected.hostname, connected.conflict)
            return
        link = LiveLink(node_id, session_id, ws, conn, address, hello)
        ack = HelloAck(
            session_id=session_id,
            keepalive_seconds=self.keepalive,
            cloud_time=time.time(),
            resume_token=grant.token if grant else "",
            resume_expires_in=self.settings.resume_token_ttl_seconds if grant else 0.0,
            capabilities=[CHILDREN_CAPABILITY],
        )
        await link.send(conn.send(ack))
        pending.done()
        self.admission.note_linked()
        if resumed:
            self.resumed += 1
        old = self.links.get(node_id)
        self.links[node_id] = link
        try:
            await self.router.register(node_id, link.handler)
            if old is not None:
                await old.close(
                    CLOSE_REPLACED,
                    f"replaced by a newer connection from {address}",
                    f"replaced by a newer link from {address}",
                    states.CAUSE_REPLACED,
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
                "ACLK node %s (%s) live from %s, session %s, agent %s, by %s",
                node_id,
                meta.for_log(connected.hostname),
                address,
                session_id,
                meta.for_log(hello.agent_version),
                "resume token" if resumed else "challenge",
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
                    reason = message.get("reason") or ""
                    link.cause, link.cause_code = presence.close_cause(code, reason)
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
            states.CAUSE_CLOUD_CLOSED,
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
        elif isinstance(frame, ChildrenUpdate):
            link.announced_children = True
            record = children.ChildrenRecord(link.node_id, link.session_id, frame)
            try:
                await run_in_threadpool(children.db_children_update, self.db, record)
            except Exception:
                log.exception("ACLK node %s: could not record its children", link.node_id)
        elif isinstance(frame, Goodbye):
            back = meta.clean_seconds(frame.expected_back_seconds)
            link.cause = f"goodbye: agent {frame.reason}" + (
                f", expected back in {back:g} s" if back is not None else ""
            )
            link.cause_code = states.CAUSE_GOODBYE
            link.expected_back_seconds = back
            link.planned_reason = frame.reason
            self._log(
                logging.INFO,
                link.node_id,
                "ACLK node %s says goodbye: %s",
                link.node_id,
                link.cause,
            )
            await link.close(CLOSE_NORMAL, "goodbye", link.cause, states.CAUSE_GOODBYE)
            return True
        return False

    async def _closed(self, link: LiveLink) -> None:
        link.closed = True
        link.fail_waiting()
        if self.links.get(link.node_id) is link:
            del self.links[link.node_id]
        with contextlib.suppress(Exception):
            await self.router.unregister(link.node_id, link.handler)
        if link.recorded_offline:
            return  # a Cloud stop: recorded (and logged) in bulk by LinkService.stop
        cause = link.cause or "closed"
        code = link.cause_code or states.CAUSE_CLOSED
        self._log(
            logging.INFO,
            link.node_id,
            "ACLK node %s link from %s closed (session %s): %s",
            link.node_id,
            link.address,
            link.session_id,
            meta.for_log(cause, 300),
        )
        try:
            await self._disconnects.submit(
                DisconnectRecord(
                    link.node_id,
                    link.session_id,
                    cause,
                    code,
                    link.expected_back_seconds,
                    link.planned_reason,
                )
            )
        except Exception:
            log.exception("ACLK node %s: could not record the link closing", link.node_id)
        if link.announced_children:  # a parent gone: its children go too
            try:
                await run_in_threadpool(children.db_parent_offline, self.db, link.node_id)
            except Exception:
                log.exception("ACLK node %s: could not record its children offline", link.node_id)


def _budget_kind(link: LiveLink, frame: Frame) -> str | None:
    """The budget a frame is charged to (link_budget.BUDGETS); None for answers
    the Cloud is waiting for and for Goodbye."""
    if isinstance(frame, AlertTransition):
        return "alert"
    if isinstance(frame, NodeUpdate | ChildrenUpdate):  # a parent sends <= 1 a second
        return "node_update"
    if isinstance(frame, QueryResponse | ErrorFrame) and frame.id is not None:
        fut = link.waiting.get(frame.id)
        return None if fut is not None and not fut.done() else "stale_response"
    if isinstance(frame, ErrorFrame):
        return "error"
    return None


async def aclk(ws: WebSocket) -> None:
    service: Endpoint = ws.app.state.links
    await service.endpoint(ws)
