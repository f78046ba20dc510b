"""The delivery worker, one per Cloud process: raises due reachability alerts,
writes flap summaries and sends claimed notifications. It sleeps until the
next thing is due (at most `alert_tick_seconds`), so a notification leaves
within a tick of its grace ending."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

import httpx

from tether.cloud.alerts import channels, outbox, reachability
from tether.cloud.db import Database
from tether.cloud.outage import DATABASE_ERRORS
from tether.cloud.secrets import SecretBox
from tether.cloud.settings import CloudSettings

log = logging.getLogger("tether.cloud.alerts")
CLAIM_BATCH = 50  # notifications claimed per pass


def limits_of(settings: CloudSettings) -> outbox.Limits:
    return outbox.Limits(
        flap_limit=settings.notify_flap_limit,
        flap_window_seconds=settings.notify_flap_window_seconds,
        retry_base_seconds=settings.notify_retry_base_seconds,
        retry_max_seconds=settings.notify_retry_max_seconds,
        max_attempts=settings.notify_max_attempts,
        lease_seconds=settings.notify_timeout_seconds * 2 + 5,
    )


def configure(settings: CloudSettings) -> None:
    """The policy presence's hooks use in this process (they get no settings)."""
    reachability.defaults["grace_seconds"] = settings.alert_default_grace_seconds
    reachability.limits = limits_of(settings)


class AlertWorker:
    def __init__(
        self,
        settings: CloudSettings,
        db: Database,
        process_id: str,
        box: SecretBox,
        clock: Callable[[], float] = time.time,
    ) -> None:
        configure(settings)
        self.settings = settings
        self.db = db
        self.process_id = process_id
        self.box = box
        self.clock = clock
        self.limits = limits_of(settings)
        self.started = clock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    async def start(self) -> None:
        self.started = self.clock()
        if self.settings.nats_url is None:
            # One process: the claims of the last one died with it.
            released = await asyncio.to_thread(outbox.release_all, self.db)
            if released:
                log.info("%d notifications sent again after a restart (same keys)", released)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for t in list(self._sending):
            t.cancel()

    async def send_now(self, item: outbox.Claimed, time_limit: float) -> str | None:
        """A test send, outside the outbox: None if the receiver took it."""
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as http:
            return await channels.send(item, http, time_limit)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as http:
            while True:
                try:
                    delay = await self.tick(http)
                except DATABASE_ERRORS:
                    # The outage is logged once (tether.cloud.outage); the next pass retries.
                    delay = self.settings.alert_tick_seconds
                except Exception:
                    log.exception("alert worker pass failed")
                    delay = self.settings.alert_tick_seconds
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()

    async def tick(self, http: httpx.AsyncClient) -> float:
        """One pass; the seconds until the next one."""
        now = self.now()
        await asyncio.to_thread(reachability.raise_due, self.db, now, self.started)
        await asyncio.to_thread(outbox.flush_summaries, self.db, now, self.limits)
        claimed = await asyncio.to_thread(
            outbox.claim, self.db, self.process_id, now, self.limits, self.box, CLAIM_BATCH
        )
        for item in claimed:
            task = asyncio.create_task(self._deliver(http, item))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        if len(claimed) == CLAIM_BATCH:
            return 0.0  # more are due
        return await asyncio.to_thread(self._next_delay)

    def _next_delay(self) -> float:
        """Until the next watch or retry falls due, at most a tick. Times already
        past were handled in this pass (or wait for the start grace after a
        Cloud-side close, which the tick bounds)."""
        tick = self.settings.alert_tick_seconds
        now = self.clock()
        with self.db.session() as s:
            times = [t for t in (reachability.next_due(s), outbox.next_due(s)) if t is not None]
        ahead = [t.timestamp() - now for t in times if t.timestamp() > now]
        return max(0.01, min([tick, *ahead]))

    async def _deliver(self, http: httpx.AsyncClient, item: outbox.Claimed) -> None:
        error = await channels.send(item, http, self.settings.notify_timeout_seconds)
        try:
            state = await asyncio.to_thread(
                outbox.finish, self.db, self.process_id, item, error, self.now(), self.limits
            )
        except DATABASE_ERRORS:
            # Not recorded: the row stays claimed until its lease ends, then is
            # sent again with the same key (the receiver tells the two apart).
            return
        if error:
            log.warning(
                "notification %s (%s, attempt %d) not delivered: %s; now %s",
                item.key,
                item.event,
                item.attempts,
                error,
                state,
            )
        if state == outbox.PENDING:
            self.wake()
