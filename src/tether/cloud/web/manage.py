"""Manage Space: members, invitations and roles, War Rooms, the claiming token."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud.models import User, utcnow
from tether.cloud.secrets import iso
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.web.common import (
    UiError,
    field,
    form_of,
    in_db,
    member_space,
    nav,
    page,
    redirect,
    render,
    signed_in,
)

log = logging.getLogger("tether.cloud.web")

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
    user = await signed_in(request)
    form = await form_of(request, user)
    sid, email, role = request.path_params["space_id"], field(form, "email"), field(form, "role")

    def invite(s: Session) -> str:
        space, _ = member_space(s, user, sid, "admin")
        try:
            _, inv = space_store.invite(
                s, space.id, email, role or "member", user.user_id, utcnow()
            )
        except space_store.AlreadyMember as exc:
            raise UiError(409, f"{str(exc).capitalize()}; change their role in the list.") from None
        return inv.prefix

    prefix = await in_db(request, invite, write=True)
    log.info("invitation %s to space %s made by %s in the UI", prefix, sid, user.email)
    return _back(sid, "member-invited")


@page
async def revoke_invitation(request: Request) -> Response:
    user = await signed_in(request)
    await form_of(request, user)
    sid, iid = request.path_params["space_id"], request.path_params["invitation_id"]

    def revoke(s: Session) -> None:
        space, _ = member_space(s, user, sid, "admin")
        if not space_store.revoke_invitation(s, space.id, iid, utcnow()):
            raise UiError(404, "That invitation is no longer open (it was answered or withdrawn).")

    await in_db(request, revoke, write=True)
    return _back(sid, "invitation-revoked")


@page
async def change_member(request: Request) -> Response:
    user = await signed_in(request)
    form = await form_of(request, user)
    sid, uid = request.path_params["space_id"], request.path_params["user_id"]

    def change(s: Session) -> None:
        space, _ = member_space(s, user, sid, "admin")
        target = s.get(User, uid)
        if target is None or space_store.role_of(s, space.id, uid) is None:
            raise UiError(404, "That person is no longer a member of this Space.")
        space_store.set_member(s, space.id, target, field(form, "role"))

    await in_db(request, change, write=True)
    return _back(sid, "member-changed")


@page
async def remove_member(request: Request) -> Response:
    user = await signed_in(request)
    await form_of(request, user)
    sid, uid = request.path_params["space_id"], request.path_params["user_id"]

    def remove(s: Session) -> None:
        space, _ = member_space(s, user, sid, "admin")
        if not space_store.remove_member(s, space.id, uid):
            raise UiError(404, "That person is no longer a member of this Space.")

    await in_db(request, remove, write=True)
    return _back(sid, "member-removed")


@page
async def create_room(request: Request) -> Response:
    user = await signed_in(request)
    form = await form_of(request, user)
    sid = request.path_params["space_id"]

    def create(s: Session) -> str:
        space, _ = member_space(s, user, sid, "manager")
        return space_store.create_room(s, space.id, field(form, "name")).id

    room_id = await in_db(request, create, write=True)
    return redirect(f"/spaces/{sid}/rooms/{room_id}")


def _editable_room(s: Session, user: Any, sid: str, rid: str) -> Any:
    space, _ = member_space(s, user, sid, "manager")
    room = space_store.room_in_space(s, space.id, rid.lower())
    if room is None:
        raise UiError(404, "This War Room does not exist (it may have been deleted).")
    if room.is_all_nodes:
        raise UiError(
            400,
            'The "All nodes" room holds every node of the Space; it cannot be renamed or deleted.',
        )
    return room


@page
async def rename_room(request: Request) -> Response:
    user = await signed_in(request)
    form = await form_of(request, user)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]

    def rename(s: Session) -> None:
        room = _editable_room(s, user, sid, rid)
        room.name = space_store.check_name(field(form, "name"), "a War Room")

    await in_db(request, rename, write=True)
    return _back(sid, "room-renamed")


@page
async def delete_room(request: Request) -> Response:
    user = await signed_in(request)
    await form_of(request, user)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]

    def delete(s: Session) -> None:
        s.delete(_editable_room(s, user, sid, rid))

    await in_db(request, delete, write=True)
    return _back(sid, "room-deleted")


@page
async def rename_space(request: Request) -> Response:
    user = await signed_in(request)
    form = await form_of(request, user)
    sid = request.path_params["space_id"]

    def rename(s: Session) -> None:
        space, _ = member_space(s, user, sid, "admin")
        space.name = space_store.check_name(field(form, "name"), "a Space")

    await in_db(request, rename, write=True)
    return _back(sid, "space-renamed")


@page
async def rotate_token(request: Request) -> Response:
    user = await signed_in(request)
    form = await form_of(request, user)
    sid = request.path_params["space_id"]
    if field(form, "confirm") != "yes":
        raise UiError(400, "Tick the confirmation box to rotate the claiming token.")

    def rotate(s: Session) -> str:
        space, _ = member_space(s, user, sid, "admin")
        _, row = claim_tokens.rotate(s, request.app.state.secret_box, space.id, user.user_id)
        return row.prefix

    prefix = await in_db(request, rotate, write=True)
    log.info(
        "claiming token of space %s rotated by %s in the UI (new prefix %s)",
        sid,
        user.email,
        prefix,
    )
    return _back(sid, "token-rotated")
