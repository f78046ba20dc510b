"""Users, API tokens and browser login sessions."""

from __future__ import annotations

import datetime as dt
import secrets as pysecrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tether.cloud.models import ApiToken, LoginSession, User, utcnow
from tether.cloud.secrets import (
    API_KIND,
    aware,
    dummy_password_hash,
    hash_password,
    new_token,
    same_hash,
    sha256_hex,
    token_prefix,
    verify_password,
)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def by_email(s: Session, email: str) -> User | None:
    return s.scalar(select(User).where(User.email == normalize_email(email)))


def create_user(s: Session, email: str, password: str, name: str = "") -> User:
    email = normalize_email(email)
    if "@" not in email or len(email) > 320:
        raise ValueError(f"{email!r} is not an email address")
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    if by_email(s, email) is not None:
        raise ValueError(f"a user with email {email} already exists")
    user = User(
        email=email, name=name or email.split("@")[0], password_hash=hash_password(password)
    )
    s.add(user)
    s.flush()
    return user


def set_password(s: Session, user: User, password: str) -> None:
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    user.password_hash = hash_password(password)
    # A new password signs out every browser.
    s.execute(delete(LoginSession).where(LoginSession.user_id == user.id))


def authenticate(s: Session, email: str, password: str) -> User | None:
    user = by_email(s, email)
    if user is None:
        verify_password(dummy_password_hash(), password)
        return None
    return user if verify_password(user.password_hash, password) else None


SCOPES = ("read", "full")  # read: GET and HEAD only (tether.cloud.auth enforces it)


def create_api_token(
    s: Session,
    user: User,
    name: str,
    scope: str = "full",
    expires_at: dt.datetime | None = None,
) -> tuple[str, ApiToken]:
    if scope not in SCOPES:
        raise ValueError(f"scope {scope[:20]!r} is not one of: {', '.join(SCOPES)}")
    token, prefix = new_token(API_KIND)
    row = ApiToken(
        user_id=user.id,
        name=name[:200],
        prefix=prefix,
        token_hash=sha256_hex(token),
        scope=scope,
        expires_at=expires_at,
    )
    s.add(row)
    s.flush()
    return token, row


def api_token_expired(row: ApiToken, now: dt.datetime | None = None) -> bool:
    return row.expires_at is not None and aware(row.expires_at) <= (now or utcnow())


def api_token_owner(
    s: Session, token: str, now: dt.datetime | None = None
) -> tuple[User, ApiToken] | None:
    """The user a valid, unrevoked, unexpired API token belongs to, with its
    row (one indexed SELECT by prefix, then a constant-time hash comparison)."""
    prefix = token_prefix(token, API_KIND)
    if prefix is None:
        return None
    row = s.scalar(select(ApiToken).where(ApiToken.prefix == prefix))
    if row is None or row.revoked or not same_hash(token, row.token_hash):
        return None
    if api_token_expired(row, now):
        return None
    user = s.get(User, row.user_id)
    return (user, row) if user is not None else None


def user_for_api_token(s: Session, token: str) -> User | None:
    found = api_token_owner(s, token)
    return found[0] if found else None


# `last_used_at` is recorded at most this often: a write per request would
# serialise every API call on the database's write lock.
TOUCH_INTERVAL = dt.timedelta(minutes=1)


def touch_due(row: ApiToken) -> bool:
    return row.last_used_at is None or utcnow() - aware(row.last_used_at) > TOUCH_INTERVAL


def touch_api_token(s: Session, token: str) -> None:
    """Record use at most once a minute. Done in its own write transaction:
    upgrading a read transaction to a write fails at once on SQLite."""
    prefix = token_prefix(token, API_KIND)
    row = s.scalar(select(ApiToken).where(ApiToken.prefix == prefix)) if prefix else None
    if row is not None and touch_due(row):
        row.last_used_at = utcnow()


def api_tokens_of(s: Session, user_id: str) -> list[ApiToken]:
    return list(
        s.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at))
    )


def revoke_api_token(s: Session, user_id: str, prefix: str) -> bool:
    """Revoke one of the user's API tokens by its public prefix; False if none."""
    row = s.scalar(select(ApiToken).where(ApiToken.prefix == prefix, ApiToken.user_id == user_id))
    if row is None:
        return False
    row.revoked = True
    return True


def create_session(s: Session, user: User, days: int) -> tuple[str, LoginSession]:
    sid = pysecrets.token_urlsafe(32)
    row = LoginSession(
        id_hash=sha256_hex(sid),
        user_id=user.id,
        csrf=pysecrets.token_urlsafe(24),
        expires_at=utcnow() + dt.timedelta(days=days),
    )
    s.add(row)
    s.flush()
    return sid, row


def session_for(s: Session, sid: str) -> tuple[User, LoginSession] | None:
    row = s.get(LoginSession, sha256_hex(sid))
    if row is None:
        return None
    if aware(row.expires_at) < utcnow():
        return None
    user = s.get(User, row.user_id)
    return (user, row) if user else None


def delete_session(s: Session, sid: str) -> None:
    s.execute(delete(LoginSession).where(LoginSession.id_hash == sha256_hex(sid)))
