"""Claiming tokens: a Space's default token and its named tokens.

The default token (`is_default`, named "default") is the one the Connect Nodes
page and `tether-cloud token show|rotate` handle: its clear text is kept
Fernet-sealed so an admin can read it again, and rotating it revokes the old
one in the same transaction. Named tokens are created and revoked one by one;
their secret is shown once at creation and only its SHA-256 is kept. Each
may carry an expiry, a maximum number of uses (nodes it may enroll), rooms
and labels it gives the nodes, and an "ephemeral" flag with its TTL: the
node is removed after that long offline (tether.cloud.stale_nodes).

A use is taken by one conditional UPDATE in the claim's transaction
(`take_use`), so N concurrent claims on a 1-use token give one success on
SQLite and PostgreSQL alike. Revoking stops new claims at once; nodes
already enrolled stay.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tether.cloud import node_metadata
from tether.cloud.models import ClaimToken, ClaimTokenUse, utcnow
from tether.cloud.secrets import CLAIM_KIND, SecretBox, aware, iso, new_token, sha256_hex
from tether.cloud.store import labels as label_store
from tether.cloud.store import spaces as space_store

DEFAULT_NAME = "default"
DEFAULT_EPHEMERAL_TTL = 3600  # = tether.cloud.stale_nodes.DEFAULT_EPHEMERAL_TTL
MAX_USES = 1_000_000


def active(s: Session, space_id: str) -> ClaimToken | None:
    """The Space's current default token."""
    return s.scalar(
        select(ClaimToken)
        .where(
            ClaimToken.space_id == space_id,
            ClaimToken.is_default.is_(True),
            ClaimToken.revoked_at.is_(None),
        )
        .order_by(ClaimToken.created_at.desc())
    )


def rotate(
    s: Session,
    box: SecretBox,
    space_id: str,
    created_by: str | None,
    expires_at: dt.datetime | None = None,
) -> tuple[str, ClaimToken]:
    """Revoke the Space's default token and make a new one. Call inside a
    write-locked session so a racing claim sees either the old row valid and
    commits first, or the old row revoked. Named tokens are left alone."""
    now = utcnow()
    s.execute(
        update(ClaimToken)
        .where(
            ClaimToken.space_id == space_id,
            ClaimToken.is_default.is_(True),
            ClaimToken.revoked_at.is_(None),
        )
        .values(revoked_at=now, revoked_by="rotation")
    )
    return _add(
        s,
        box,
        space_id=space_id,
        name=DEFAULT_NAME,
        is_default=True,
        created_at=now,
        expires_at=expires_at,
        created_by=created_by,
        rooms="[]",
        labels="{}",
        ephemeral=False,
    )


def _add(s: Session, box: SecretBox | None, **fields: Any) -> tuple[str, ClaimToken]:
    """A new token row with `fields`; returns (token in clear, row). Its
    secret is made here and stored only as a hash (and, with `box`, sealed:
    the default token Connect Nodes shows again)."""
    token, prefix = new_token(CLAIM_KIND)
    row = ClaimToken(
        prefix=prefix,
        token_hash=sha256_hex(token),
        token_encrypted=box.seal(token) if box is not None else None,
        uses=0,
        **fields,
    )
    s.add(row)
    s.flush()
    return token, row


def ensure(
    s: Session, box: SecretBox, space_id: str, created_by: str | None
) -> tuple[str, ClaimToken]:
    """The default token in clear, creating one if the Space has none (or the
    data dir's secret.key can no longer decrypt it)."""
    row = active(s, space_id)
    if row is not None and row.token_encrypted is not None:
        token = box.open(row.token_encrypted)
        if token is not None:
            return token, row
    return rotate(s, box, space_id, created_by)


def _room_ids(s: Session, space_id: str, rooms: object) -> list[str]:
    """Room ids or names of the Space, as ids (the "All nodes" room is implied)."""
    if rooms is None:
        return []
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise ValueError('"rooms" must be a list of War Room ids or names.')
    space_rooms = space_store.rooms(s, space_id)
    by_id = {r.id: r for r in space_rooms}
    by_name = {r.name: r for r in space_rooms}
    out: list[str] = []
    for ref in rooms:
        room = by_id.get(ref.strip().lower()) or by_name.get(ref.strip())
        if room is None:
            raise ValueError(
                f"War Room {ref[:80]!r} is not in this Space; list its rooms with "
                "GET /api/v1/spaces/{space_id}/rooms."
            )
        if not room.is_all_nodes and room.id not in out:
            out.append(room.id)
    return out


