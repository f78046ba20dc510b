"""Sign in and out, Spaces, War Rooms, the Nodes view and the node page."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.cloud import auth, child_fields, node_list, planned_stops, space_ops
from tether.cloud.auth import Principal
from tether.cloud.client import client_address
from tether.cloud.errors import ApiError
from tether.cloud.link import clones
from tether.cloud.models import Node, NodeRoom, utcnow
from tether.cloud.secrets import aware, iso
from tether.cloud.store import nodes as node_store
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store
from tether.cloud.web import node_detail
from tether.cloud.web.common import (
    LOGIN_CSRF_COOKIE,
    UiError,
    field,
    form_csrf_ok,
    form_of,
    in_db,
    member_space,
    nav,
    new_login_csrf,
    page,
    posted,
    redirect,
    render,
    room_counts,
    set_form_csrf,
    signed_in,
)
from tether.protocol.states import NodeState

# The node page's time picker (seconds back from now); "custom" is a from/to
# pair in the URL. Past the agent's per-second history (an hour by default)
# the agent answers from its per-minute tier by itself.
RANGES = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}
RANGE_NAMES = {
    "5m": "5 minutes",
    "15m": "15 minutes",
    "1h": "1 hour",
    "6h": "6 hours",
    "24h": "24 hours",
}
DEFAULT_RANGE = "5m"


def chosen_range(request: Request, *, custom: bool = False) -> tuple[str, int]:
    """The time range a chart page's `?range=` asks for and its seconds: one of
    RANGES (or `custom`, where the page offers its own from/to; it starts at
    the default's seconds), anything else the default."""
    key = request.query_params.get("range", DEFAULT_RANGE)
    if key not in RANGES and not (custom and key == "custom"):
        key = DEFAULT_RANGE
    return key, RANGES.get(key, RANGES[DEFAULT_RANGE])


def safe_next(value: str | None) -> str:
    """Only same-site paths: never redirect a signed-in user to another site."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def node_view(
    node: Node,
    space_id: str,
    *,
    shared_name: bool = False,
    expected_back: dt.datetime | None = None,
) -> dict[str, Any]:
    """A node as the pages show it. All of it is node-supplied text rendered
    as text (Jinja autoescape, textContent in nodes.js), never as HTML.
    `shared_name`: another node of the Space has the same hostname, so the
    view adds a short id to tell them apart."""
    details = [f"id {node.id}"]
    if node.last_address:
        details.append(f"connected from {node.last_address}")
    if node.machine_id:
        details.append(f"machine-id {node.machine_id[:12]}")
    if node.os:
        details.append(node.os)
    return {
        "id": node.id,
        "hostname": node.hostname,
        "short_id": node.id[:8] if shared_name else "",
        "host_details": "; ".join(details),
        "state": node.state,
        "unreachable": node.state != NodeState.LIVE,
        "state_since": iso(node.state_since),
        "state_cause": node.state_cause or "",
        "last_seen_at": iso(node.last_seen_at) if node.last_seen_at else "",
        "expected_back_at": iso(node.expected_back_at or expected_back)
        if (node.expected_back_at or expected_back)
        else "",
        "os": node.os or "",
        "agent_version": node.agent_version or "",
        "rooms": sorted(r.name for r in node.rooms if not r.is_all_nodes),
        "last_address": node.last_address or "",
        "url": f"/spaces/{space_id}/nodes/{node.id}",
        "duplicate": duplicate_text(node),
        # Issue 13: "planned: upgrade, expected back at 14:05 UTC"; a refused clone.
        "planned": planned_stops.text(node),
        "clone_conflict": clones.text(node),
        "via": child_fields.parent_hostname(node),  # a child: "via PARENT"
    }


DUPLICATE_SHOWN_FOR = dt.timedelta(days=1)


def duplicate_text(node: Node) -> str:
    """A recent second link with this node's identity (a cloned VM or a copied
    cloud.d), said plainly instead of letting the node flap silently."""
    seen = node.duplicate_detected_at
    if seen is None or utcnow() - aware(seen) > DUPLICATE_SHOWN_FOR or not node.duplicate_detail:
        return ""
    try:
        detail = json.loads(node.duplicate_detail)
        prev, cur = detail["previous"], detail["current"]
    except (ValueError, KeyError, TypeError):
        return "Two agents used this node's identity."

    def host(side: dict[str, Any]) -> str:
        mid = side.get("machine_id") or "unknown"
        return f"{side.get('address') or 'unknown address'} (machine-id {str(mid)[:12]})"

    return (
        f"Two agents use this node's identity: {host(prev)} and {host(cur)}, last "
        f"{iso(seen)}. Give the clone its own identity: on it, remove cloud.d and claim "
        "with -id=$(uuidgen)."
    )


# --- sign in / out ------------------------------------------------------------


@page
async def signin_form(request: Request) -> Response:
    user = await auth.current_user(request)
    if user is not None and user.via == "session":
        return redirect(safe_next(request.query_params.get("next")))
    return _signin_page(request, "", 200)


def _signin_page(request: Request, error: str, status: int, email: str = "") -> Response:
    token = new_login_csrf()
    response = render(
        request,
        "signin.html",
        {
            "title": "Sign in",
            "login_csrf": token,
            "error": error,
            "email": email,
            "next": safe_next(request.query_params.get("next")),
        },
        status,
    )
    set_form_csrf(request, response, LOGIN_CSRF_COOKIE, token, "/signin")
    return response


@page
async def signin(request: Request) -> Response:
    form = await request.form()
    email, password = field(form, "email"), form.get("password")
    if not form_csrf_ok(request, form, "login_csrf", LOGIN_CSRF_COOKIE):
        return _signin_page(request, "The sign-in form expired; please try again.", 403, email)
    if not email or not isinstance(password, str) or not password:
        return _signin_page(request, "Enter your email and password.", 400, email)
    try:
        signed = await auth.sign_in(
            request.app.state.db,
            auth.login_limits(request.app),
            email,
            password,
            client_address(request),
            request.app.state.settings.session_days,
        )
    except ApiError as exc:  # the same answers as the API: 401, or 429 with Retry-After
        response = _signin_page(request, exc.message, exc.status, email)
        response.headers.update(exc.headers)
        return response
    response = redirect(safe_next(field(form, "next")))
    auth.set_session_cookie(request, response, signed.sid)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/signin")
    return response


@page
async def signout(request: Request) -> Response:
    user = await signed_in(request)
    await form_of(request, user)
    sid = request.cookies.get(auth.SESSION_COOKIE, "")
    await in_db(request, lambda s: user_store.delete_session(s, sid), write=True)
    response = redirect("/signin")
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response


# --- Spaces and rooms ---------------------------------------------------------


@page
async def home(request: Request) -> Response:
    user = await signed_in(request)
    # Pending invitations come first: they are answered nowhere else.
    if await in_db(request, lambda s: space_store.invitations_for(s, user.email, utcnow())):
        return redirect("/invitations")
    spaces = await in_db(request, lambda s: space_store.spaces_of(s, user.user_id))
    if spaces:
        return redirect(f"/spaces/{spaces[0][0].id}")
    return render(
        request,
        "no_space.html",
        {
            "title": "No Space yet",
            "user": user,
            "csrf": user.csrf or "",
            "spaces": [],
        },
    )


@page
async def create_space(request: Request) -> Response:
    box = request.app.state.secret_box
    space = await posted(
        request, lambda s, user, form: space_ops.create_space(s, box, user, field(form, "name"))
    )
    return redirect(f"/spaces/{space.id}")


@page
async def space_home(request: Request) -> Response:
    user = await signed_in(request)
    space_id = request.path_params["space_id"]

    def first_room(s: Session) -> str:
        space, _ = member_space(s, user, space_id)
        return space_store.all_nodes_room(s, space.id).id

    room_id = await in_db(request, first_room)
    return redirect(f"/spaces/{space_id}/rooms/{room_id}")


def node_query(request: Request) -> node_list.NodeQuery:
    """The Nodes view's search, filters, sort and page from the URL."""
    params = request.query_params
    return node_list.parse({k: params.getlist(k) for k in params})


