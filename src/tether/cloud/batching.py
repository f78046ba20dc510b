"""Group commit: many small database operations in a few shared transactions."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tether.cloud.db import Database

T = TypeVar("T")
R = TypeVar("R")

# One write lane per database: the write batches of all group commits on it
# run one at a time. On SQLite two writers would otherwise meet at its one
# write lock, where the loser sleeps in SQLite's busy handler (up to 100 ms a
# try) while the winner's next batch may take the lock again.
_lanes: weakref.WeakKeyDictionary[Database, asyncio.Lock] = weakref.WeakKeyDictionary()


def write_lane(db: Database) -> asyncio.Lock:
    lane = _lanes.get(db)
    if lane is None:
        lane = _lanes[db] = asyncio.Lock()
    return lane


class GroupCommit(Generic[T, R]):
    """Run small database operations in shared transactions ("group commit").

    When no batch is running, an item is run at once (no added latency); items
    that arrive while one runs wait for it and then go together in the next
    transaction. In a reconnect storm that turns hundreds of transactions (each
    a threadpool hop, a pooled connection and, for writes, a BEGIN IMMEDIATE
    through SQLite's one write lock and a commit) into a few, while each caller
    still gets its own result before it answers its node. Items are applied in node-id order
    so processes sharing PostgreSQL lock rows in the same order (no deadlock).
    If a batch fails, its items are retried one transaction each, so one bad
    item fails only itself.

    A batch is bounded by count (MAX_BATCH) and by time: it takes only as many
    items as the measured time per item (the writing thread's CPU time, which
    a busy machine does not inflate) says fit in TARGET_SECONDS. Everyone in
    a batch waits for all of it, so 500 items of 10 ms each (a storm on a busy
    machine) sent 500 HelloAcks at once every 5 s, in waves; bounded batches
    keep the answers flowing."""

    MAX_BATCH = 500
    MIN_BATCH = 32
    TARGET_SECONDS = 0.15

    def __init__(
        self,
        db: Database,
        apply: Callable[[Session, T], R],
        key: Callable[[T], str],
        *,
        write: bool = True,
        apply_many: Callable[[Session, list[T]], list[R]] | None = None,
    ) -> None:
        self.db = db
        self.apply = apply
        # A whole batch in a few set statements (its results in its order),
        # where one statement per item is most of the batch's cost.
        self.apply_many = apply_many
        self.key = key
        self.write = write  # False: a read-only batch, no write lock
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.per_item = 0.0  # seconds per item of recent batches (moving average)

    def batch_size(self) -> int:
        if self.per_item <= 0:
            return self.MAX_BATCH
        fit = int(self.TARGET_SECONDS / self.per_item)
        return max(self.MIN_BATCH, min(self.MAX_BATCH, fit))

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        # Shielded: a caller that stops waiting does not cancel the others' write.
        return await asyncio.shield(fut)

    def _run(self, items: list[T]) -> list[R]:
        order = sorted(range(len(items)), key=lambda i: self.key(items[i]))
        results: dict[int, R] = {}
        began = time.thread_time()
        with self.db.session(write_lock=self.write) as s:
            if self.apply_many is not None:
                done = self.apply_many(s, [items[i] for i in order])
                results = dict(zip(order, done, strict=True))
            else:
                for i in order:
                    results[i] = self.apply(s, items[i])
        took = (time.thread_time() - began) / len(items)
        self.per_item = took if self.per_item <= 0 else 0.7 * self.per_item + 0.3 * took
        return [results[i] for i in range(len(items))]

    async def _write(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                size = self.batch_size()
                batch = self._pending[:size]
                del self._pending[:size]
                for (_, fut), outcome in zip(batch, await self._outcomes(batch), strict=True):
                    if fut.done():
                        continue
                    if isinstance(outcome, BaseException):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
        except asyncio.CancelledError:  # the loop is stopping: nobody waits forever
            for _, fut in batch + self._pending:
                fut.cancel()
            self._pending.clear()
            raise
        finally:
            self._writer = None

    async def _outcomes(self, batch: list[tuple[T, asyncio.Future[R]]]) -> list[R | BaseException]:
        items = [item for item, _ in batch]
        try:
            async with write_lane(self.db) if self.write else contextlib.nullcontext():
                return list(await run_in_threadpool(self._run, items))
        except Exception as exc:
            if len(items) == 1:  # its caller gets the error (raising here hung it)
                return [exc]
        outcomes: list[R | BaseException] = []
        for item in items:
            try:
                async with write_lane(self.db) if self.write else contextlib.nullcontext():
                    outcomes.append((await run_in_threadpool(self._run, [item]))[0])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
