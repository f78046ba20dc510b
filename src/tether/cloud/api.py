"""The REST API for people and scripts: Spaces, members, rooms, claiming
tokens and nodes. Documented in docs/cloud-api.md and at /api/openapi.json."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.cloud.auth import Principal, require_user
from tether.cloud.body import int_field, read_json
from tether.cloud.db import Database
from tether.cloud.errors import ApiError, bad_request, forbidden, not_found
from tether.cloud.models import ClaimAudit, Room, Space, SpaceInvitation, User, utcnow
from tether.cloud.secrets import SecretBox, iso
from tether.cloud.store import claim_tokens
from tether.cloud.store import nodes as node_store
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store

log = logging.getLogger("tether.cloud.api")

MAX_TOKEN_LIFETIME = 10 * 365 * 86400  # a claiming token's "expires_in": at most 10 years


@dataclass
class Ctx:
    request: Request
    user: Principal
    body: dict[str, Any]
    db: Database
    s: Session

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def space(self, needed: str = "member") -> Space:
        """The path's Space if the caller may act on it with `needed` role."""
        space_id = self.param("space_id").lower()
        role = space_store.role_of(self.s, space_id, self.user.user_id)
        space = self.s.get(Space, space_id) if role else None
        if space is None:
            raise not_found("Space")
        if not space_store.at_least(role, needed):
            raise forbidden(f"This needs the {needed} role in the Space; you are {role}.")
        return space

    def room(self, space: Space) -> Room:
        room = space_store.room_in_space(self.s, space.id, self.param("room_id").lower())
        if room is None:
            raise not_found("War Room")
        return room

    def str_field(self, name: str) -> str:
        value = self.body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f'Field "{name}" is required and must be a non-empty string.')
        return value.strip()


Handler = Callable[[Ctx], Any]


def writing_get(fn: Handler) -> Handler:
    """Mark a GET handler that may write, so it takes the write lock up front."""
    fn.writes = True  # type: ignore[attr-defined]
    return fn


def endpoint(fn: Handler) -> Callable[[Request], Any]:
    """Wrap a sync handler: authenticate, parse JSON, run in a thread within
    one transaction, return JSON (or the handler's own Response). Writes take
    the write lock from the start (SQLite cannot upgrade a read transaction)."""
    writes = getattr(fn, "writes", False)

    async def wrapper(request: Request) -> Response:
        user = await require_user(request)
        body: dict[str, Any] = {}
        if request.method in ("POST", "PUT", "PATCH"):
            parsed = await read_json(request, optional=True)
            if parsed is not None:
                if not isinstance(parsed, dict):
                    raise bad_request("The body must be a JSON object.")
                body = parsed

        def run() -> Any:
            db: Database = request.app.state.db
            with db.session(write_lock=writes or request.method != "GET") as s:
                return fn(Ctx(request, user, body, db, s))

        try:
            result = await run_in_threadpool(run)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=201 if request.method == "POST" else 200)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


def space_json(space: Space, role: str) -> dict[str, Any]:
    return {"id": space.id, "name": space.name, "role": role, "created_at": iso(space.created_at)}


def room_json(s: Session, room: Room) -> dict[str, Any]:
    return {
        "id": room.id,
        "name": room.name,
        "is_all_nodes": room.is_all_nodes,
        "node_count": len(node_store.of_room(s, room.id)),
    }


# --- me ---------------------------------------------------------------------


@endpoint
def me(c: Ctx) -> Any:
    """The signed-in user and the Spaces they belong to."""
    return {
        "id": c.user.user_id,
        "email": c.user.email,
        "name": c.user.name,
        "spaces": [space_json(sp, r) for sp, r in space_store.spaces_of(c.s, c.user.user_id)],
    }


@endpoint
def create_my_token(c: Ctx) -> Any:
    """Create an API token for the signed-in user; the token is shown only in this answer."""
    user = c.s.get(User, c.user.user_id)
    assert user is not None
    name = c.body.get("name") if isinstance(c.body.get("name"), str) else "api"
    token, row = user_store.create_api_token(c.s, user, str(name))
    return {"token": token, "prefix": row.prefix, "name": row.name}


