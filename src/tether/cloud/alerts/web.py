"""The alerts pages: the Space's active alerts (filter by room, node,
severity), silences and the delivery log; and the notification settings
(grace periods, channels with a test send). Every change goes through
tether.cloud.alerts.ops, as the API's do."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tether.cloud.alerts import channels, ops, policy, views
from tether.cloud.auth import Principal
from tether.cloud.models import Space
from tether.cloud.store import nodes as node_store
from tether.cloud.web.common import (
    Post,
    UiError,
    action,
    field,
    page,
    posted,
    signed_in,
    space_page,
)

FLASH = {
    "silenced": "Silence added: no notifications for it until it ends (alerts still show).",
    "unsilenced": "Silence removed.",
    "grace": "Grace period saved.",
    "grace-cleared": "Override removed.",
    "channel": "Channel added.",
    "channel-deleted": "Channel deleted.",
    "channel-changed": "Channel changed.",
}


def _nodes(s: Session, space_id: str) -> list[dict[str, str]]:
    return [
        {"id": n.id, "hostname": n.hostname, "state": n.state}
        for n in node_store.of_space(s, space_id)
    ]


@page
async def alerts_page(request: Request) -> Response:
    user = await signed_in(request)
    try:
        flt = views.Filter.of(request.query_params)
    except ValueError as exc:
        raise UiError(400, str(exc).capitalize() + ".") from None

    def fill(s: Session, space: Space, _role: str) -> dict[str, Any]:
        return {
            "title": f"Alerts · {space.name}",
            "alerts": views.active(s, space.id, flt),
            "filter": {"room": flt.room, "node": flt.node, "severity": flt.severity},
            "severities": list(policy.SEVERITIES),
            "nodes": _nodes(s, space.id),
            "silences": [ops.silence_json(x) for x in ops.silences(s, user, space.id)],
            "deliveries": ops.notifications(s, user, space.id, None, limit=50),
        }

    return await space_page(request, user, "alerts.html", fill, FLASH)


async def _settings_page(
    request: Request, user: Principal, tested: dict[str, Any] | None = None
) -> Response:
    fallback = float(request.app.state.settings.alert_default_grace_seconds)

    def fill(s: Session, space: Space, _role: str) -> dict[str, Any]:
        return {
            "title": f"Notifications · {space.name}",
            "grace": ops.grace_settings(s, space, fallback),
            "nodes": _nodes(s, space.id),
            "channels": [ops.channel_json(c) for c in ops.channels_of(s, user, space.id)],
            "kinds": list(channels.KINDS),
            "severities": list(policy.SEVERITIES),
            "tested": tested,
        }

    return await space_page(request, user, "alert_settings.html", fill, FLASH, "admin")


@page
async def settings_page(request: Request) -> Response:
    return await _settings_page(request, await signed_in(request))


ALERTS = "/spaces/{space_id}/alerts?done="
SETTINGS = "/spaces/{space_id}/alerts/settings?done="


def _number(form: FormData, name: str) -> float:
    try:
        return float(field(form, name))
    except ValueError:
        raise UiError(400, f"{name.replace('_', ' ').capitalize()} must be a number.") from None


def _silence(p: Post) -> None:
    body = {
        "scope": p.field("scope"),
        "target": p.field("target"),
        "minutes": _number(p.form, "minutes"),
        "reason": p.field("reason"),
    }
    ops.create_silence(p.s, p.user, p.sid, body)


def _grace(p: Post) -> None:
    grace = _number(p.form, "grace_seconds")
    ops.set_grace(p.s, p.user, p.sid, p.field("scope") or "space", p.field("target"), grace)


def _channel(p: Post) -> None:
    form = p.form
    body: dict[str, Any] = {k: field(form, k) for k in form if k != "csrf_token"}
    body = {k: v for k, v in body.items() if v != ""}
    if "port" in body:
        body["port"] = int(_number(form, "port"))
    if "to" in body:
        body["to"] = [t.strip() for t in str(body["to"]).split(",") if t.strip()]
    body["starttls"] = field(form, "starttls") != "no"
    body["severities"] = [v for v in form.getlist("severities") if isinstance(v, str)] or list(
        policy.SEVERITIES
    )
    rooms = [v for v in form.getlist("rooms") if isinstance(v, str) and v]
    body["rooms"] = rooms
    ops.create_channel(p.s, p.box, p.user, p.sid, body)


add_silence = action(ALERTS + "silenced", _silence)
remove_silence = action(
    ALERTS + "unsilenced",
    lambda p: ops.delete_silence(p.s, p.user, p.sid, p.param("silence_id")),
)
set_grace = action(SETTINGS + "grace", _grace)
clear_grace = action(
    SETTINGS + "grace-cleared",
    lambda p: ops.clear_grace(p.s, p.user, p.sid, p.field("scope"), p.field("target")),
)
add_channel = action(SETTINGS + "channel", _channel)
delete_channel = action(
    SETTINGS + "channel-deleted",
    lambda p: ops.delete_channel(p.s, p.user, p.sid, p.param("channel_id")),
)
toggle_channel = action(
    SETTINGS + "channel-changed",
    lambda p: ops.update_channel(
        p.s, p.box, p.user, p.sid, p.param("channel_id"), {"enabled": p.field("enabled") == "yes"}
    ),
)


@page
async def test_channel(request: Request) -> Response:
    sid, cid = request.path_params["space_id"], request.path_params["channel_id"]
    box = request.app.state.secret_box
    item = await posted(
        request, lambda s, user, _: ops.test_item(s, box, ops.channel(s, user, sid, cid))
    )
    timeout = float(request.app.state.settings.notify_timeout_seconds)
    error = await request.app.state.alert_worker.send_now(item, timeout)
    # Shown on the page itself (not reflected from a URL anyone could craft).
    user = await signed_in(request)
    return await _settings_page(request, user, {"channel_id": cid, "error": error})


def routes() -> list[BaseRoute]:
    sp = "/spaces/{space_id}/alerts"
    ch = sp + "/channels/{channel_id}"
    get, post = ["GET"], ["POST"]
    return [
        Route(sp, alerts_page, methods=get),
        Route(sp + "/silences", add_silence, methods=post),
        Route(sp + "/silences/{silence_id}/remove", remove_silence, methods=post),
        Route(sp + "/settings", settings_page, methods=get),
        Route(sp + "/grace", set_grace, methods=post),
        Route(sp + "/grace/clear", clear_grace, methods=post),
        Route(sp + "/channels", add_channel, methods=post),
        Route(ch + "/delete", delete_channel, methods=post),
        Route(ch + "/enabled", toggle_channel, methods=post),
        Route(ch + "/test", test_channel, methods=post),
    ]
