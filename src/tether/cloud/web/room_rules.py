"""A War Room's membership rules page: its rules (add, remove) and its members,
each shown as manual or by rule. Managers change rules; members read."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import room_rules, space_ops
from tether.cloud.auth import Principal
from tether.cloud.store import nodes as node_store
from tether.cloud.web.common import (
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
    "added": "Rule added; the room's members by rule were updated.",
    "removed": "Rule removed; members only it put in left the room.",
}


@page
async def rules_page(request: Request) -> Response:
    user = await signed_in(request)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid)
        room = space_ops.room(s, space, rid)
        ctx = nav(s, user, space, role)
        ctx["title"] = f"Rules of {room.name}"
        ctx["room"] = {"id": room.id, "name": room.name, "is_all_nodes": room.is_all_nodes}
        ctx["rules"] = [room_rules.rule_json(r) for r in room_rules.rules_of(s, room.id)]
        how = room_rules.sources(s, room.id)
        ctx["members"] = [
            {"id": n.id, "hostname": n.hostname, "membership": how.get(n.id, "manual")}
            for n in node_store.of_room(s, room.id)
        ]
        ctx["ops"] = list(room_rules.OPS)
        return ctx

    ctx = await in_db(request, load)
    ctx["flash"] = FLASH.get(request.query_params.get("done", ""))
    return render(request, "room_rules.html", ctx)


def _back(sid: str, rid: str, done: str) -> Response:
    return redirect(f"/spaces/{sid}/rooms/{rid}/rules?done={done}")


@page
async def add_rule(request: Request) -> Response:
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]

    def add(s: Session, user: Principal, form: FormData) -> None:
        body = {k: form.get(k) for k in ("action", "key", "op", "value")}
        space_ops.add_room_rule(s, user, sid, rid, body)

    await posted(request, add)
    return _back(sid, rid, "added")


@page
async def remove_rule(request: Request) -> Response:
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]
    rule_id = request.path_params["rule_id"]
    await posted(request, lambda s, user, _: space_ops.remove_room_rule(s, user, sid, rid, rule_id))
    return _back(sid, rid, "removed")