@endpoint
def list_my_tokens(c: Ctx) -> Any:
    """The signed-in user's API tokens (prefix and metadata, never the token);
    `last_used_at` is updated at most once a minute."""
    return [
        {
            "prefix": t.prefix,
            "name": t.name,
            "created_at": iso(t.created_at),
            "last_used_at": iso(t.last_used_at),
            "revoked": t.revoked,
        }
        for t in user_store.api_tokens_of(c.s, c.user.user_id)
    ]


@endpoint
def revoke_my_token(c: Ctx) -> Any:
    """Revoke one of the signed-in user's API tokens by its prefix; it stops
    working at once on this Cloud process (see docs/operations.md for others)."""
    prefix = c.param("prefix")
    if not user_store.revoke_api_token(c.s, c.user.user_id, prefix):
        raise ApiError(
            404,
            "ErrNotFound",
            f"You have no API token with prefix {prefix[:16]!r}; "
            "list yours with GET /api/v1/me/api-tokens.",
        )
    log.info("API token %s of %s revoked", prefix, c.user.email)
    return Response(status_code=204)


# --- spaces -----------------------------------------------------------------


@endpoint
def list_spaces(c: Ctx) -> Any:
    """The Spaces the signed-in user is a member of, with their role."""
    return [space_json(sp, r) for sp, r in space_store.spaces_of(c.s, c.user.user_id)]


@endpoint
def create_space(c: Ctx) -> Any:
    """Create a Space (JSON {"name"}); the creator becomes its admin."""
    user = c.s.get(User, c.user.user_id)
    assert user is not None
    space = space_store.create_space(c.s, c.str_field("name"), user)
    claim_tokens.rotate(c.s, c.request.app.state.secret_box, space.id, user.id)
    return space_json(space, "admin")


@endpoint
def get_space(c: Ctx) -> Any:
    """One Space with its rooms."""
    space = c.space()
    role = space_store.role_of(c.s, space.id, c.user.user_id) or "member"
    out = space_json(space, role)
    out["rooms"] = [room_json(c.s, r) for r in space_store.rooms(c.s, space.id)]
    return out


@endpoint
def rename_space(c: Ctx) -> Any:
    """Rename a Space (admin; JSON {"name"})."""
    space = c.space("admin")
    space.name = space_store.check_name(c.body.get("name"), "a Space")
    return space_json(space, "admin")


@endpoint
def delete_space(c: Ctx) -> Any:
    """Delete a Space with its rooms, tokens and nodes (admin)."""
    space = c.space("admin")
    node_ids = [n.id for n in node_store.of_space(c.s, space.id)]
    c.s.delete(space)
    # After the commit: close the live links of its nodes now (4003).
    links = c.request.app.state.links

    async def close_links() -> None:
        for node_id in node_ids:
            await links.close_node(node_id)

    return Response(status_code=204, background=BackgroundTask(close_links))


# --- members ----------------------------------------------------------------


@endpoint
def list_members(c: Ctx) -> Any:
    """Members of a Space and their roles."""
    space = c.space()
    return [
        {"user_id": u.id, "email": u.email, "name": u.name, "role": r}
        for u, r in space_store.members(c.s, space.id)
    ]


@endpoint
def add_member(c: Ctx) -> Any:
    """Invite someone by email with a role (admin; JSON {"email", "role"}).

    They become a member only when they accept, signed in as that email
    (`POST /api/v1/invitations/{invitation_id}/accept`); the answer is the same
    whether or not an account has the email yet. The token is shown only here."""
    space = c.space("admin")
    email, role = c.str_field("email"), str(c.body.get("role", "member"))
    try:
        token, inv = space_store.invite(c.s, space.id, email, role, c.user.user_id, utcnow())
    except space_store.AlreadyMember as exc:
        raise ApiError(
            409,
            "ErrAlreadyMember",
            f"{exc}; change their role with PATCH {c.request.url.path}/{{user_id}}.",
        ) from None
    log.info(
        "invitation %s to space %s (role %s) made by %s", inv.prefix, space.id, role, c.user.email
    )
    return {**invitation_json(c.s, inv), "token": token}