def create(
    s: Session,
    space_id: str,
    name: object,
    created_by: str | None,
    *,
    expires_at: dt.datetime | None = None,
    max_uses: int | None = None,
    rooms: object = None,
    labels: object = None,
    ephemeral: bool = False,
    ephemeral_ttl: int | None = None,
) -> tuple[str, ClaimToken]:
    """A new named token; returns (token in clear, row). The clear token is
    not kept: this is the only time it can be shown. An ephemeral token's
    nodes are removed after `ephemeral_ttl` seconds not live
    (tether.cloud.stale_nodes; the caller checks its range)."""
    clean_name = space_store.check_name(name, "A claiming token")
    why = node_metadata.problem(clean_name, 200)
    if why is not None:
        raise ValueError(f"The claiming token's name {why}; use printable characters.")
    taken = s.scalar(
        select(ClaimToken.id).where(
            ClaimToken.space_id == space_id,
            ClaimToken.name == clean_name,
            ClaimToken.revoked_at.is_(None),
        )
    )
    if taken is not None:
        raise ValueError(
            f"The Space already has a claiming token named {clean_name!r}; pick another name "
            "or revoke that one first."
        )
    if max_uses is not None and not 1 <= max_uses <= MAX_USES:
        raise ValueError(f"max_uses must be 1 to {MAX_USES}, or left out for no limit.")
    room_ids = _room_ids(s, space_id, rooms)
    clean_labels = label_store.check_labels(labels)
    return _add(
        s,
        None,
        space_id=space_id,
        name=clean_name,
        is_default=False,
        created_at=utcnow(),
        expires_at=expires_at,
        created_by=created_by,
        max_uses=max_uses,
        ephemeral=ephemeral,
        ephemeral_ttl_seconds=(ephemeral_ttl or DEFAULT_EPHEMERAL_TTL) if ephemeral else None,
        rooms=json.dumps(room_ids),
        labels=json.dumps(clean_labels, sort_keys=True),
    )


def of_space(s: Session, space_id: str, include_revoked: bool = True) -> list[ClaimToken]:
    """The Space's tokens, default first, then newest first."""
    q = select(ClaimToken).where(ClaimToken.space_id == space_id)
    if not include_revoked:
        q = q.where(ClaimToken.revoked_at.is_(None))
    return list(s.scalars(q.order_by(ClaimToken.is_default.desc(), ClaimToken.created_at.desc())))


def find(s: Session, space_id: str, ref: str) -> ClaimToken | None:
    """A token of the Space by id, prefix or (unrevoked) name."""
    ref = ref.strip()
    if node_metadata.problem(ref, 200) is not None:  # NUL and the like never reach the database
        return None
    by_key = s.scalar(
        select(ClaimToken).where(
            ClaimToken.space_id == space_id,
            or_(ClaimToken.id == ref.lower(), ClaimToken.prefix == ref.lower()),
        )
    )
    if by_key is not None:
        return by_key
    return s.scalar(
        select(ClaimToken)
        .where(
            ClaimToken.space_id == space_id,
            ClaimToken.name == ref,
            ClaimToken.revoked_at.is_(None),
        )
        .order_by(ClaimToken.created_at.desc())
    )


def revoke(s: Session, row: ClaimToken, by: str, now: dt.datetime | None = None) -> bool:
    """Stop new claims with the token at once (enrolled nodes stay); False if
    it was already revoked."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = now or utcnow()
    row.revoked_by = by
    s.flush()
    return True


def take_use(s: Session, token_id: str, now: dt.datetime) -> bool:
    """Take one use of the token if it is still usable, atomically: one
    conditional UPDATE, so of racing claims only as many as the token has
    uses left see a row updated."""
    result = s.execute(
        update(ClaimToken)
        .where(
            ClaimToken.id == token_id,
            ClaimToken.revoked_at.is_(None),
            or_(ClaimToken.max_uses.is_(None), ClaimToken.uses < ClaimToken.max_uses),
            or_(ClaimToken.expires_at.is_(None), ClaimToken.expires_at > now),
        )
        .values(uses=ClaimToken.uses + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def record_use(s: Session, row: ClaimToken, node_id: str, address: str | None, result: str) -> None:
    s.add(ClaimTokenUse(token_id=row.id, node_id=node_id, address=address, result=result))


def uses_of(s: Session, token_id: str, limit: int = 500) -> list[ClaimTokenUse]:
    return list(
        s.scalars(
            select(ClaimTokenUse)
            .where(ClaimTokenUse.token_id == token_id)
            .order_by(ClaimTokenUse.id.desc())
            .limit(limit)
        )
    )


def state(row: ClaimToken, now: dt.datetime) -> str:
    """active, revoked, expired or used_up."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and aware(row.expires_at) <= now:
        return "expired"
    if row.max_uses is not None and row.uses >= row.max_uses:
        return "used_up"
    return "active"


def room_ids(row: ClaimToken) -> list[str]:
    return [str(r) for r in json.loads(row.rooms or "[]")]


def labels_of(row: ClaimToken) -> dict[str, str]:
    return {str(k): str(v) for k, v in json.loads(row.labels or "{}").items()}


def token_json(row: ClaimToken, now: dt.datetime | None = None) -> dict[str, Any]:
    """A token's metadata (never its secret)."""
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "default": row.is_default,
        "state": state(row, now or utcnow()),
        "created_at": iso(row.created_at),
        "expires_at": iso(row.expires_at),
        "max_uses": row.max_uses,
        "uses": row.uses,
        "rooms": room_ids(row),
        "labels": labels_of(row),
        "ephemeral": row.ephemeral,
        "ephemeral_ttl": row.ephemeral_ttl_seconds,
        "revoked_at": iso(row.revoked_at),
        "revoked_by": row.revoked_by,
    }


def use_json(use: ClaimTokenUse) -> dict[str, Any]:
    return {
        "node_id": use.node_id,
        "at": iso(use.at),
        "address": use.address,
        "result": use.result,
    }
