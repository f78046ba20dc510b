"""Cloud processes: each beats a heartbeat row (`cloud_processes`) once per
sweep; a process that missed three beats is dead, and the nodes whose links it
held are taken offline (tether.cloud.link.presence.db_reap_dead_processes)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Select, delete, select, update
from sqlalchemy.orm import Session

from tether.cloud.db import Database
from tether.cloud.models import CloudProcess, Node, utcnow


def sweep_interval(keepalive: float) -> float:
    """Seconds between sweeps (and heartbeats): the keepalive, 0.5 to 30 s."""
    return min(30.0, max(0.5, keepalive))


def grace_seconds(keepalive: float) -> float:
    """A process that missed three heartbeats (one per sweep) is gone."""
    return max(10.0, 3 * sweep_interval(keepalive) + 5)


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


def process_alive(
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


def alive_since(cutoff: dt.datetime) -> Select[str]:
    """The ids of the processes that beat since `cutoff`."""
    return select(CloudProcess.id).where(CloudProcess.heartbeat_at >= cutoff)


def forget_dead(s: Session, cutoff: dt.datetime) -> None:
    """Delete the rows of processes that have not beaten since `cutoff`."""
    s.execute(delete(CloudProcess).where(CloudProcess.heartbeat_at < cutoff))


def db_forget_process(db: Database, process_id: str) -> None:
    """This process stops: its row goes, and no node names it any more."""
    with db.session(write_lock=True) as s:
        s.execute(update(Node).where(Node.link_process == process_id).values(link_process=None))
        s.execute(delete(CloudProcess).where(CloudProcess.id == process_id))
