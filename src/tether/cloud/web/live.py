"""Live updates of the Nodes view: Server-Sent Events pushed within a second.

Presence lives in the database (several Cloud processes may share it, and no
presence broadcast goes over the bus), so each Cloud process runs one
`NodeWatcher` that polls the database every `interval` seconds, only while
someone is subscribed: every presence change (claim, live, offline, duplicate,
removal) writes a `node_events` row with its Space, so "which Spaces changed"
is a primary-key range read of the rows added since the last poll. Each
subscriber of a changed Space is woken; its stream sends `event: nodes` and
the browser refetches the page it shows (the event carries no data, so
nothing leaks if access changed meanwhile: the refetch is checked again).

Bounded: at most `per_user` streams per user and `per_process` in all (429
past that), a heartbeat comment every `heartbeat` seconds (so proxies keep the
stream open and a dead client is noticed), each stream ends after `max_age`
seconds (EventSource reconnects by itself, and sign-in and membership are
checked again), and `stop()` at shutdown ends every stream at once, so
uvicorn's graceful shutdown does not wait on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tether.cloud import space_ops
from tether.cloud.db import Database
from tether.cloud.models import NodeEvent
from tether.cloud.web.common import in_db, member_space, page, secure, signed_in

log = logging.getLogger("tether.cloud")

INTERVAL = 0.5
HEARTBEAT = 15.0
MAX_AGE = 300.0
PER_USER = 6
PER_PROCESS = 1000
# Ids re-read behind the cursor: on PostgreSQL an event with a lower id can
# commit after one with a higher id, so the last ids are looked at again.
LOOKBACK = 256
RETRY_MS = 1000  # EventSource's reconnect delay


class TooManyStreams(Exception):
    pass


@dataclass(eq=False)
class Subscriber:
    space_id: str
    user_id: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class NodeWatcher:
    """One per Cloud process: polls node_events and wakes the subscribers of
    the Spaces that changed."""

    def __init__(
        self,
        db: Database,
        *,
        interval: float = INTERVAL,
        per_user: int = PER_USER,
        per_process: int = PER_PROCESS,
        heartbeat: float = HEARTBEAT,
        max_age: float = MAX_AGE,
    ) -> None:
        self.db = db
        self.interval = interval
        self.heartbeat = heartbeat
        self.max_age = max_age
        self.per_user = per_user
        self.per_process = per_process
        self.subscribers: set[Subscriber] = set()
        self.closing = asyncio.Event()
        self._cursor: int | None = None  # highest event id read
        self._seen: set[int] = set()  # ids in the look-back window already read
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failing = False

    # -- subscriptions ------------------------------------------------------

    def subscribe(self, space_id: str, user_id: str) -> Subscriber:
        if self.closing.is_set():
            raise TooManyStreams("The Cloud is shutting down.")
        if len(self.subscribers) >= self.per_process:
            raise TooManyStreams(
                f"This Cloud process already serves {self.per_process} live views."
            )
        mine = sum(1 for sub in self.subscribers if sub.user_id == user_id)
        if mine >= self.per_user:
            raise TooManyStreams(
                f"You already have {self.per_user} live Nodes views open: close some tabs."
            )
        sub = Subscriber(space_id, user_id)
        self.subscribers.add(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    # -- the poll -------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-watcher")

    async def stop(self) -> None:
        """End every stream and the poll (a shutdown hook)."""
        self.closing.set()
        for sub in list(self.subscribers):
            sub.changed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self.closing.is_set():
            if not self.subscribers:
                self._cursor = None  # nobody watches: read nothing until someone does
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                changed = await run_in_threadpool(self._poll)
                self._failing = False
            except Exception as exc:  # the database may be down: try again next time
                if not self._failing:  # once per outage, not every half second
                    log.warning("live Nodes view: cannot read node events: %s", exc)
                self._failing = True
                changed = set()
            for sub in list(self.subscribers):
                if sub.space_id in changed:
                    sub.changed.set()
            await asyncio.sleep(self.interval)

    def _poll(self) -> set[str]:
        with self.db.session() as s:
            return self.changed_spaces(s)

    def changed_spaces(self, s: Session) -> set[str]:
        """The Spaces with node events since the last call (the first call
        only sets the cursor)."""
        first = self._cursor is None
        if self._cursor is None:
            self._cursor = int(s.scalar(select(func.max(NodeEvent.id))) or 0)
        rows = s.execute(
            select(NodeEvent.id, NodeEvent.space_id)
            .where(NodeEvent.id > self._cursor - LOOKBACK)
            .order_by(NodeEvent.id)
        ).all()
        changed = set() if first else {sp for eid, sp in rows if eid not in self._seen and sp}
        ids = [eid for eid, _ in rows]
        if ids:
            self._cursor = max(self._cursor, ids[-1])
        self._seen = {eid for eid in ids if eid > self._cursor - LOOKBACK}
        return changed

    # -- one stream -------------------------------------------------------------

    async def stream(self, sub: Subscriber) -> AsyncIterator[str]:
        """The text of one SSE stream; the subscription ends with it."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.max_age
        try:
            yield f"retry: {RETRY_MS}\nevent: hello\ndata: {{}}\n\n"
            while not self.closing.is_set():
                left = ends - loop.time()
                if left <= 0:
                    return
                try:
                    await asyncio.wait_for(sub.changed.wait(), min(self.heartbeat, left))
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                sub.changed.clear()
                if self.closing.is_set():
                    return
                yield "event: nodes\ndata: {}\n\n"
        finally:
            self.unsubscribe(sub)


class EventStream(StreamingResponse):
    """A stream that gives its subscription back however it ends, even when
    the client left before the first byte (the generator never started)."""

    def __init__(self, watcher: NodeWatcher, sub: Subscriber) -> None:
        super().__init__(
            watcher.stream(sub),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},  # nginx: pass each event on at once
        )
        self.watcher, self.sub = watcher, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.watcher.unsubscribe(self.sub)


@page
async def room_events(request: Request) -> Response:
    """GET /spaces/{sid}/rooms/{rid}/events: the room's live stream (signed-in
    members of the Space only, like the page itself)."""
    user = await signed_in(request)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]

    def check(s: Session) -> str:
        space, _ = member_space(s, user, sid)
        space_ops.room(s, space, rid)
        return space.id

    space_id = await in_db(request, check)
    watcher: NodeWatcher = request.app.state.node_watcher
    try:
        sub = watcher.subscribe(space_id, user.user_id)
    except TooManyStreams as exc:
        closing = watcher.closing.is_set()
        return secure(
            JSONResponse(
                {
                    "errorMsgKey": "ErrShuttingDown" if closing else "ErrTooManyStreams",
                    "errorMessage": str(exc),
                },
                status_code=503 if closing else 429,
                headers={"Retry-After": "10"},
            )
        )
    return EventStream(watcher, sub)