def invitation_json(s: Session, inv: SpaceInvitation) -> dict[str, Any]:
    space = s.get(Space, inv.space_id)
    inviter = s.get(User, inv.invited_by) if inv.invited_by else None
    return {
        "id": inv.id,
        "space": {"id": inv.space_id, "name": space.name if space else ""},
        "email": inv.email,
        "role": inv.role,
        "state": space_store.invitation_state(inv, utcnow()),
        "invited_by": inviter.email if inviter else None,
        "created_at": iso(inv.created_at),
        "expires_at": iso(inv.expires_at),
    }


@endpoint
def list_space_invitations(c: Ctx) -> Any:
    """A Space's open invitations, newest first, expired ones too (admin)."""
    space = c.space("admin")
    return [invitation_json(c.s, i) for i in space_store.invitations_of_space(c.s, space.id)]


@endpoint
def revoke_invitation(c: Ctx) -> Any:
    """Withdraw an open invitation (admin); accepting it then gets 410."""
    space = c.space("admin")
    if not space_store.revoke_invitation(c.s, space.id, c.param("invitation_id"), utcnow()):
        raise not_found("Open invitation")
    return Response(status_code=204)


@endpoint
def my_invitations(c: Ctx) -> Any:
    """The invitations the signed-in user can accept now, oldest first."""
    return [
        invitation_json(c.s, i) for i in space_store.invitations_for(c.s, c.user.email, utcnow())
    ]


CLOSED = {
    "expired": (410, "ErrInvitationExpired", "This invitation has expired"),
    "revoked": (410, "ErrInvitationRevoked", "A Space admin withdrew or replaced this invitation"),
    "accepted": (409, "ErrInvitationAnswered", "You already accepted this invitation"),
    "declined": (409, "ErrInvitationAnswered", "You already declined this invitation"),
}


def invitation_closed(exc: space_store.InvitationClosed) -> ApiError:
    status, key, what = CLOSED[exc.state]
    return ApiError(
        status, key, f"{what}; ask an admin of the Space to invite you again if you want to join."
    )


def _answer(c: Ctx, inv: SpaceInvitation | None, accepting: bool) -> Any:
    """Accept or decline an invitation the caller's email was given."""
    if inv is None:
        raise ApiError(
            404,
            "ErrNotFound",
            "No invitation by that id for your account; list yours with GET /api/v1/invitations "
            "(an invitation counts only for the email it was sent to).",
        )
    try:
        if not accepting:
            space_store.decline(c.s, inv, utcnow())
            return Response(status_code=204)
        user = c.s.get(User, c.user.user_id)
        assert user is not None
        space_store.accept(c.s, inv, user, utcnow())
    except space_store.InvitationClosed as exc:
        raise invitation_closed(exc) from None
    space = c.s.get(Space, inv.space_id)
    assert space is not None
    role = space_store.role_of(c.s, space.id, user.id) or inv.role
    log.info("invitation %s to space %s accepted by %s", inv.prefix, space.id, user.email)
    return JSONResponse(space_json(space, role))


@endpoint
def accept_invitation(c: Ctx) -> Any:
    """Accept an invitation made for your email: you become a member of its Space."""
    return _answer(c, space_store.invitation_for(c.s, c.param("invitation_id"), c.user.email), True)


@endpoint
def accept_invitation_token(c: Ctx) -> Any:
    """Accept an invitation by its token (JSON {"token"}); it must be for your email."""
    token = c.str_field("token")
    return _answer(c, space_store.invitation_by_token(c.s, token, c.user.email), True)


@endpoint
def decline_invitation(c: Ctx) -> Any:
    """Decline an invitation made for your email."""
    inv = space_store.invitation_for(c.s, c.param("invitation_id"), c.user.email)
    return _answer(c, inv, False)


@endpoint
def change_member(c: Ctx) -> Any:
    """Change a member's role (admin; JSON {"role"})."""
    space = c.space("admin")
    user = c.s.get(User, c.param("user_id"))
    if user is None or space_store.role_of(c.s, space.id, user.id) is None:
        raise not_found("Member")
    role = c.str_field("role")
    space_store.set_member(c.s, space.id, user, role)
    return {"user_id": user.id, "email": user.email, "role": role}


@endpoint
def remove_member(c: Ctx) -> Any:
    """Remove a member from a Space (admin)."""
    space = c.space("admin")
    if not space_store.remove_member(c.s, space.id, c.param("user_id")):
        raise not_found("Member")
    return Response(status_code=204)


