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

from tether.cloud import address, audit, bulk_remove, node_list, room_rules, space_ops, stale_nodes
from tether.cloud.auth import Principal, require_user
from tether.cloud.body import int_field, read_json
from tether.cloud.db import Database
from tether.cloud.errors import ApiError, bad_request, error_response, forbidden, not_found
from tether.cloud.models import ApiToken, ClaimAudit, Room, Space, SpaceInvitation, User, utcnow
from tether.cloud.secrets import SecretBox, iso
from tether.cloud.store import claim_tokens
from tether.cloud.store import labels as label_store
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
        space, _ = space_store.require_role(
            self.s, self.param("space_id"), self.user.user_id, needed
        )
        return space

    def room(self, space: Space) -> Room:
        return space_ops.room(self.s, space, self.param("room_id"))

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
        except space_store.SpaceError as exc:
            raise space_error(exc) from None
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=201 if request.method == "POST" else 200)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


def space_error(exc: space_store.SpaceError) -> ApiError:
    """A refused Space operation as the API's JSON error (403, 404 or 400)."""
    if isinstance(exc, space_store.Forbidden):
        return forbidden(f"This needs the {exc.needed} role in the Space; you are {exc.role}.")
    if isinstance(exc, space_store.AllNodesRoom):
        return bad_request(exc.message)
    assert isinstance(exc, space_store.NotFound), exc
    if exc.what == "Invitation":
        return ApiError(
            404,
            "ErrNotFound",
            "No invitation by that id for your account; list yours with GET /api/v1/invitations "
            "(an invitation counts only for the email it was sent to).",
        )
    return not_found(exc.what)


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
    scope = c.body.get("scope", "full")
    days = c.body.get("expires_in_days")
    if days is not None and (
        not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650
    ):
        raise bad_request("expires_in_days must be a whole number of days, 1 to 3650 (or absent).")
    if not isinstance(scope, str) or scope not in user_store.SCOPES:
        raise bad_request(f"scope must be one of: {', '.join(user_store.SCOPES)}.")
    expires = utcnow() + dt.timedelta(days=days) if days else None
    token, row = user_store.create_api_token(c.s, user, str(name), scope, expires)
    return {**api_token_json(row), "token": token}


def api_token_json(t: ApiToken) -> dict[str, Any]:
    """An API token as listed (never its secret)."""
    return {
        "prefix": t.prefix,
        "name": t.name,
        "scope": t.scope,
        "created_at": iso(t.created_at),
        "expires_at": iso(t.expires_at),
        "last_used_at": iso(t.last_used_at),
        "revoked": t.revoked,
        "expired": user_store.api_token_expired(t),
    }


@endpoint
def list_my_tokens(c: Ctx) -> Any:
    """The signed-in user's API tokens (prefix and metadata, never the token);
    `last_used_at` is updated at most once a minute."""
    return [api_token_json(t) for t in user_store.api_tokens_of(c.s, c.user.user_id)]


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
    box = c.request.app.state.secret_box
    return space_json(space_ops.create_space(c.s, box, c.user, c.str_field("name")), "admin")


@endpoint
def get_space(c: Ctx) -> Any:
    """One Space with its rooms."""
    space, role = space_store.require_role(c.s, c.param("space_id"), c.user.user_id)
    out = space_json(space, role)
    out["rooms"] = [room_json(c.s, r) for r in space_store.rooms(c.s, space.id)]
    return out


@endpoint
def rename_space(c: Ctx) -> Any:
    """Rename a Space (admin; JSON {"name"})."""
    space = space_ops.rename_space(c.s, c.user, c.param("space_id"), c.body.get("name"))
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
    """Invite someone by email with a role (admin; JSON {"email", "role",
    "expires_in"} seconds, 7 days by default, at most 30).

    They become a member only when they accept: by opening the answer's "url"
    (an account is made then if the email has none), or signed in as that email
    (`POST /api/v1/invitations/{invitation_id}/accept`); the answer is the same
    whether or not an account has the email yet. The token is shown only here."""
    email, role = c.str_field("email"), str(c.body.get("role", "member"))
    expires_in = c.body.get("expires_in")
    try:
        token, inv = space_ops.invite(c.s, c.user, c.param("space_id"), email, role, expires_in)
    except space_store.AlreadyMember as exc:
        raise ApiError(
            409,
            "ErrAlreadyMember",
            f"{exc}; change their role with PATCH {c.request.url.path}/{{user_id}}.",
        ) from None
    settings = c.request.app.state.settings
    base = address.url_for_page(
        settings.public_url, settings.scheme, c.request.headers.get("host", ""), settings.url
    )
    return {**invitation_json(c.s, inv), "token": token, "url": space_ops.invite_url(base, token)}


