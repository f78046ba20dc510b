"""Spaces, their members and roles, invitations, and their War Rooms.

A Space admin adds people by invitation: nobody becomes a member of a Space
(sees it, its rooms or its nodes) without accepting, signed in as the invited
email. Otherwise anyone could put their own node in front of someone else's
browser. Only the Cloud's operator (`tether-cloud admin add-member`) adds a
member directly.

An invitation's token is also its link (`/invite/TOKEN`): someone without an
account opens it and sets a password, and only then is their account made
(`join_with_new_account`); an email that has an account accepts after signing in.
Only the token's SHA-256 is stored, compared in constant time.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from tether.cloud.models import Room, Space, SpaceInvitation, SpaceMember, User
from tether.cloud.secrets import aware, new_token, same_hash, sha256_hex, token_prefix
from tether.cloud.store.users import normalize_email

ROLES = ("admin", "manager", "member")
_RANK = {"member": 0, "manager": 1, "admin": 2}
ALL_NODES = "All nodes"


def at_least(role: str | None, needed: str) -> bool:
    return role is not None and _RANK[role] >= _RANK[needed]


class SpaceError(Exception):
    """A Space operation refused; the API answers it as JSON, the UI as a page."""


class NotFound(SpaceError):
    """`what` ("Space", "War Room", "Node", "Member", "Invitation", "Open
    invitation") does not exist, or the caller may not know it does."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class Forbidden(SpaceError):
    """The caller is a member of the Space with a role below `needed`."""

    def __init__(self, space_name: str, role: str, needed: str) -> None:
        super().__init__(f"needs the {needed} role; the caller is {role}")
        self.space_name = space_name
        self.role = role
        self.needed = needed


class AllNodesRoom(SpaceError):
    """The "All nodes" room holds every node: it cannot be renamed, deleted or left."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def require_role(
    s: Session, space_id: str, user_id: str, needed: str = "member"
) -> tuple[Space, str]:
    """The one role check: the Space and the user's role in it, else NotFound
    (not a member: a stranger cannot tell a Space exists) or Forbidden."""
    space_id = space_id.lower()
    role = role_of(s, space_id, user_id)
    space = s.get(Space, space_id) if role else None
    if space is None or role is None:
        raise NotFound("Space")
    if not at_least(role, needed):
        raise Forbidden(space.name, role, needed)
    return space, role


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
        raise ValueError(f"{what} name must be 1 to 200 characters")
    # Control characters (NUL above all, which PostgreSQL refuses in text) are
    # never part of a name someone meant to type.
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise ValueError(f"{what} name must not contain control characters")
    return name.strip()


def create_space(s: Session, name: str, owner: User) -> Space:
    space = Space(name=check_name(name, "a Space"))
    s.add(space)
    s.flush()
    s.add(SpaceMember(space_id=space.id, user_id=owner.id, role="admin"))
    s.add(Room(space_id=space.id, name=ALL_NODES, is_all_nodes=True))
    s.flush()
    return space


def role_of(s: Session, space_id: str, user_id: str) -> str | None:
    return s.scalar(
        select(SpaceMember.role).where(
            SpaceMember.space_id == space_id, SpaceMember.user_id == user_id
        )
    )


def member_of(user_id: str, space_id: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """The one membership rule as SQL, for a query over a Space's nodes or
    rooms: `user_id` is a member (any role) of the Space `space_id` names."""
    return exists().where(SpaceMember.space_id == space_id, SpaceMember.user_id == user_id)


def spaces_of(s: Session, user_id: str) -> list[tuple[Space, str]]:
    rows = s.execute(
        select(Space, SpaceMember.role)
        .join(SpaceMember, SpaceMember.space_id == Space.id)
        .where(SpaceMember.user_id == user_id)
        .order_by(Space.created_at, Space.name)
    )
    return [(space, role) for space, role in rows]


def members(s: Session, space_id: str) -> list[tuple[User, str]]:
    rows = s.execute(
        select(User, SpaceMember.role)
        .join(SpaceMember, SpaceMember.user_id == User.id)
        .where(SpaceMember.space_id == space_id)
        .order_by(User.email)
    )
    return [(u, r) for u, r in rows]


def set_member(s: Session, space_id: str, user: User, role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    row = s.get(SpaceMember, (space_id, user.id))
    if row is None:
        s.add(SpaceMember(space_id=space_id, user_id=user.id, role=role))
    else:
        if row.role == "admin" and role != "admin" and admin_count(s, space_id) <= 1:
            raise ValueError("a Space needs at least one admin")
        row.role = role
    s.flush()


def remove_member(s: Session, space_id: str, user_id: str) -> bool:
    row = s.get(SpaceMember, (space_id, user_id))
    if row is None:
        return False
    if row.role == "admin" and admin_count(s, space_id) <= 1:
        raise ValueError("a Space needs at least one admin")
    s.delete(row)
    return True


INVITE_KIND = "tin"
INVITATION_LIFETIME = dt.timedelta(days=7)
MAX_INVITATION_LIFETIME = dt.timedelta(days=30)


class AlreadyMember(ValueError):
    """The invited email already belongs to a member of the Space."""


class InvitationClosed(Exception):
    """The invitation can no longer be answered; `state` says why."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state  # expired | revoked | accepted | declined


def invitation_state(inv: SpaceInvitation, now: dt.datetime) -> str:
    """pending, expired, accepted, declined or revoked."""
    if inv.revoked_at is not None:
        return "revoked"
    if inv.accepted_at is not None:
        return "accepted"
    if inv.declined_at is not None:
        return "declined"
    return "expired" if aware(inv.expires_at) <= now else "pending"


def _open(s: Session, space_id: str, email: str) -> list[SpaceInvitation]:
    """Unanswered, unrevoked invitations of `email` to a Space (expired included)."""
    return list(
        s.scalars(
            select(SpaceInvitation).where(
                SpaceInvitation.space_id == space_id,
                SpaceInvitation.email == email,
                SpaceInvitation.accepted_at.is_(None),
                SpaceInvitation.declined_at.is_(None),
                SpaceInvitation.revoked_at.is_(None),
            )
        )
    )


def invite(
    s: Session,
    space_id: str,
    email: str,
    role: str,
    inviter_id: str | None,
    now: dt.datetime,
    lifetime: dt.timedelta = INVITATION_LIFETIME,
) -> tuple[str, SpaceInvitation]:
    """Invite `email` to a Space with `role`, whether or not an account has
    that email yet (the answer must not tell), valid for `lifetime`. A new
    invitation replaces an open one to the same email. Returns (token, invitation)."""
    if not dt.timedelta(seconds=1) <= lifetime <= MAX_INVITATION_LIFETIME:
        raise ValueError(f"an invitation lasts 1 second to {MAX_INVITATION_LIFETIME.days} days")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = normalize_email(email)
    if "@" not in email or len(email) > 320 or not email.isprintable():
        raise ValueError(f"{email[:320]!r} is not an email address")
    member = s.scalar(
        select(SpaceMember.user_id)
        .join(User, User.id == SpaceMember.user_id)
        .where(SpaceMember.space_id == space_id, User.email == email)
    )
    if member is not None:
        raise AlreadyMember(f"{email} is already a member of this Space")
    for old in _open(s, space_id, email):
        old.revoked_at = now
    token, prefix = new_token(INVITE_KIND)
    inv = SpaceInvitation(
        space_id=space_id,
        email=email,
        role=role,
        invited_by=inviter_id,
        prefix=prefix,
        token_hash=sha256_hex(token),
        created_at=now,
        expires_at=now + lifetime,
    )
    s.add(inv)
    s.flush()
    return token, inv


def invitations_of_space(s: Session, space_id: str) -> list[SpaceInvitation]:
    """A Space's unanswered, unrevoked invitations (expired ones too), newest first."""
    return list(
        s.scalars(
            select(SpaceInvitation)
            .where(
                SpaceInvitation.space_id == space_id,
                SpaceInvitation.accepted_at.is_(None),
                SpaceInvitation.declined_at.is_(None),
                SpaceInvitation.revoked_at.is_(None),
            )
            .order_by(SpaceInvitation.created_at.desc())
        )
    )


def invitations_for(s: Session, email: str, now: dt.datetime) -> list[SpaceInvitation]:
    """The invitations `email` can accept now, oldest first."""
    rows = s.scalars(
        select(SpaceInvitation)
        .where(
            SpaceInvitation.email == normalize_email(email),
            SpaceInvitation.accepted_at.is_(None),
            SpaceInvitation.declined_at.is_(None),
            SpaceInvitation.revoked_at.is_(None),
        )
        .order_by(SpaceInvitation.created_at)
    )
    return [inv for inv in rows if invitation_state(inv, now) == "pending"]


def _invitation(s: Session, invitation_id: str) -> SpaceInvitation | None:
    try:  # ids are UUIDs: anything else (NUL bytes included) never reaches the database
        key = str(uuid.UUID(invitation_id))
    except ValueError:
        return None
    return s.get(SpaceInvitation, key)


def invitation_for(s: Session, invitation_id: str, email: str) -> SpaceInvitation | None:
    """The invitation if it was made for `email`; None for anybody else."""
    inv = _invitation(s, invitation_id)
    return inv if inv is not None and inv.email == normalize_email(email) else None


def invitation_by_link(s: Session, token: str, lock: bool = False) -> SpaceInvitation | None:
    """The invitation whose token this is, in any state; None for a wrong or
    malformed token. Found by its public prefix, then the whole token's hash
    compared in constant time. `lock`: its row locked (PostgreSQL; SQLite's
    write transaction is serial already), so two answers at once use it once."""
    prefix = token_prefix(token, INVITE_KIND) if token.isprintable() else None
    inv = None
    if prefix is not None:
        query = select(SpaceInvitation).where(SpaceInvitation.prefix == prefix)
        inv = s.scalar(query.with_for_update() if lock else query)
    if inv is None or not same_hash(token, inv.token_hash):
        return None
    return inv


def invitation_by_token(s: Session, token: str, email: str) -> SpaceInvitation | None:
    inv = invitation_by_link(s, token)
    return inv if inv is not None and inv.email == normalize_email(email) else None


def invitation_parties(s: Session, inv: SpaceInvitation) -> tuple[str, str | None]:
    """The invitation's Space name ("" once deleted) and the email of who made
    it (None once their account is gone)."""
    space = s.get(Space, inv.space_id)
    inviter = s.get(User, inv.invited_by) if inv.invited_by else None
    return (space.name if space else "", inviter.email if inviter else None)


def _answerable(inv: SpaceInvitation, now: dt.datetime) -> None:
    state = invitation_state(inv, now)
    if state != "pending":
        raise InvitationClosed(state)


def accept(s: Session, inv: SpaceInvitation, user: User, now: dt.datetime) -> None:
    """Make `user` (whose email the invitation names) a member with the
    invited role; someone who became a member meanwhile keeps their role."""
    _answerable(inv, now)
    assert inv.email == user.email, "the caller checked the invitation is for this user"
    inv.accepted_at = now
    if s.get(SpaceMember, (inv.space_id, user.id)) is None:
        s.add(SpaceMember(space_id=inv.space_id, user_id=user.id, role=inv.role))
    s.flush()


class AccountExists(Exception):
    """The invited email has an account: it signs in and accepts instead."""


def join_with_new_account(
    s: Session, inv: SpaceInvitation, name: str, password_hash: str, now: dt.datetime
) -> User:
    """The invitee of an open invitation without an account sets a name and a
    password (hashed by the caller, outside the transaction): the account is
    made only now, as a member with the invited role, and the invitation is
    used up. AccountExists when the email has an account by now."""
    _answerable(inv, now)
    if s.scalar(select(User.id).where(User.email == inv.email)) is not None:
        raise AccountExists(inv.email)
    user = User(email=inv.email, name=check_name(name, "your"), password_hash=password_hash)
    s.add(user)
    s.flush()
    accept(s, inv, user, now)
    return user


def decline(s: Session, inv: SpaceInvitation, now: dt.datetime) -> None:
    _answerable(inv, now)
    inv.declined_at = now


def revoke_invitation(
    s: Session, space_id: str, invitation_id: str, now: dt.datetime
) -> SpaceInvitation | None:
    """Withdraw an open invitation of a Space; None if there is none by that id."""
    inv = _invitation(s, invitation_id)
    if inv is None or inv.space_id != space_id:
        return None
    if invitation_state(inv, now) not in ("pending", "expired"):
        return None
    inv.revoked_at = now
    return inv


def admin_count(s: Session, space_id: str) -> int:
    return int(
        s.scalar(
            select(func.count())
            .select_from(SpaceMember)
            .where(SpaceMember.space_id == space_id, SpaceMember.role == "admin")
        )
        or 0
    )


def rooms(s: Session, space_id: str) -> list[Room]:
    return list(
        s.scalars(
            select(Room)
            .where(Room.space_id == space_id)
            .order_by(Room.is_all_nodes.desc(), Room.created_at, Room.name)
        )
    )


def all_nodes_room(s: Session, space_id: str) -> Room:
    room = s.scalar(select(Room).where(Room.space_id == space_id, Room.is_all_nodes.is_(True)))
    assert room is not None, "every Space has an All nodes room"
    return room


def create_room(s: Session, space_id: str, name: str) -> Room:
    room = Room(space_id=space_id, name=check_name(name, "a War Room"))
    s.add(room)
    s.flush()
    return room


def room_in_space(s: Session, space_id: str, room_id: str) -> Room | None:
    room = s.get(Room, room_id)
    return room if room is not None and room.space_id == space_id else None
