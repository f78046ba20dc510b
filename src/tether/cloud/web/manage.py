"""Manage Space: members, invitations and roles, War Rooms, the claiming token."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import space_ops
from tether.cloud.auth import Principal
from tether.cloud.models import utcnow
from tether.cloud.secrets import iso
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.web.common import (
    UiError,
    field,
    in_db,
    member_space,
    nav,
    page,
    posted,
    redirect,
    render,
    signed_in,
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
    sid = request.path_params["space_id"]

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid)
        ctx = nav(s, user, space, role)
        ctx["title"] = f"Manage {space.name}"
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

    ctx = await in_db(request, load)
    ctx["flash"] = FLASH.get(request.query_params.get("done", ""))
    return render(request, "manage.html", ctx)


def _back(sid: str, done: str) -> Response:
    return redirect(f"/spaces/{sid}/manage?done={done}")


@page
async def add_member(request: Request) -> Response:
    """Invite by email: the same answer whether or not the account exists."""
    sid = request.path_params["space_id"]

    def invite(s: Session, user: Principal, form: FormData) -> None:
        try:
            space_ops.invite(s, user, sid, field(form, "email"), field(form, "role") or "member")
        except space_store.AlreadyMember as exc:
            raise UiError(409, f"{str(exc).capitalize()}; change their role in the list.") from None

    await posted(request, invite)
    return _back(sid, "member-invited")


@page
async def revoke_invitation(request: Request) -> Response:
    sid, iid = request.path_params["space_id"], request.path_params["invitation_id"]
    await posted(request, lambda s, user, _: space_ops.revoke_invitation(s, user, sid, iid))
    return _back(sid, "invitation-revoked")


@page
async def change_member(request: Request) -> Response:
    sid, uid = request.path_params["space_id"], request.path_params["user_id"]
    await posted(
        request,
        lambda s, user, form: space_ops.change_member(s, user, sid, uid, field(form, "role")),
    )
    return _back(sid, "member-changed")


@page
async def remove_member(request: Request) -> Response:
    sid, uid = request.path_params["space_id"], request.path_params["user_id"]
    await posted(request, lambda s, user, _: space_ops.remove_member(s, user, sid, uid))
    return _back(sid, "member-removed")


@page
async def create_room(request: Request) -> Response:
    sid = request.path_params["space_id"]
    room = await posted(
        request, lambda s, user, form: space_ops.create_room(s, user, sid, field(form, "name"))
    )
    return redirect(f"/spaces/{sid}/rooms/{room.id}")


@page
async def rename_room(request: Request) -> Response:
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]
    await posted(
        request,
        lambda s, user, form: space_ops.rename_room(s, user, sid, rid, field(form, "name")),
    )
    return _back(sid, "room-renamed")


@page
async def delete_room(request: Request) -> Response:
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]
    await posted(request, lambda s, user, _: space_ops.delete_room(s, user, sid, rid))
    return _back(sid, "room-deleted")


@page
async def rename_space(request: Request) -> Response:
    sid = request.path_params["space_id"]
    await posted(
        request, lambda s, user, form: space_ops.rename_space(s, user, sid, field(form, "name"))
    )
    return _back(sid, "space-renamed")


@page
async def rotate_token(request: Request) -> Response:
    sid, box = request.path_params["space_id"], request.app.state.secret_box

    def rotate(s: Session, user: Principal, form: FormData) -> None:
        if field(form, "confirm") != "yes":
            raise UiError(400, "Tick the confirmation box to rotate the claiming token.")
        space_ops.rotate_claim_token(s, box, user, sid)

    await posted(request, rotate)
    return _back(sid, "token-rotated")
