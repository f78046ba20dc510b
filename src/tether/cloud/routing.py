"""Routing relay queries to whichever Cloud process holds a node's link.

The relay needs one thing: "send this query to node N, give me the answer".
The link endpoint that holds N's WebSocket registers a handler for N; the relay
calls `request()`. Two implementations behind one small interface:

- `InMemoryRouter` (the default): one Cloud process, a dictionary.
- `NatsRouter` (`--nats-url`): several Cloud processes sharing NATS. Each
  process keeps a constant number of subscriptions whatever its link count
  (one wildcard subscription per process is far cheaper than one per node):

    {prefix}.proc.{process_id}.{node_id}   queries for nodes this process holds
    {prefix}.locate.{node_id}              "who holds N?" (only the holder answers)
    {prefix}.owner                         ownership claims/releases, broadcast
    {prefix}.ctl.{process_id}              commands for a link this process holds
                                           (close a removed node, disconnect)
    {prefix}.access                        "who may do what changed" (a token
                                           revoked, a role changed), broadcast so
                                           every process drops its cached checks

  Each process caches node -> owning process from the ownership broadcasts,
  and locates a node it knows no owner for. Absence is never cached: a missed
  broadcast (a NATS outage) must not make a live node unreachable. After a
  reconnect each process forgets what it cached and re-announces its links.
  Messages are msgspec-encoded frames, as on the link itself.

Both deliver to the links this process holds through `LocalHandlers`. Callers
use `Router` only: `process_id` names this process (recorded on the nodes it
holds), `control` carries a command to whichever process holds the node's link
(only that one hears it: presence itself lives in the database, not on the
bus), and `subscribe_takeover` hears of another process taking a node over
(which, with one process, never happens).

Handlers own their link's correlation ids: they may re-number a request for
their link but must return the answer for the request they were given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from tether.protocol.frames import ErrorFrame, QueryRequest, QueryResponse

log = logging.getLogger("tether.cloud.routing")

Handler = Callable[[QueryRequest], Awaitable[QueryResponse]]


class ControlCommand(msgspec.Struct, kw_only=True, frozen=True):
    """A command for the link of one node, carried to the process holding it.

    REMOVE: the node was deleted, close its link with 4003.
    DISCONNECT: an admin asks it to go and come back after `delay`.
    """

    node_id: str
    action: str
    delay: float | None = None
    text: str = ""


REMOVE = "remove"
DISCONNECT = "disconnect"

# Answers whether this process held the node's link and acted on it.
ControlHandler = Callable[[ControlCommand], Awaitable[bool]]


class RoutingError(Exception):
    pass


class NodeNotConnected(RoutingError):
    """No Cloud process holds a live link to the node."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id} is not connected to the Cloud")
        self.node_id = node_id


class RelayTimeout(RoutingError):
    """The node did not answer in time."""

    def __init__(self, node_id: str, timeout: float) -> None:
        super().__init__(f"node {node_id} did not answer within {timeout:g} s")
        self.node_id = node_id
        self.timeout = timeout


TakeoverCallback = Callable[[str], Awaitable[None]]
AccessCallback = Callable[[], Awaitable[None]]


class Router(Protocol):
    """What the link and the relay need, whichever implementation it is."""

    @property
    def process_id(self) -> str:
        """This Cloud process's id (letters, digits, '-', '_'), as recorded on
        the nodes whose links it holds."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def connected(self) -> bool:
        """Whether other processes can be reached now (always, with one)."""

    async def register(self, node_id: str, handler: Handler) -> None:
        """This process now holds node_id's link; replaces any earlier handler."""

    async def unregister(self, node_id: str, handler: Handler) -> None:
        """The link behind `handler` closed; a newer handler for node_id stays."""

    def is_local(self, node_id: str) -> bool: ...

    async def request(self, node_id: str, req: QueryRequest, timeout: float) -> QueryResponse:  # noqa: ASYNC109
        """The node's answer, or NodeNotConnected / RelayTimeout."""

    async def control(self, command: ControlCommand) -> bool:
        """Run `command` on the process holding the node's link; whether one
        held it (False when no process does)."""

    def set_control_handler(self, handler: ControlHandler) -> None:
        """The link layer's handler for commands about links held here."""

    def subscribe_takeover(self, callback: TakeoverCallback) -> None:
        """Call `callback(node_id)` when another process announces it holds a
        node this process also holds a link for (never, with one process)."""

    async def announce_access_change(self) -> None:
        """Tell the other processes that credentials or roles changed here."""

    def subscribe_access_change(self, callback: AccessCallback) -> None:
        """Call `callback()` when another process announces such a change."""