def invitation_json(s: Session, inv: SpaceInvitation) -> dict[str, Any]:
    space_name, inviter = space_store.invitation_parties(s, inv)
    return {
        "id": inv.id,
        "space": {"id": inv.space_id, "name": space_name},
        "email": inv.email,
        "role": inv.role,
        "state": space_store.invitation_state(inv, utcnow()),
        "invited_by": inviter,
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
    space_ops.revoke_invitation(c.s, c.user, c.param("space_id"), c.param("invitation_id"))
    return Response(status_code=204)


@endpoint
def my_invitations(c: Ctx) -> Any:
    """The invitations the signed-in user can accept now, oldest first."""
    return [
        invitation_json(c.s, i) for i in space_store.invitations_for(c.s, c.user.email, utcnow())
    ]


def invitation_closed(exc: space_store.InvitationClosed) -> ApiError:
    return ApiError(*space_ops.closed(exc))


def _answer(c: Ctx, inv: SpaceInvitation | None, accepting: bool) -> Any:
    """Accept or decline an invitation the caller's email was given."""
    try:
        answered = space_ops.answer_invitation(c.s, c.user, inv, accepting)
    except space_store.InvitationClosed as exc:
        raise invitation_closed(exc) from None
    if not accepting:
        return Response(status_code=204)
    space = c.s.get(Space, answered.space_id)
    assert space is not None
    role = space_store.role_of(c.s, space.id, c.user.user_id) or answered.role
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
    role = c.str_field("role")
    user = space_ops.change_member(c.s, c.user, c.param("space_id"), c.param("user_id"), role)
    return {"user_id": user.id, "email": user.email, "role": role}


@endpoint
def remove_member(c: Ctx) -> Any:
    """Remove a member from a Space (admin)."""
    space_ops.remove_member(c.s, c.user, c.param("space_id"), c.param("user_id"))
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
    room = space_ops.create_room(c.s, c.user, c.param("space_id"), c.str_field("name"))
    return room_json(c.s, room)


@endpoint
def rename_room(c: Ctx) -> Any:
    """Rename a War Room (manager or admin; JSON {"name"})."""
    name = c.body.get("name")
    room = space_ops.rename_room(c.s, c.user, c.param("space_id"), c.param("room_id"), name)
    return room_json(c.s, room)


@endpoint
def delete_room(c: Ctx) -> Any:
    """Delete a War Room; its nodes stay in the Space (manager or admin)."""
    space_ops.delete_room(c.s, c.user, c.param("space_id"), c.param("room_id"))
    return Response(status_code=204)


@endpoint
def room_nodes(c: Ctx) -> Any:
    """Nodes in a War Room with their states."""
    room = c.room(c.space())
    how = room_rules.sources(c.s, room.id)  # "membership": manual or by rule
    return [
        {**node_store.node_json(n), "membership": how.get(n.id, "manual")}
        for n in node_store.of_room(c.s, room.id)
    ]


@endpoint
def add_room_node(c: Ctx) -> Any:
    """Add a node of the Space to a War Room (manager or admin)."""
    node_ids = [c.param("node_id")]
    space_ops.add_room_nodes(c.s, c.user, c.param("space_id"), c.param("room_id"), node_ids)
    return Response(status_code=204)


@endpoint
def remove_room_node(c: Ctx) -> Any:
    """Take a node out of a War Room; it stays in the Space (manager or admin)."""
    space_ops.remove_room_node(
        c.s, c.user, c.param("space_id"), c.param("room_id"), c.param("node_id")
    )
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
    expires_in = int_field(c.body, "expires_in", 1, MAX_TOKEN_LIFETIME, " seconds")
    expires_at = None if expires_in is None else utcnow() + dt.timedelta(seconds=expires_in)
    box = c.request.app.state.secret_box
    token, row = space_ops.rotate_claim_token(c.s, box, c.user, c.param("space_id"), expires_at)
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


# --- named claiming tokens, labels, room rules ------------------------------


@endpoint
def list_claim_tokens(c: Ctx) -> Any:
    """The Space's claiming tokens, the default one first (admin); never their secrets."""
    space = c.space("admin")
    now = utcnow()
    return [claim_tokens.token_json(t, now) for t in claim_tokens.of_space(c.s, space.id)]


@endpoint
def create_claim_token(c: Ctx) -> Any:
    """Create a named claiming token (admin; JSON {"name", "expires_in", "max_uses",
    "rooms", "labels", "ephemeral", "ephemeral_ttl"}). The token is shown only in this answer."""
    min_ttl = c.request.app.state.settings.min_ephemeral_ttl_seconds
    token, row = space_ops.create_claim_token(
        c.s, c.user, c.param("space_id"), c.body, utcnow(), min_ttl
    )
    return {**claim_tokens.token_json(row), "token": token}


@endpoint
def get_named_claim_token(c: Ctx) -> Any:
    """One claiming token (by id, prefix or name) with its latest uses (admin)."""
    row = space_ops.claim_token(c.s, c.user, c.param("space_id"), c.param("token_id"))
    out = claim_tokens.token_json(row)
    out["uses_list"] = [claim_tokens.use_json(u) for u in claim_tokens.uses_of(c.s, row.id)]
    return out


@endpoint
def revoke_named_claim_token(c: Ctx) -> Any:
    """Revoke a claiming token (admin): new claims with it are refused at once,
    nodes enrolled with it stay. Revoking the default one leaves the Space without
    one until it is rotated (POST .../claim-token) or read again (GET)."""
    row = space_ops.revoke_claim_token(c.s, c.user, c.param("space_id"), c.param("token_id"))
    return claim_tokens.token_json(row)


@endpoint
def node_labels(c: Ctx) -> Any:
    """A node's labels: the winning value per key, and each source's own."""
    node = space_ops.node(c.s, c.space(), c.param("node_id"))
    return labels_json(label_store.of_node(c.s, node.id))


def labels_json(rows: list[Any]) -> dict[str, Any]:
    by_source: dict[str, dict[str, str]] = {"token": {}, "agent": {}, "cloud": {}}
    for row in rows:
        by_source[row.source][row.key] = row.value
    return {"labels": label_store.effective(rows), "sources": by_source}


@endpoint
def set_node_labels(c: Ctx) -> Any:
    """Replace the labels set in the Cloud on a node (manager or admin; JSON
    {"labels": {"key": "value"}}); rule rooms gain or lose it at once."""
    if "labels" not in c.body:
        raise bad_request('Send JSON {"labels": {"key": "value", ...}} ({} clears them).')
    node = space_ops.set_node_labels(
        c.s, c.user, c.param("space_id"), c.param("node_id"), c.body["labels"]
    )
    return JSONResponse(labels_json(label_store.of_node(c.s, node.id)))


@endpoint
def list_room_rules(c: Ctx) -> Any:
    """A War Room's membership rules."""
    room = c.room(c.space())
    return [room_rules.rule_json(r) for r in room_rules.rules_of(c.s, room.id)]


@endpoint
def add_room_rule(c: Ctx) -> Any:
    """Add a membership rule to a War Room (manager or admin; JSON {"action":
    include|exclude, "key", "op": equals|starts_with|ends_with|contains, "value"});
    the room's members by rule are re-evaluated at once."""
    rule = space_ops.add_room_rule(c.s, c.user, c.param("space_id"), c.param("room_id"), c.body)
    return room_rules.rule_json(rule)


@endpoint
def remove_room_rule(c: Ctx) -> Any:
    """Remove a membership rule (manager or admin); members it alone put in leave."""
    space_ops.remove_room_rule(
        c.s, c.user, c.param("space_id"), c.param("room_id"), c.param("rule_id")
    )
    return Response(status_code=204)


# --- nodes ------------------------------------------------------------------


@endpoint
def list_nodes(c: Ctx) -> Any:
    """Nodes of a Space with their states (unseen, live, offline); searched,
    filtered (also by label, room and worst alert severity, in "alert_severity"),
    sorted and paged in the database (tether.cloud.node_list). With
    `page` or `per_page` the total over all pages is in `X-Total-Count`."""
    params = c.request.query_params
    query = node_list.parse({k: params.getlist(k) for k in params}, paged_by_default=False)
    space = c.space()
    found, total = node_store.list_page(c.s, space.id, None, query)
    worst = node_store.severities(c.s, space.id, [n.id for n in found] if query.paged else None)
    body = [{**node_store.node_json(n), "alert_severity": worst.get(n.id, "clear")} for n in found]
    if not query.paged:
        return body
    return JSONResponse(body, headers={"X-Total-Count": str(total)})


@endpoint
def get_node(c: Ctx) -> Any:
    """One node with its recent events."""
    node = space_ops.node(c.s, c.space(), c.param("node_id"))
    out = node_store.node_json(node)
    out["events"] = [node_store.event_json(e) for e in node_store.events(c.s, node.id)]
    return out


@endpoint
def delete_node(c: Ctx) -> Any:
    """Remove a node from its Space, in any state; its key stops working (manager or admin)."""
    node_id = space_ops.remove_node(c.s, c.user, c.param("space_id"), c.param("node_id"))
    # After the commit: close its live link now (4003), wherever it is held.
    links = c.request.app.state.links
    return Response(status_code=204, background=BackgroundTask(links.close_node, node_id))


@endpoint
def remove_nodes(c: Ctx) -> Any:
    """Remove every node that matches a filter (manager or admin; JSON {"q", "state",
    "os", "agent_version", "label", "not_seen_for_days", "dry_run"}); at least one
    filter, at most 5,000 nodes a call (`more` says there are others)."""
    dry_run = c.body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise bad_request('"dry_run" must be true or false.')
    f = bulk_remove.from_json(c.body)
    out = bulk_remove.run(c.s, c.user, c.param("space_id"), f, utcnow(), dry_run)
    if dry_run or not out["nodes"]:
        return JSONResponse(out)
    links = c.request.app.state.links
    node_ids = [n["id"] for n in out["nodes"]]

    async def close_links() -> None:  # after the commit: their live links go now (4003)
        for node_id in node_ids:
            await links.close_node(node_id)

    return JSONResponse(out, background=BackgroundTask(close_links))


@endpoint
def get_stale_policy(c: Ctx) -> Any:
    """The Space's stale-node policy: {"after_days", "action": remove|mark} (admin)."""
    return stale_nodes.policy_json(c.space("admin"))


@endpoint
def set_stale_policy(c: Ctx) -> Any:
    """Set the stale-node policy (admin; JSON {"after_days": N, "action": "remove"|"mark"},
    {"after_days": null} turns it off)."""
    if "after_days" not in c.body:
        raise bad_request('Send JSON {"after_days": N, "action": "remove" or "mark"} (null: off).')
    space = space_ops.set_stale_policy(
        c.s, c.user, c.param("space_id"), c.body["after_days"], c.body.get("action")
    )
    return stale_nodes.policy_json(space)


@endpoint
def audit_log(c: Ctx) -> Any:
    """The Space's audit log, newest first (admin): `action` (comma-separated; a
    prefix ending in "." matches a family), `actor`, `since` (ISO 8601), `limit`
    (1..500, default 100) and `before` (the `next_before` of the previous page)."""
    space = c.space("admin")
    q = audit.parse(dict(c.request.query_params))
    rows, next_before = audit.page(c.s, space.id, q)
    return {"entries": [audit.entry_json(e) for e in rows], "next_before": next_before}


async def disconnect_node(request: Request) -> Response:
    """Ask a node to disconnect and reconnect after a delay (manager or admin).
    Async, not an @endpoint: the link (app.state.links) is asked after the check."""
    user = await require_user(request)
    space_id = str(request.path_params["space_id"]).lower()
    node_id = str(request.path_params["node_id"]).lower()
    try:
        body = await read_json(request, optional=True)  # 400 if not JSON or too deep
        delay = body.get("reconnect_after_seconds") if isinstance(body, dict) else None
        if delay is not None and not (isinstance(delay, int | float) and 0 <= delay <= 86400):
            raise ValueError
    except ValueError:
        return error_response(
            400, "ErrBadRequest", 'Send JSON {"reconnect_after_seconds": 0..86400} or no body.'
        )

    def check() -> None:
        with request.app.state.db.session() as s:
            space, _ = space_store.require_role(s, space_id, user.user_id, "manager")
            space_ops.node(s, space, node_id)

    try:
        await run_in_threadpool(check)
    except space_store.SpaceError as exc:
        raise space_error(exc) from None
    done = await request.app.state.links.disconnect(node_id, delay, f"requested by {user.email}")
    if not done:
        return error_response(
            409,
            "ErrNodeNotLinked",
            "The node has no live link to this Cloud; it is asked when it is live.",
        )
    return JSONResponse({"disconnected": True, "reconnect_after_seconds": delay})


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
        Route(f"{sp}/claim-tokens", list_claim_tokens, methods=["GET"]),
        Route(f"{sp}/claim-tokens", create_claim_token, methods=["POST"]),
        Route(sp + "/claim-tokens/{token_id}", get_named_claim_token, methods=["GET"]),
        Route(sp + "/claim-tokens/{token_id}", revoke_named_claim_token, methods=["DELETE"]),
        Route(sp + "/nodes/{node_id}/labels", node_labels, methods=["GET"]),
        Route(sp + "/nodes/{node_id}/labels", set_node_labels, methods=["PUT"]),
        Route(sp + "/rooms/{room_id}/rules", list_room_rules, methods=["GET"]),
        Route(sp + "/rooms/{room_id}/rules", add_room_rule, methods=["POST"]),
        Route(sp + "/rooms/{room_id}/rules/{rule_id}", remove_room_rule, methods=["DELETE"]),
        Route(f"{sp}/nodes", list_nodes, methods=["GET"]),
        Route(f"{sp}/nodes/remove", remove_nodes, methods=["POST"]),
        Route(f"{sp}/stale-policy", get_stale_policy, methods=["GET"]),
        Route(f"{sp}/stale-policy", set_stale_policy, methods=["PUT"]),
        Route(f"{sp}/audit", audit_log, methods=["GET"]),
        Route(sp + "/nodes/{node_id}", get_node, methods=["GET"]),
        Route(sp + "/nodes/{node_id}", delete_node, methods=["DELETE"]),
        Route(sp + "/nodes/{node_id}/disconnect", disconnect_node, methods=["POST"]),
    ]