def room_nodes(
    s: Session,
    user: Principal,
    space_id: str,
    room_id: str,
    query: node_list.NodeQuery,
    with_facets: bool = True,
) -> dict[str, Any]:
    """One page of a room's nodes, searched, filtered and sorted in the database;
    `with_facets`: also the filter menus' values (a scan of the whole room)."""
    space, role = member_space(s, user, space_id)
    room = space_ops.room(s, space, room_id)
    # The all-nodes room holds every node of its Space (no node may leave it):
    # no room condition then, which spares a look-up per node.
    scope = None if room.is_all_nodes else room.id
    found, total = node_store.list_page(s, space.id, scope, query)
    shared = node_store.shared_hostnames(s, space.id, [n.hostname for n in found])
    back = node_store.expected_back(s, found)
    worst = node_store.severities(s, space.id, [n.id for n in found])
    nodes = [
        node_view(n, space.id, shared_name=n.hostname in shared, expected_back=back.get(n.id))
        | {"alert_severity": worst.get(n.id, "clear")}
        for n in found
    ]
    facets = node_store.facets(s, space.id, scope) if with_facets else {}
    listing = {
        "nodes": nodes,
        "total": total,
        "page": query.page,
        "per_page": query.per_page,
        "pages": max(1, -(-total // query.per_page)),
        "facets": {k: [{"value": v, "count": n} for v, n in rows] for k, rows in facets.items()}
        or None,
        # The room has nodes at all (an empty search is not an empty room).
        "room_has_nodes": total > 0 or (bool(query.params()) and _room_has_nodes(s, room.id)),
    }
    return {"space": space, "role": role, "room": room, "listing": listing}


def _room_has_nodes(s: Session, room_id: str) -> bool:
    return (
        s.scalar(select(NodeRoom.node_id).where(NodeRoom.room_id == room_id).limit(1)) is not None
    )


@page
async def room_page(request: Request) -> Response:
    user = await signed_in(request)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]
    try:
        query = node_query(request)
    except node_list.BadQuery as exc:
        raise UiError(400, str(exc)) from None

    def load(s: Session) -> dict[str, Any]:
        found = room_nodes(s, user, sid, rid, query)
        ctx = nav(s, user, found["space"], found["role"])
        room = found["room"]
        listing = found["listing"]
        ctx.update(
            title=room.name,
            room={"id": room.id, "name": room.name, "is_all_nodes": room.is_all_nodes},
            nodes=listing["nodes"],
            listing=listing,
            query=query,
            states=node_list.STATES,
            severities=node_list.SEVERITIES,
            sorts=SORT_COLUMNS,
            view_url=lambda **changes: view_url(query, **changes),
            space_node_count=sum(r["node_count"] for r in ctx["rooms"] if r["is_all_nodes"]),
        )
        return ctx

    ctx = await in_db(request, load)  # a `room` not of the Space: 400 (a ValueError)
    return render(request, "room.html", ctx)


def view_url(query: node_list.NodeQuery, **changes: str | int) -> str:
    """This Nodes view's query string with some parameters changed (sort
    links and the pager work without JavaScript too)."""
    params = query.params()
    if "page" not in changes:
        params.pop("page", None)  # a new sort starts on the first page
    params.update({name: str(value) for name, value in changes.items()})
    return "?" + urlencode(params, doseq=True) if params else "?"


# The Nodes view's columns: (label, sort key or "" when it does not sort).
SORT_COLUMNS = [
    ("Node", "name"),
    ("State", "state"),
    ("Alerts", "severity"),
    ("Since", "state_since"),
    ("Last seen", "last_seen"),
    ("Connected from", ""),
    ("Expected back", ""),
    ("OS", "os"),
    ("Agent", "agent_version"),
    ("Rooms", ""),
]


@page
async def room_nodes_json(request: Request) -> Response:
    """One page of the Nodes view, fetched again whenever the room's live
    stream (tether.cloud.web.live) says something changed; the filter menus'
    values only with `facets=1` (the script asks when it (re)connects and when
    a filter changes), so each push costs one page, not a scan of the room."""
    user = await signed_in(request)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]
    try:
        query = node_query(request)
    except node_list.BadQuery as exc:  # the script shows the message
        return JSONResponse({"errorMsgKey": "ErrBadRequest", "errorMessage": str(exc)}, 400)
    with_facets = request.query_params.get("facets") == "1"

    def load(s: Session) -> dict[str, Any]:
        try:
            found = room_nodes(s, user, sid, rid, query, with_facets)
        except node_list.BadQuery as exc:  # a `room` that is not one of the Space's
            return {"errorMsgKey": "ErrBadRequest", "errorMessage": str(exc)}
        return {**found["listing"], "room_counts": room_counts(s, found["space"].id)}

    data = await in_db(request, load)
    return JSONResponse(data, 400 if "errorMsgKey" in data else 200)


