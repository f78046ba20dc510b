"""Cloud processes: which are alive, so the nodes whose links a dead one held
are taken offline (tether.cloud.link.presence.db_reap_dead_processes) and a
node coming back through another process is not taken for a duplicate.

Two signals:

- the heartbeat row (`cloud_processes`), beaten once per sweep: a process
  that missed three beats is dead (SQLite, one process; and the fallback);
- on PostgreSQL, a lease: each process holds a session advisory lock
  (`pg_try_advisory_lock(LEASE_CLASS, lease_key(process_id))`) on a
  connection of its own for as long as it runs. A process killed with -9 loses
  its connection, so PostgreSQL drops the lock at once: the others see it dead
  on their next look, not three beats later, and a node that fails over at
  once is recorded as a reconnect ("Cloud process lost"), not a duplicate.
  Leases are only believed once the PostgreSQL server has been up for
  LEASE_SETTLE_SECONDS: after a restart of PostgreSQL every lease is gone
  until each process takes its own again (within LEASE_EVERY_SECONDS).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

from sqlalchemy import Connection, create_engine, delete, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tether.cloud.db import Database
from tether.cloud.models import CloudProcess, Node, utcnow
from tether.cloud.outage import DATABASE_ERRORS
from tether.cloud.secrets import aware

log = logging.getLogger("tether.cloud.link")

# The advisory-lock namespace of process leases (first key of the two-key form).
LEASE_CLASS = 0x7E7E
LEASE_EVERY_SECONDS = 1.0  # how often a process checks (and retakes) its lease
# Longer than LEASE_EVERY_SECONDS plus a busy machine's delay: after a restart
# of PostgreSQL, every live process has its lease back by then.
LEASE_SETTLE_SECONDS = 10.0
# Shown on the nodes a dead process held, by the processes left.
CAUSE_PROCESS_LOST = "Cloud process lost"


def sweep_interval(keepalive: float) -> float:
    """Seconds between sweeps (and heartbeats): the keepalive, 0.5 to 30 s."""
    return min(30.0, max(0.5, keepalive))


def grace_seconds(keepalive: float) -> float:
    """A process that missed three heartbeats (one per sweep) is gone."""
    return max(10.0, 3 * sweep_interval(keepalive) + 5)


def lease_key(process_id: str) -> int:
    """The process's lease lock key: 31 bits of the SHA-256 of its id."""
    return int.from_bytes(hashlib.sha256(process_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


class Lease:
    """This process's lease on PostgreSQL (nothing on SQLite): its own
    connection, outside the pool, holding the advisory lock."""

    def __init__(self, db: Database, process_id: str) -> None:
        self.key = lease_key(process_id)
        self._engine = (
            None
            if db.is_sqlite
            else create_engine(db.engine.url, poolclass=NullPool, pool_pre_ping=False)
        )
        self._conn: Connection | None = None
        self._warned = False

    def keep(self) -> bool:
        """Check the lease's connection, taking the lock again on a new one if
        it was lost (PostgreSQL restarted); whether it is held. Blocking."""
        if self._engine is None:
            return False
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except DATABASE_ERRORS:
                self._drop()
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            held = conn.scalar(
                text("SELECT pg_try_advisory_lock(:c, :k)"), {"c": LEASE_CLASS, "k": self.key}
            )
        except DATABASE_ERRORS:
            return False  # the outage is logged by the pool's users; retried next time
        if not held:  # another live session holds this key: a 1 in 2**31 collision
            conn.close()
            if not self._warned:
                self._warned = True
                log.warning("process lease %d is held by another session", self.key)
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        self._drop()
        if self._engine is not None:
            self._engine.dispose()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except DATABASE_ERRORS:
                pass
            self._conn = None


def _leases(s: Session) -> set[int] | None:
    """The process leases held in this database now; None when they are not
    to be believed (SQLite, or PostgreSQL restarted moments ago)."""
    if s.get_bind().dialect.name != "postgresql":
        return None
    up = s.scalar(text("SELECT extract(epoch FROM now() - pg_postmaster_start_time())"))
    if up is None or float(up) < LEASE_SETTLE_SECONDS:
        return None
    rows = s.scalars(
        text(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :c AND objsubid = 2 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"c": LEASE_CLASS},
    )
    return {int(k) for k in rows}


def alive_processes(s: Session, now: dt.datetime, grace_seconds: float) -> set[str]:
    """The processes alive now: beaten within `grace_seconds` and, where
    leases are believed, holding their lease. Looked up once per transaction
    (a batch of connects asks for every node)."""
    cached: tuple[dt.datetime, float, set[str]] | None = s.info.get("tether_alive")
    if cached is not None and cached[0] == now and cached[1] == grace_seconds:
        return cached[2]
    cutoff = now - dt.timedelta(seconds=grace_seconds)
    rows = s.execute(select(CloudProcess.id, CloudProcess.heartbeat_at)).all()
    alive = {pid for pid, beat in rows if aware(beat) >= cutoff}
    leases = _leases(s)
    if leases is not None:
        alive = {pid for pid in alive if lease_key(pid) in leases}
    s.info["tether_alive"] = (now, grace_seconds, alive)
    return alive


def process_alive(
    s: Session, process_id: str | None, now: dt.datetime, grace_seconds: float
) -> bool:
    if process_id is None:
        return False
    return process_id in alive_processes(s, now, grace_seconds)


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


def forget_dead(s: Session, cutoff: dt.datetime) -> None:
    """Delete the rows of processes that have not beaten since `cutoff`."""
    s.execute(delete(CloudProcess).where(CloudProcess.heartbeat_at < cutoff))


def db_forget_process(db: Database, process_id: str) -> None:
    """This process stops: its row goes, and no node names it any more."""
    with db.session(write_lock=True) as s:
        s.execute(update(Node).where(Node.link_process == process_id).values(link_process=None))
        s.execute(delete(CloudProcess).where(CloudProcess.id == process_id))
