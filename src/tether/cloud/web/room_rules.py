"""A War Room's membership rules page: its rules (add, remove) and its members,
each shown as manual or by rule. Managers change rules; members read."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import room_rules, space_ops
from tether.cloud.models import Space
from tether.cloud.store import nodes as node_store
from tether.cloud.web.common import Post, action, page, signed_in, space_page

FLASH = {
    "added": "Rule added; the room's members by rule were updated.",
    "removed": "Rule removed; members only it put in left the room.",
}


@page
async def rules_page(request: Request) -> Response:
    user = await signed_in(request)
    rid = request.path_params["room_id"]

    def fill(s: Session, space: Space, _role: str) -> dict[str, Any]:
        room = space_ops.room(s, space, rid)
        how = room_rules.sources(s, room.id)
        return {
            "title": f"Rules of {room.name}",
            "room": {"id": room.id, "name": room.name, "is_all_nodes": room.is_all_nodes},
            "rules": [room_rules.rule_json(r) for r in room_rules.rules_of(s, room.id)],
            "members": [
                {"id": n.id, "hostname": n.hostname, "membership": how.get(n.id, "manual")}
                for n in node_store.of_room(s, room.id)
            ],
            "ops": list(room_rules.OPS),
        }

    return await space_page(request, user, "room_rules.html", fill, FLASH)


BACK = "/spaces/{space_id}/rooms/{room_id}/rules?done="


def _add(p: Post) -> None:
    body = {k: p.form.get(k) for k in ("action", "key", "op", "value")}
    space_ops.add_room_rule(p.s, p.user, p.sid, p.param("room_id"), body)


add_rule = action(BACK + "added", _add)
remove_rule = action(
    BACK + "removed",
    lambda p: space_ops.remove_room_rule(
        p.s, p.user, p.sid, p.param("room_id"), p.param("rule_id")
    ),
)