@page
async def add_nodes_form(request: Request) -> Response:
    user = await signed_in(request)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid, "manager")
        room = space_ops.room(s, space, rid)
        inside = {n.id for n in node_store.of_room(s, room.id)}
        ctx = nav(s, user, space, role)
        ctx.update(
            title=f"Add nodes to {room.name}",
            room={"id": room.id, "name": room.name, "is_all_nodes": room.is_all_nodes},
            candidates=[
                node_view(n, space.id)
                for n in node_store.of_space(s, space.id)
                if n.id not in inside
            ],
        )
        return ctx

    return render(request, "add_nodes.html", await in_db(request, load))


@page
async def add_nodes(request: Request) -> Response:
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]

    def add(s: Session, user: Principal, form: FormData) -> None:
        wanted = [v for v in form.getlist("node") if isinstance(v, str)]
        space_ops.add_room_nodes(s, user, sid, rid, wanted)

    await posted(request, add)
    return redirect(f"/spaces/{sid}/rooms/{rid}")


# --- nodes --------------------------------------------------------------------


@page
async def node_page(request: Request) -> Response:
    user = await signed_in(request)
    sid, nid = request.path_params["space_id"], request.path_params["node_id"]
    range_key, range_seconds = chosen_range(request, custom=True)

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid)
        node = space_ops.node(s, space, nid)
        ctx = nav(s, user, space, role)
        ctx.update(
            title=node.hostname,
            node=node_view(node, space.id),
            detail=node_detail.details(s, node),
            # The page listens to the Space's live stream (any room's stream
            # carries every node of the Space; the all-nodes room always exists).
            events_url=f"/spaces/{space.id}/rooms/{space_store.all_nodes_room(s, space.id).id}"
            "/events",
        )
        return ctx

    ctx = await in_db(request, load)
    ctx.update(
        range_key=range_key,
        range_seconds=range_seconds,
        ranges=list(RANGES.items()),
        range_names=RANGE_NAMES,
    )
    return render(request, "node.html", ctx)


@page
async def node_json(request: Request) -> Response:
    user = await signed_in(request)
    sid, nid = request.path_params["space_id"], request.path_params["node_id"]

    def load(s: Session) -> dict[str, Any]:
        space, _ = member_space(s, user, sid)
        node = space_ops.node(s, space, nid)
        return {**node_view(node, space.id), **node_detail.details(s, node)}

    return JSONResponse(await in_db(request, load))


@page
async def remove_node(request: Request) -> Response:
    sid, nid = request.path_params["space_id"], request.path_params["node_id"]
    removed = await posted(request, lambda s, user, _: space_ops.remove_node(s, user, sid, nid))
    # Committed: close its live link now (4003), wherever it is held.
    await request.app.state.links.close_node(removed)
    return redirect(f"/spaces/{sid}")
