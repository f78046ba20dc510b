"""What `tether-cloud quickstart` prepares: an admin, a Space, its rooms and tokens.

Idempotent: a second run reuses the admin and the Space. Only a fresh API token
is made each run, since an old one cannot be shown again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from tether.cloud.db import Database
from tether.cloud.models import Room, Space, SpaceMember
from tether.cloud.secrets import SecretBox, new_password
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store

ADMIN_EMAIL = "admin@localhost"
SPACE_NAME = "My Space"
ROOM_NAME = "Default"


@dataclass
class Prepared:
    admin_email: str
    admin_password: str | None  # None when the admin already existed
    space_id: str
    room_ids: list[str]  # All nodes first, then Default
    claim_token: str
    api_token: str


def prepare(db: Database, box: SecretBox) -> Prepared:
    with db.session(write_lock=True) as s:
        password: str | None = None
        admin = user_store.by_email(s, ADMIN_EMAIL)
        if admin is None:
            password = new_password()
            admin = user_store.create_user(s, ADMIN_EMAIL, password, name="Admin")
        space = s.scalar(
            select(Space)
            .join(SpaceMember, SpaceMember.space_id == Space.id)
            .where(SpaceMember.user_id == admin.id, SpaceMember.role == "admin")
            .where(Space.name == SPACE_NAME)
            .order_by(Space.created_at)
        )
        if space is None:
            space = space_store.create_space(s, SPACE_NAME, admin)
        all_nodes = space_store.all_nodes_room(s, space.id)
        default = s.scalar(select(Room).where(Room.space_id == space.id, Room.name == ROOM_NAME))
        if default is None:
            default = space_store.create_room(s, space.id, ROOM_NAME)
        token, _ = claim_tokens.ensure(s, box, space.id, admin.id)
        api_token, _ = user_store.create_api_token(s, admin, "quickstart")
        return Prepared(
            admin_email=admin.email,
            admin_password=password,
            space_id=space.id,
            room_ids=[all_nodes.id, default.id],
            claim_token=token,
            api_token=api_token,
        )
