"""Stale and ephemeral nodes: removed (or marked) after being away too long.

- **Ephemeral nodes** were enrolled with an ephemeral claiming token (CI
  runners, Kubernetes pods, autoscaling groups). Each keeps the token's TTL
  (`nodes.ephemeral_ttl_seconds`, copied at claim so revoking the token
  changes nothing); once it has not been live for that long it is removed:
  its row and public key go, so it can no longer authenticate, and any link
  it still has is closed (4003) by the sweeper.
- **The stale policy** of a Space (`spaces.stale_after_days`,
  `stale_action`): nodes not live for that many days are removed, or marked
  (`nodes.stale_marked_at`, shown in the UI and the API) until they come
  back.

"Not live for" counts from `state_since`: when it went offline, or when it
was claimed if it never linked (then an ephemeral node gets at least
UNSEEN_GRACE, 10 minutes, to install and start its agent). `reap` decides
by the `now` it is given (the sweeper passes the wall clock; tests pass any
time), re-reads each node under its row lock and skips one that came back
meanwhile, and writes one audit entry per node (actor `policy:ephemeral` or
`policy:stale`). The link sweeper calls it with the history prune
(tether.cloud.link.sweeper), at most every 10 s.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.cloud import audit
from tether.cloud.db import Database
from tether.cloud.models import Node, Space
from tether.cloud.secrets import aware
from tether.cloud.store import claim_tokens
from tether.cloud.store import nodes as node_store
from tether.protocol.states import NodeState

# The shortest TTL a token may give its nodes: a typo of "5" meant as minutes
# must not remove nodes on their first network blip. Tests start the Cloud
# with `--min-ephemeral-ttl` (CloudSettings.min_ephemeral_ttl_seconds) lower.
MIN_EPHEMERAL_TTL = 60
MAX_EPHEMERAL_TTL = 365 * 86400
DEFAULT_EPHEMERAL_TTL = claim_tokens.DEFAULT_EPHEMERAL_TTL  # one hour
# A node claimed but never linked yet gets at least this long: the claim comes
# before the agent is installed and started (kickstart, a pod's init step).
UNSEEN_GRACE = 600
STALE_ACTIONS = ("remove", "mark")
MAX_STALE_DAYS = 3650
BATCH = 200  # nodes per transaction


@dataclass
class Reaped:
    ephemeral: list[str] = field(default_factory=list)  # removed node ids
    stale_removed: list[str] = field(default_factory=list)
    stale_marked: int = 0
    unmarked: int = 0

    @property
    def removed(self) -> list[str]:
        return self.ephemeral + self.stale_removed


def check_ttl(value: object, minimum: int = MIN_EPHEMERAL_TTL) -> int:
    """An ephemeral TTL in seconds from a request, else ValueError saying the range."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= MAX_EPHEMERAL_TTL
    ):
        raise ValueError(
            f'"ephemeral_ttl" must be {minimum} to {MAX_EPHEMERAL_TTL} seconds: how long a '
            "node enrolled with the token may stay offline before it is removed."
        )
    return value


def check_policy(after_days: object, action: object) -> tuple[int | None, str | None]:
    """(after_days, action) of a stale policy; (None, None) turns it off."""
    if after_days is None:
        return None, None
    if (
        isinstance(after_days, bool)
        or not isinstance(after_days, int)
        or not 1 <= after_days <= MAX_STALE_DAYS
    ):
        raise ValueError(f'"after_days" must be 1 to {MAX_STALE_DAYS}, or null to turn it off.')
    if action not in STALE_ACTIONS:
        raise ValueError(f'"action" must be one of {", ".join(STALE_ACTIONS)}.')
    return after_days, str(action)


def set_policy(
    s: Session, space: Space, after_days: int | None, action: str | None, actor: str
) -> None:
    """Set (or turn off) the Space's stale policy, audited. Marks stay only
    while a mark policy is set."""
    before = {"after_days": space.stale_after_days, "action": space.stale_action}
    space.stale_after_days, space.stale_action = after_days, action
    if action != "mark":
        s.execute(
            update(Node)
            .where(Node.space_id == space.id, Node.stale_marked_at.is_not(None))
            .values(stale_marked_at=None)
            .execution_options(synchronize_session=False)
        )
    audit.record(
        s,
        space.id,
        actor,
        "space.stale_policy",
        space.id,
        {"before": before, "after": {"after_days": after_days, "action": action}},
    )


def policy_json(space: Space) -> dict[str, object]:
    return {"after_days": space.stale_after_days, "action": space.stale_action}


