"""Spaces, their members and roles, and their War Rooms."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.cloud.models import Room, Space, SpaceMember, User

ROLES = ("admin", "manager", "member")
_RANK = {"member": 0, "manager": 1, "admin": 2}
ALL_NODES = "All nodes"


def at_least(role: str | None, needed: str) -> bool:
    return role is not None and _RANK[role] >= _RANK[needed]


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
        raise ValueError(f"{what} name must be 1 to 200 characters")
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
