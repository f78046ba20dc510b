"""Group commit: many small database operations in a few shared transactions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tether.cloud.db import Database

T = TypeVar("T")
R = TypeVar("R")


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
    item fails only itself."""

    MAX_BATCH = 500

    def __init__(
        self,
        db: Database,
        apply: Callable[[Session, T], R],
        key: Callable[[T], str],
        *,
        write: bool = True,
    ) -> None:
        self.db = db
        self.apply = apply
        self.key = key
        self.write = write  # False: a read-only batch, no write lock
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

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
        with self.db.session(write_lock=self.write) as s:
            for i in order:
                results[i] = self.apply(s, items[i])
        return [results[i] for i in range(len(items))]

    async def _write(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._pending[: self.MAX_BATCH]
                del self._pending[: self.MAX_BATCH]
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
            return list(await run_in_threadpool(self._run, items))
        except Exception as exc:
            if len(items) == 1:  # its caller gets the error (raising here hung it)
                return [exc]
        outcomes: list[R | BaseException] = []
        for item in items:
            try:
                outcomes.append((await run_in_threadpool(self._run, [item]))[0])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