def _away_since(node: Node) -> dt.datetime:
    return aware(node.state_since)


def _ephemeral_due(state: str, since: dt.datetime, ttl: int, now: dt.datetime) -> bool:
    wait = max(ttl, UNSEEN_GRACE) if state == NodeState.UNSEEN.value else ttl
    return aware(since) + dt.timedelta(seconds=wait) <= now


def _remove(s: Session, node: Node, actor: str, why: str, details: dict[str, object]) -> None:
    audit.record(
        s,
        node.space_id,
        actor,
        "node.removed",
        node.id,
        {"hostname": node.hostname, "why": why, **details},
    )
    node_store.remove(s, node, actor)


def _reap_ephemeral(db: Database, now: dt.datetime) -> list[str]:
    with db.session() as s:
        rows = s.execute(
            select(Node.id, Node.state, Node.state_since, Node.ephemeral_ttl_seconds).where(
                Node.ephemeral_ttl_seconds.is_not(None), Node.state != NodeState.LIVE.value
            )
        ).all()
    due = [nid for nid, st, since, ttl in rows if _ephemeral_due(st, since, ttl or 0, now)]
    removed: list[str] = []
    for i in range(0, len(due), BATCH):
        with db.session(write_lock=True) as s:
            for node_id in due[i : i + BATCH]:
                node = s.get(Node, node_id, with_for_update=True)
                if node is None or node.state == NodeState.LIVE.value:
                    continue  # gone already, or back since the first read
                ttl = node.ephemeral_ttl_seconds
                if ttl is None or not _ephemeral_due(node.state, node.state_since, ttl, now):
                    continue
                _remove(
                    s,
                    node,
                    "policy:ephemeral",
                    f"ephemeral: not live for {ttl} s",
                    {"ttl_seconds": ttl, "away_since": _away_since(node).isoformat()},
                )
                removed.append(node_id)
    return removed


def _reap_stale(db: Database, now: dt.datetime, out: Reaped) -> None:
    with db.session() as s:
        spaces = s.execute(
            select(Space.id, Space.stale_after_days, Space.stale_action).where(
                Space.stale_after_days.is_not(None)
            )
        ).all()
    for space_id, days, action in spaces:
        cutoff = now - dt.timedelta(days=days or 0)
        q = select(Node.id).where(
            Node.space_id == space_id,
            Node.state != NodeState.LIVE.value,
            Node.state_since < cutoff,
        )
        if action == "mark":
            q = q.where(Node.stale_marked_at.is_(None))
        with db.session() as s:
            due = list(s.scalars(q))
        for i in range(0, len(due), BATCH):
            with db.session(write_lock=True) as s:
                for node_id in due[i : i + BATCH]:
                    node = s.get(Node, node_id, with_for_update=True)
                    if (
                        node is None
                        or node.space_id != space_id
                        or node.state == NodeState.LIVE.value
                        or _away_since(node) >= cutoff
                    ):
                        continue
                    details: dict[str, object] = {
                        "after_days": days,
                        "away_since": _away_since(node).isoformat(),
                    }
                    if action == "remove":
                        _remove(s, node, "policy:stale", f"not live for {days} days", details)
                        out.stale_removed.append(node_id)
                    elif node.stale_marked_at is None:
                        node.stale_marked_at = now
                        node_store.record_event(
                            s, node, "stale", cause=f"not live for {days} days: marked stale"
                        )
                        audit.record(
                            s,
                            space_id,
                            "policy:stale",
                            "node.marked_stale",
                            node.id,
                            {"hostname": node.hostname, **details},
                        )
                        out.stale_marked += 1


def reap(db: Database, now: dt.datetime) -> Reaped:
    """Remove due ephemeral nodes, apply every Space's stale policy, and clear
    the mark of nodes that came back. The ids removed are in the answer (the
    caller closes any link they still have)."""
    out = Reaped(ephemeral=_reap_ephemeral(db, now))
    _reap_stale(db, now, out)
    live_marked = (Node.stale_marked_at.is_not(None), Node.state == NodeState.LIVE.value)
    with db.session() as s:  # the write lock only when there is something to clear
        if s.scalar(select(Node.id).where(*live_marked).limit(1)) is None:
            return out
    with db.session(write_lock=True) as s:
        result = s.execute(
            update(Node)
            .where(*live_marked)
            .values(stale_marked_at=None)
            .execution_options(synchronize_session=False)
        )
        out.unmarked = int(getattr(result, "rowcount", 0) or 0)
    return out
