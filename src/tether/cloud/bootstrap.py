"""What `tether-cloud quickstart` prepares: an admin, a Space, its rooms and tokens.

Idempotent: a second run reuses the admin, the Space, its claiming token and
the quickstart's API token. That token is kept in `quickstart-api-token` (0600)
in the data dir, next to `secret.key`: the database holds only its hash, so
this file is how a later run can hand it out again. When the file is missing
or its token no longer works, a new token is made and every earlier
"quickstart" token of the admin is revoked, so no forgotten copy stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.atomic import write_atomic
from tether.cloud.db import Database
from tether.cloud.models import ApiToken, Room, Space, SpaceMember, User
from tether.cloud.secrets import SecretBox, new_password
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store

ADMIN_EMAIL = "admin@localhost"
SPACE_NAME = "My Space"
ROOM_NAME = "Default"
# The names of the token and of its file, not secrets.
API_TOKEN_NAME = "quickstart"  # noqa: S105
API_TOKEN_FILE = "quickstart-api-token"  # noqa: S105


@dataclass
class Prepared:
    admin_email: str
    admin_password: str | None  # None when the admin already existed
    space_id: str
    room_ids: list[str]  # All nodes first, then Default
    claim_token: str
    api_token: str
    api_token_file: Path
    api_token_new: bool  # made by this run (the previous one, if any, revoked)


def prepare(db: Database, box: SecretBox, data_dir: Path) -> Prepared:
    with db.session(write_lock=True) as s:
        password: str | None = None
        # Locks the admin's row on PostgreSQL: two runs at once make one token.
        admin = s.scalar(select(User).where(User.email == ADMIN_EMAIL).with_for_update())
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
        token_file = data_dir / API_TOKEN_FILE
        api_token, api_token_new = _api_token(s, admin, token_file)
        return Prepared(
            admin_email=admin.email,
            admin_password=password,
            space_id=space.id,
            room_ids=[all_nodes.id, default.id],
            claim_token=token,
            api_token=api_token,
            api_token_file=token_file,
            api_token_new=api_token_new,
        )


def _api_token(s: Session, admin: User, token_file: Path) -> tuple[str, bool]:
    """The quickstart's API token and whether it is new: the stored one while
    it works, else a new one, with the admin's other quickstart tokens revoked."""
    try:
        stored = token_file.read_text().strip()
    except FileNotFoundError:
        stored = ""
    found = user_store.api_token_owner(s, stored) if stored else None
    if found is not None and found[0].id == admin.id:
        return stored, False
    s.execute(
        update(ApiToken)
        .where(ApiToken.user_id == admin.id, ApiToken.name == API_TOKEN_NAME)
        .values(revoked=True)
    )
    token, _ = user_store.create_api_token(s, admin, API_TOKEN_NAME)
    write_atomic(token_file, token + "\n", mode=0o600)
    return token, True