def make_router(nats_url: str | None, subject_prefix: str = "tether") -> Router:
    if nats_url:
        return NatsRouter(nats_url, subject_prefix=subject_prefix)
    return InMemoryRouter()


async def _call_handler(
    node_id: str,
    handler: Handler,
    req: QueryRequest,
    timeout: float,  # noqa: ASYNC109 - also sent to the agent as timeout_ms
) -> QueryResponse:
    req = msgspec.structs.replace(req, timeout_ms=max(1, int(timeout * 1000)))
    try:
        return await asyncio.wait_for(handler(req), timeout)
    except TimeoutError:
        raise RelayTimeout(node_id, timeout) from None


async def _no_control(command: ControlCommand) -> bool:
    return False  # no link layer attached: nothing is held here


class LocalHandlers:
    """The links this process holds: node id -> handler. Both routers deliver
    to their own links through one of these."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, node_id: str, handler: Handler) -> None:
        self._handlers[node_id] = handler

    def unregister(self, node_id: str, handler: Handler) -> bool:
        """Drop `handler` if it is still node_id's; whether it was."""
        if self._handlers.get(node_id) is not handler:
            return False  # a newer link for this node already took over
        del self._handlers[node_id]
        return True

    def handler(self, node_id: str) -> Handler | None:
        return self._handlers.get(node_id)

    def node_ids(self) -> list[str]:
        return list(self._handlers)

    def clear(self) -> None:
        self._handlers.clear()

    async def request(self, node_id: str, req: QueryRequest, timeout: float) -> QueryResponse:  # noqa: ASYNC109
        handler = self._handlers.get(node_id)
        if handler is None:
            raise NodeNotConnected(node_id)
        return await _call_handler(node_id, handler, req, timeout)


class InMemoryRouter:
    """All links in this process: a dictionary from node id to handler."""

    def __init__(self, process_id: str | None = None) -> None:
        self.process_id = _check_token("process id", process_id or uuid.uuid4().hex)
        self.local = LocalHandlers()
        self._control: ControlHandler = _no_control

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self.local.clear()

    def connected(self) -> bool:
        return True

    async def register(self, node_id: str, handler: Handler) -> None:
        self.local.register(node_id, handler)

    async def unregister(self, node_id: str, handler: Handler) -> None:
        self.local.unregister(node_id, handler)

    def is_local(self, node_id: str) -> bool:
        return self.local.handler(node_id) is not None

    async def request(self, node_id: str, req: QueryRequest, timeout: float) -> QueryResponse:  # noqa: ASYNC109
        return await self.local.request(node_id, req, timeout)

    def subscribe_takeover(self, callback: TakeoverCallback) -> None:
        return None  # no other process can take a node over

    async def announce_access_change(self) -> None:
        return None  # no other process to tell

    def subscribe_access_change(self, callback: AccessCallback) -> None:
        return None

    async def control(self, command: ControlCommand) -> bool:
        return await self._control(command)

    def set_control_handler(self, handler: ControlHandler) -> None:
        self._control = handler


class _Ownership(msgspec.Struct, array_like=True):
    node_id: str
    process_id: str
    held: bool


# NATS subject tokens may not contain dots, wildcards or whitespace.
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")
_NOT_CONNECTED = "not_connected"
_TIMEOUT = "timeout"
_HANDLER_FAILED = "handler_failed"
_LOCATE_SECONDS = 0.25