# --- rooms ------------------------------------------------------------------


@endpoint
def list_rooms(c: Ctx) -> Any:
    """War Rooms of a Space; the first is "All nodes"."""
    space = c.space()
    return [room_json(c.s, r) for r in space_store.rooms(c.s, space.id)]


@endpoint
def create_room(c: Ctx) -> Any:
    """Create a War Room (manager or admin; JSON {"name"})."""
    space = c.space("manager")
    return room_json(c.s, space_store.create_room(c.s, space.id, c.str_field("name")))


@endpoint
def rename_room(c: Ctx) -> Any:
    """Rename a War Room (manager or admin; JSON {"name"})."""
    room = c.room(c.space("manager"))
    if room.is_all_nodes:
        raise bad_request('The "All nodes" room cannot be renamed.')
    room.name = space_store.check_name(c.body.get("name"), "a War Room")
    return room_json(c.s, room)


@endpoint
def delete_room(c: Ctx) -> Any:
    """Delete a War Room; its nodes stay in the Space (manager or admin)."""
    room = c.room(c.space("manager"))
    if room.is_all_nodes:
        raise bad_request(
            'The "All nodes" room cannot be deleted; it holds every node of the Space.'
        )
    c.s.delete(room)
    return Response(status_code=204)


@endpoint
def room_nodes(c: Ctx) -> Any:
    """Nodes in a War Room with their states."""
    room = c.room(c.space())
    return [node_store.node_json(n) for n in node_store.of_room(c.s, room.id)]


def _room_and_node(c: Ctx) -> tuple[Room, Any]:
    space = c.space("manager")
    room = c.room(space)
    node = node_store.in_space(c.s, space.id, c.param("node_id"))
    if node is None:
        raise not_found("Node")
    return room, node


@endpoint
def add_room_node(c: Ctx) -> Any:
    """Add a node of the Space to a War Room (manager or admin)."""
    room, node = _room_and_node(c)
    node_store.add_to_room(c.s, node, room)
    return Response(status_code=204)


@endpoint
def remove_room_node(c: Ctx) -> Any:
    """Take a node out of a War Room; it stays in the Space (manager or admin)."""
    room, node = _room_and_node(c)
    if room.is_all_nodes:
        raise bad_request(
            'A node cannot leave the "All nodes" room; remove it from the Space instead.'
        )
    node_store.remove_from_room(c.s, node, room)
    return Response(status_code=204)


# --- claiming token ---------------------------------------------------------


def _token_json(token: str, row: Any) -> dict[str, Any]:
    return {
        "token": token,
        "prefix": row.prefix,
        "created_at": iso(row.created_at),
        "expires_at": iso(row.expires_at),
    }


@endpoint
@writing_get
def get_claim_token(c: Ctx) -> Any:
    """The Space's claiming token (Space admins only)."""
    space = c.space("admin")
    box: SecretBox = c.request.app.state.secret_box
    token, row = claim_tokens.ensure(c.s, box, space.id, c.user.user_id)
    return _token_json(token, row)


@endpoint
def rotate_claim_token(c: Ctx) -> Any:
    """Rotate the claiming token (admin). The old one stops working at once;
    claimed nodes are not affected. Optional JSON {"expires_in": seconds}."""
    space = c.space("admin")
    expires_in = int_field(c.body, "expires_in", 1, MAX_TOKEN_LIFETIME, " seconds")
    expires_at = None if expires_in is None else utcnow() + dt.timedelta(seconds=expires_in)
    token, row = claim_tokens.rotate(
        c.s, c.request.app.state.secret_box, space.id, c.user.user_id, expires_at
    )
    log.info(
        "claiming token of space %s rotated by %s (new prefix %s)",
        space.id,
        c.user.email,
        row.prefix,
    )
    return _token_json(token, row)


@endpoint
def claim_audit(c: Ctx) -> Any:
    """The latest claim attempts into a Space (admin)."""
    from sqlalchemy import select

    space = c.space("admin")
    rows = c.s.scalars(
        select(ClaimAudit)
        .where(ClaimAudit.space_id == space.id)
        .order_by(ClaimAudit.id.desc())
        .limit(200)
    )
    return [
        {
            "at": iso(a.at),
            "token_prefix": a.token_prefix,
            "node_id": a.node_id,
            "address": a.address,
            "result": a.result,
        }
        for a in rows
    ]


