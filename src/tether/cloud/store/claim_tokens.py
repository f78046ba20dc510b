"""Claiming tokens: one active per Space, rotated in one transaction."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.cloud.models import ClaimToken, utcnow
from tether.cloud.secrets import CLAIM_KIND, SecretBox, new_token, sha256_hex


def active(s: Session, space_id: str) -> ClaimToken | None:
    return s.scalar(
        select(ClaimToken)
        .where(ClaimToken.space_id == space_id, ClaimToken.revoked_at.is_(None))
        .order_by(ClaimToken.created_at.desc())
    )


def rotate(
    s: Session,
    box: SecretBox,
    space_id: str,
    created_by: str | None,
    expires_at: dt.datetime | None = None,
) -> tuple[str, ClaimToken]:
    """Revoke the Space's active token and make a new one. Call inside a
    write-locked session so a racing claim sees either the old row valid and
    commits first, or the old row revoked."""
    now = utcnow()
    s.execute(
        update(ClaimToken)
        .where(ClaimToken.space_id == space_id, ClaimToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    token, prefix = new_token(CLAIM_KIND)
    row = ClaimToken(
        space_id=space_id,
        prefix=prefix,
        token_hash=sha256_hex(token),
        token_encrypted=box.seal(token),
        created_at=now,
        expires_at=expires_at,
        created_by=created_by,
    )
    s.add(row)
    s.flush()
    return token, row


def ensure(
    s: Session, box: SecretBox, space_id: str, created_by: str | None
) -> tuple[str, ClaimToken]:
    """The active token in clear, creating one if the Space has none (or the
    data dir's secret.key can no longer decrypt it)."""
    row = active(s, space_id)
    if row is not None:
        token = box.open(row.token_encrypted)
        if token is not None:
            return token, row
    return rotate(s, box, space_id, created_by)