def _check_token(kind: str, value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{kind} {value!r} must be letters, digits, '-' or '_'")
    return value


class NatsRouter:
    """Links spread over several Cloud processes, routed through NATS."""

    def __init__(
        self,
        nats_url: str,
        subject_prefix: str = "tether",
        process_id: str | None = None,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,  # back within a second of NATS
    ) -> None:
        self.nats_url = nats_url
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.prefix = _check_token("subject prefix", subject_prefix)
        self.process_id = _check_token("process id", process_id or uuid.uuid4().hex)
        self.local = LocalHandlers()
        # node id -> owning process id, from broadcasts and locates (never "absent").
        self._owners: dict[str, str] = {}
        self._control: ControlHandler = _no_control
        self._tasks: set[asyncio.Task[None]] = set()
        self._takeover: list[TakeoverCallback] = []
        self._access: list[AccessCallback] = []
        self._nc: NatsClient | None = None
        self._closing = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.warning("NATS %s: %s", self.nats_url, exc or type(exc).__name__)

        async def on_disconnected() -> None:
            if not self._closing:
                log.warning("NATS %s: disconnected, reconnecting", self.nats_url)

        async def on_reconnected() -> None:
            # Ownership broadcasts may have been missed meanwhile: forget what
            # others hold, locate nodes afresh, and say again what this holds.
            self._owners.clear()
            log.info("NATS %s: reconnected", self.nats_url)
            for node_id in self.local.node_ids():
                self._owners[node_id] = self.process_id
                await self._announce(node_id, held=True)

        try:
            # nats-py retries the first connect for ever once reconnects are
            # unlimited: bound it so a wrong --nats-url fails at start-up.
            nc = await asyncio.wait_for(
                nats.connect(
                    self.nats_url,
                    name=f"tether-cloud-{self.process_id}",
                    connect_timeout=min(2.0, self.connect_timeout),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                ),
                timeout=self.connect_timeout,
            )
        except Exception as exc:
            raise RoutingError(
                f"cannot connect to NATS at {self.nats_url}: {str(exc) or type(exc).__name__}; "
                "check --nats-url and that nats-server is running"
            ) from exc
        self._nc = nc
        p = self.prefix
        await nc.subscribe(f"{p}.proc.{self.process_id}.*", cb=self._spawn(self._on_query))
        await nc.subscribe(f"{p}.locate.*", cb=self._on_locate)
        await nc.subscribe(f"{p}.owner", cb=self._on_owner)
        await nc.subscribe(f"{p}.ctl.{self.process_id}", cb=self._spawn(self._on_control))
        await nc.subscribe(f"{p}.access", cb=self._on_access)
        await nc.flush()

    async def close(self) -> None:
        nc = self._client()
        self._closing = True
        # Tell the others this process holds nothing any more.
        for node_id in self.local.node_ids():
            await self._announce(node_id, held=False)
        for task in list(self._tasks):
            task.cancel()
        await nc.drain()
        self.local.clear()

    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _client(self) -> NatsClient:
        if self._nc is None:
            raise RoutingError("NatsRouter.start() was not called")
        return self._nc

    def _spawn(
        self, coro_fn: Callable[[Msg], Coroutine[Any, Any, None]]
    ) -> Callable[[Msg], Awaitable[None]]:
        # nats-py runs one subscription's callbacks one after another: give each
        # message its own task so a slow node never delays queries to others.
        async def cb(msg: Msg) -> None:
            task = asyncio.create_task(coro_fn(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return cb

    # -- ownership -----------------------------------------------------------

    async def register(self, node_id: str, handler: Handler) -> None:
        _check_token("node id", node_id)
        self.local.register(node_id, handler)
        self._owners[node_id] = self.process_id
        await self._announce(node_id, held=True)

    async def unregister(self, node_id: str, handler: Handler) -> None:
        if not self.local.unregister(node_id, handler):
            return  # a newer link for this node already took over
        if self._owners.get(node_id) == self.process_id:
            # Unless another process announced it took the node over meanwhile.
            del self._owners[node_id]
        await self._announce(node_id, held=False)

    def is_local(self, node_id: str) -> bool:
        return self.local.handler(node_id) is not None

    def subscribe_takeover(self, callback: TakeoverCallback) -> None:
        self._takeover.append(callback)

    async def _announce(self, node_id: str, held: bool) -> None:
        data = msgspec.msgpack.encode(_Ownership(node_id, self.process_id, held))
        await self._client().publish(f"{self.prefix}.owner", data)

    async def _on_owner(self, msg: Msg) -> None:
        try:
            own = msgspec.msgpack.decode(msg.data, type=_Ownership)
        except msgspec.MsgspecError:
            log.warning("ignoring a malformed ownership message on NATS")
            return
        if own.process_id == self.process_id:
            return
        if own.held:
            self._owners[own.node_id] = own.process_id
            if self.is_local(own.node_id):
                # Another process now holds a link for a node this one holds too
                # (a clone, or an agent that moved): let the link layer decide.
                for callback in self._takeover:
                    try:
                        await callback(own.node_id)
                    except Exception:
                        log.exception("takeover callback failed for node %s", own.node_id)
        elif self._owners.get(own.node_id) == own.process_id:
            # Only the current owner's release counts: a late release from a
            # process the node already left must not hide its new link.
            del self._owners[own.node_id]

    async def _on_locate(self, msg: Msg) -> None:
        node_id = msg.subject.rsplit(".", 1)[-1]
        if self.is_local(node_id):
            await msg.respond(self.process_id.encode())

    async def _locate(self, node_id: str) -> str | None:
        try:
            reply = await self._client().request(
                f"{self.prefix}.locate.{node_id}", b"", timeout=_LOCATE_SECONDS
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
        owner: str = reply.data.decode()
        self._owners[node_id] = owner
        return owner

    # -- queries ---------------------------------------------------------------

    async def request(self, node_id: str, req: QueryRequest, timeout: float) -> QueryResponse:  # noqa: ASYNC109
        if self.is_local(node_id):
            return await self.local.request(node_id, req, timeout)
        _check_token("node id", node_id)
        deadline = time.monotonic() + timeout
        owner = self._owners.get(node_id) or await self._locate(node_id)
        for attempt in range(2):
            if owner is None or owner == self.process_id:
                raise NodeNotConnected(node_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RelayTimeout(node_id, timeout)
            req = msgspec.structs.replace(req, timeout_ms=max(1, int(remaining * 1000)))
            try:
                reply = await self._client().request(
                    f"{self.prefix}.proc.{owner}.{node_id}",
                    msgspec.msgpack.encode(req),
                    timeout=remaining,
                )
            except nats.errors.TimeoutError:
                raise RelayTimeout(node_id, timeout) from None
            except nats.errors.NoRespondersError:
                answer: QueryResponse | ErrorFrame = ErrorFrame(code=_NOT_CONNECTED)
            else:
                answer = msgspec.msgpack.decode(reply.data, type=QueryResponse | ErrorFrame)
            if isinstance(answer, QueryResponse):
                return answer
            if answer.code == _TIMEOUT:
                raise RelayTimeout(node_id, timeout)
            if answer.code != _NOT_CONNECTED:
                raise RoutingError(f"node {node_id}: {answer.code}: {answer.text}")
            # The process we thought held it does not (moved or gone): ask again once.
            self._owners.pop(node_id, None)
            owner = await self._locate(node_id) if attempt == 0 else None
        raise NodeNotConnected(node_id)

    async def _on_query(self, msg: Msg) -> None:
        node_id = msg.subject.rsplit(".", 1)[-1]
        answer: QueryResponse | ErrorFrame
        try:
            req = msgspec.msgpack.decode(msg.data, type=QueryRequest)
        except msgspec.MsgspecError as exc:
            answer = ErrorFrame(code="bad_request", text=str(exc))
        else:
            try:
                answer = await self.local.request(node_id, req, req.timeout_ms / 1000)
            except NodeNotConnected:
                answer = ErrorFrame(code=_NOT_CONNECTED, id=req.id)
            except RelayTimeout:
                answer = ErrorFrame(code=_TIMEOUT, id=req.id)
            except Exception as exc:
                log.exception("relay handler for node %s failed", node_id)
                answer = ErrorFrame(code=_HANDLER_FAILED, text=type(exc).__name__, id=req.id)
        with contextlib.suppress(Exception):  # the requester may have given up
            await msg.respond(msgspec.msgpack.encode(answer))

    # -- commands ----------------------------------------------------------------

    async def control(self, command: ControlCommand) -> bool:
        if self.is_local(command.node_id):
            return await self._control(command)
        _check_token("node id", command.node_id)
        # Always locate afresh: a cached "not connected" may be stale, and a
        # removed node must not keep its link because of it.
        owner = await self._locate(command.node_id)
        if owner is None or owner == self.process_id:
            return False
        try:
            reply = await self._client().request(
                f"{self.prefix}.ctl.{owner}", msgspec.msgpack.encode(command), timeout=2.0
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            log.warning("process %s did not answer a %s command", owner, command.action)
            return False
        return reply.data == b"1"

    def set_control_handler(self, handler: ControlHandler) -> None:
        self._control = handler

    async def _on_control(self, msg: Msg) -> None:
        try:
            command = msgspec.msgpack.decode(msg.data, type=ControlCommand)
        except msgspec.MsgspecError:
            log.warning("ignoring a malformed link command on NATS")
            return
        try:
            done = await self._control(command)
        except Exception:
            log.exception("link command %s for node %s failed", command.action, command.node_id)
            done = False
        with contextlib.suppress(Exception):  # the sender may have given up
            await msg.respond(b"1" if done else b"0")

    # -- access changes ------------------------------------------------------------

    async def announce_access_change(self) -> None:
        try:
            await self._client().publish(f"{self.prefix}.access", self.process_id.encode())
        except Exception as exc:  # the others fall back on their cache TTL
            log.warning("could not announce an access change on NATS: %s", exc)

    def subscribe_access_change(self, callback: AccessCallback) -> None:
        self._access.append(callback)

    async def _on_access(self, msg: Msg) -> None:
        if msg.data == self.process_id.encode():
            return  # this process cleared its own cache at commit
        for callback in self._access:
            try:
                await callback()
            except Exception:
                log.exception("access-change callback failed")