# --- nodes ------------------------------------------------------------------


@endpoint
def list_nodes(c: Ctx) -> Any:
    """Nodes of a Space with their states (unseen, live, offline)."""
    space = c.space()
    return [node_store.node_json(n) for n in node_store.of_space(c.s, space.id)]


@endpoint
def get_node(c: Ctx) -> Any:
    """One node with its recent events."""
    space = c.space()
    node = node_store.in_space(c.s, space.id, c.param("node_id"))
    if node is None:
        raise not_found("Node")
    out = node_store.node_json(node)
    out["events"] = [node_store.event_json(e) for e in node_store.events(c.s, node.id)]
    return out


@endpoint
def delete_node(c: Ctx) -> Any:
    """Remove a node from its Space, in any state; its key stops working (manager or admin)."""
    space = c.space("manager")
    node = node_store.in_space(c.s, space.id, c.param("node_id"))
    if node is None:
        raise not_found("Node")
    node_id = node.id
    node_store.remove(c.s, node, c.user.email)
    log.info("node %s removed from space %s by %s", node_id, space.id, c.user.email)
    # After the commit: close its live link now (4003), wherever it is held.
    links = c.request.app.state.links
    return Response(status_code=204, background=BackgroundTask(links.close_node, node_id))


def routes() -> list[Route]:
    sp = "/api/v1/spaces/{space_id}"
    return [
        Route("/api/v1/me", me, methods=["GET"]),
        Route("/api/v1/me/api-tokens", create_my_token, methods=["POST"]),
        Route("/api/v1/me/api-tokens", list_my_tokens, methods=["GET"]),
        Route("/api/v1/me/api-tokens/{prefix}", revoke_my_token, methods=["DELETE"]),
        Route("/api/v1/spaces", list_spaces, methods=["GET"]),
        Route("/api/v1/spaces", create_space, methods=["POST"]),
        Route(sp, get_space, methods=["GET"]),
        Route(sp, rename_space, methods=["PATCH"]),
        Route(sp, delete_space, methods=["DELETE"]),
        Route(f"{sp}/members", list_members, methods=["GET"]),
        Route(f"{sp}/members", add_member, methods=["POST"]),
        Route(sp + "/members/{user_id}", change_member, methods=["PATCH"]),
        Route(sp + "/members/{user_id}", remove_member, methods=["DELETE"]),
        Route(f"{sp}/invitations", list_space_invitations, methods=["GET"]),
        Route(sp + "/invitations/{invitation_id}", revoke_invitation, methods=["DELETE"]),
        Route("/api/v1/invitations", my_invitations, methods=["GET"]),
        Route("/api/v1/invitations/accept", accept_invitation_token, methods=["POST"]),
        Route("/api/v1/invitations/{invitation_id}/accept", accept_invitation, methods=["POST"]),
        Route("/api/v1/invitations/{invitation_id}/decline", decline_invitation, methods=["POST"]),
        Route(f"{sp}/rooms", list_rooms, methods=["GET"]),
        Route(f"{sp}/rooms", create_room, methods=["POST"]),
        Route(sp + "/rooms/{room_id}", rename_room, methods=["PATCH"]),
        Route(sp + "/rooms/{room_id}", delete_room, methods=["DELETE"]),
        Route(sp + "/rooms/{room_id}/nodes", room_nodes, methods=["GET"]),
        Route(sp + "/rooms/{room_id}/nodes/{node_id}", add_room_node, methods=["PUT"]),
        Route(sp + "/rooms/{room_id}/nodes/{node_id}", remove_room_node, methods=["DELETE"]),
        Route(f"{sp}/claim-token", get_claim_token, methods=["GET"]),
        Route(f"{sp}/claim-token", rotate_claim_token, methods=["POST"]),
        Route(f"{sp}/claim-audit", claim_audit, methods=["GET"]),
        Route(f"{sp}/nodes", list_nodes, methods=["GET"]),
        Route(sp + "/nodes/{node_id}", get_node, methods=["GET"]),
        Route(sp + "/nodes/{node_id}", delete_node, methods=["DELETE"]),
    ]
