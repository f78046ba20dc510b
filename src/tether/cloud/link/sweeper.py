"""The link sweeper: every keepalive interval (at most 30 s) it beats this
process's heartbeat (and every second keeps its lease, processes.Lease),
offlines the nodes of dead Cloud processes ("Cloud process lost"), closes
local links whose node was removed (4003, `close_removed`) or taken over by a
newer link on another process (4009), prunes the history
(tether.cloud.retention), removes stale and ephemeral nodes
(tether.cloud.stale_nodes), purges expired one-time secrets and forgets idle
frame budgets."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool

from tether.cloud import retention, stale_nodes
from tether.cloud.link import presence, processes
from tether.cloud.link.endpoint import Endpoint, LiveLink
from tether.cloud.models import utcnow
from tether.cloud.outage import DATABASE_ERRORS
from tether.protocol import states
from tether.protocol.link import CLOSE_NODE_REMOVED, CLOSE_REPLACED

log = logging.getLogger("tether.cloud.link")

PRUNE_EVERY = 10.0  # seconds between history prunes at most (tether.cloud.retention)


async def close_removed(endpoint: Endpoint, node_id: str) -> bool:
    """Close this process's link of a node that was removed (4003), if it
    holds one; whether it did. The one place that does it: the sweep (a
    removal it finds), the stale and ephemeral reaping, and a removal routed
    here (LinkService, tether.cloud.routing REMOVE)."""
    link = endpoint.links.get(node_id)
    if link is None or link.closed:
        return False
    log.info("ACLK node %s was removed: closing its link", node_id)
    await link.close(
        CLOSE_NODE_REMOVED,
        "node removed from its Space",
        "node removed",
        states.CAUSE_REMOVED,
    )
    return True


class Sweeper:
    """The periodic sweep over one Endpoint's live-link table."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._purged_at = time.monotonic()
        settings = endpoint.settings
        self.retention = retention.Retention(
            settings.history_days,
            settings.node_events_per_node,
            settings.claim_audit_rows,
            settings.audit_days,
            settings.audit_rows_per_space,
        )
        self._pruned_at: float | None = None  # None: the first prune checks every node
        # What the reaping of stale and ephemeral nodes decides by (injectable).
        self.wall_clock = utcnow

    def start(self, description: str, lease: processes.Lease) -> asyncio.Task[None]:
        """Sweep every keepalive interval until the task is cancelled, keeping
        this process's lease (processes.Lease) every second meanwhile; hear of
        takeovers by other processes."""
        self.endpoint.router.subscribe_takeover(self.taken_over)
        return asyncio.create_task(self._run(description, lease))

    async def _run(self, description: str, lease: processes.Lease) -> None:
        keeping = asyncio.create_task(self._keep_lease_forever(lease))
        try:
            await self._sweep_forever(description)
        finally:
            keeping.cancel()

    async def _keep_lease_forever(self, lease: processes.Lease) -> None:
        while True:
            try:
                await run_in_threadpool(lease.keep)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not keep this process's lease")
            await asyncio.sleep(processes.LEASE_EVERY_SECONDS)

    async def _sweep_forever(self, description: str) -> None:
        interval = processes.sweep_interval(self.endpoint.keepalive)
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
        await run_in_threadpool(
            processes.db_heartbeat, self.endpoint.db, self.endpoint.process_id, description
        )
        if time.monotonic() - self._purged_at > 60:
            self._purged_at = time.monotonic()
            await self.endpoint.secret_store.purge_expired()
        await self._prune_history()
        self._forget_idle_budgets()
        await run_in_threadpool(
            presence.db_reap_dead_processes,
            self.endpoint.db,
            processes.grace_seconds(self.endpoint.keepalive),
            self.endpoint.process_id,
        )
        if not self.endpoint.links:
            return
        # Links added while the query runs are not judged by it.
        snapshot = dict(self.endpoint.links)
        current = await run_in_threadpool(
            presence.db_current_sessions, self.endpoint.db, list(snapshot)
        )
        for node_id, link in snapshot.items():
            if self.endpoint.links.get(node_id) is not link or link.closed:
                continue
            if node_id not in current:
                await close_removed(self.endpoint, node_id)
            elif current[node_id] is None:
                # Marked offline while its link is up here (this process was
                # slow to beat): the link table is the truth, so say so again.
                await run_in_threadpool(
                    presence.db_reassert_live,
                    self.endpoint.db,
                    node_id,
                    link.session_id,
                    self.endpoint.process_id,
                )
            elif current[node_id] != link.session_id:
                await self._close_replaced(node_id, link)

    async def _prune_history(self) -> None:
        """Bound node_events and claim_audit (tether.cloud.retention)."""
        now = self.endpoint.clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        every_node = self._pruned_at is None
        self._pruned_at = now
        pruned = await run_in_threadpool(
            retention.prune, self.endpoint.db, self.retention, None, every_node
        )
        if pruned.node_events or pruned.claim_audit or pruned.audit_log:
            log.info(
                "history pruned: %d node event(s), %d claim audit row(s), %d audit entries",
                pruned.node_events,
                pruned.claim_audit,
                pruned.audit_log,
            )
        # Same cadence: ephemeral nodes past their TTL, Spaces' stale policies.
        reaped = await run_in_threadpool(stale_nodes.reap, self.endpoint.db, self.wall_clock())
        if reaped.removed or reaped.stale_marked:
            log.info(
                "nodes reaped: %d ephemeral and %d stale removed, %d marked stale",
                len(reaped.ephemeral),
                len(reaped.stale_removed),
                reaped.stale_marked,
            )
        for node_id in reaped.removed:  # a link that came up meanwhile: 4003
            await close_removed(self.endpoint, node_id)

    def _forget_idle_budgets(self) -> None:
        for node_id, budget in list(self.endpoint.budgets.items()):
            if node_id not in self.endpoint.links and budget.forgettable():
                del self.endpoint.budgets[node_id]

    async def taken_over(self, node_id: str) -> None:
        """Another process announced a link for a node linked here: the
        database says which session is current; close this one if it is not."""
        link = self.endpoint.links.get(node_id)
        if link is None:
            return
        current = await run_in_threadpool(presence.db_current_sessions, self.endpoint.db, [node_id])
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
            states.CAUSE_REPLACED,
        )
