"""Manage Space: members, invitations and roles, War Rooms, the claiming token."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import space_ops
from tether.cloud.models import Space, utcnow
from tether.cloud.secrets import iso
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.web.common import (
    Post,
    UiError,
    action,
    field,
    page,
    posted,
    redirect,
    signed_in,
    space_page,
)

FLASH = {
    "member-invited": "Invitation made. They become a member when they accept it: "
    "after signing in with that email, on their home page.",
    "invitation-revoked": "Invitation withdrawn.",
    "member-changed": "Role changed.",
    "member-removed": "Member removed.",
    "room-created": "War Room created.",
    "room-renamed": "War Room renamed.",
    "room-deleted": "War Room deleted; its nodes stay in the Space.",
    "token-rotated": "Claiming token rotated. The old token no longer works; "
    "nodes already connected are not affected.",
    "space-renamed": "Space renamed.",
}


@page
async def manage_page(request: Request) -> Response:
    user = await signed_in(request)

    def fill(s: Session, space: Space, role: str) -> dict[str, Any]:
        ctx: dict[str, Any] = {"title": f"Manage {space.name}"}
        ctx["members"] = [
            {
                "user_id": u.id,
                "email": u.email,
                "name": u.name,
                "role": r,
                "is_me": u.id == user.user_id,
            }
            for u, r in space_store.members(s, space.id)
        ]
        ctx["roles"] = list(space_store.ROLES)
        now = utcnow()
        ctx["invitations"] = [
            {
                "id": i.id,
                "email": i.email,
                "role": i.role,
                "state": space_store.invitation_state(i, now),
                "expires_at": iso(i.expires_at),
            }
            for i in (space_store.invitations_of_space(s, space.id) if role == "admin" else [])
        ]
        token = None
        if role == "admin":  # members and managers never see even the token's prefix
            row = claim_tokens.active(s, space.id)
            if row is not None:
                token = {
                    "prefix": row.prefix,
                    "created_at": iso(row.created_at),
                    "expires_at": iso(row.expires_at),
                }
        ctx["token"] = token
        return ctx

    return await space_page(request, user, "manage.html", fill, FLASH)


BACK = "/spaces/{space_id}/manage?done="


def _invite(p: Post) -> None:
    """Invite by email: the same answer whether or not the account exists."""
    try:
        space_ops.invite(p.s, p.user, p.sid, p.field("email"), p.field("role") or "member")
    except space_store.AlreadyMember as exc:
        raise UiError(409, f"{str(exc).capitalize()}; change their role in the list.") from None


def _rotate(p: Post) -> None:
    if p.field("confirm") != "yes":
        raise UiError(400, "Tick the confirmation box to rotate the claiming token.")
    space_ops.rotate_claim_token(p.s, p.box, p.user, p.sid)


add_member = action(BACK + "member-invited", _invite)
revoke_invitation = action(
    BACK + "invitation-revoked",
    lambda p: space_ops.revoke_invitation(p.s, p.user, p.sid, p.param("invitation_id")),
)
change_member = action(
    BACK + "member-changed",
    lambda p: space_ops.change_member(p.s, p.user, p.sid, p.param("user_id"), p.field("role")),
)
remove_member = action(
    BACK + "member-removed",
    lambda p: space_ops.remove_member(p.s, p.user, p.sid, p.param("user_id")),
)
rename_room = action(
    BACK + "room-renamed",
    lambda p: space_ops.rename_room(p.s, p.user, p.sid, p.param("room_id"), p.field("name")),
)
delete_room = action(
    BACK + "room-deleted",
    lambda p: space_ops.delete_room(p.s, p.user, p.sid, p.param("room_id")),
)
rename_space = action(
    BACK + "space-renamed",
    lambda p: space_ops.rename_space(p.s, p.user, p.sid, p.field("name")),
)
rotate_token = action(BACK + "token-rotated", _rotate)


@page
async def create_room(request: Request) -> Response:
    """Goes to the new room (its id is known only once it is made)."""
    sid = request.path_params["space_id"]
    room = await posted(
        request, lambda s, user, form: space_ops.create_room(s, user, sid, field(form, "name"))
    )
    return redirect(f"/spaces/{sid}/rooms/{room.id}")
