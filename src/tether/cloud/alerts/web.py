"""The alerts pages: the Space's active alerts (filter by room, node,
severity), silences and the delivery log; and the notification settings
(grace periods, channels with a test send). Every change goes through
tether.cloud.alerts.ops, as the API's do."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tether.cloud.alerts import channels, ops, policy, views
from tether.cloud.auth import Principal
from tether.cloud.store import nodes as node_store
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
    sid = request.path_params["space_id"]
    try:
        flt = views.Filter.of(request.query_params)
    except ValueError as exc:
        raise UiError(400, str(exc).capitalize() + ".") from None

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid)
        ctx = nav(s, user, space, role)
        ctx["title"] = f"Alerts · {space.name}"
        ctx["alerts"] = views.active(s, space.id, flt)
        ctx["filter"] = {"room": flt.room, "node": flt.node, "severity": flt.severity}
        ctx["severities"] = list(policy.SEVERITIES)
        ctx["nodes"] = _nodes(s, space.id)
        ctx["silences"] = [ops.silence_json(x) for x in ops.silences(s, user, space.id)]
        ctx["deliveries"] = ops.notifications(s, user, space.id, None, limit=50)
        return ctx

    ctx = await in_db(request, load)
    ctx["flash"] = FLASH.get(request.query_params.get("done", ""))
    return render(request, "alerts.html", ctx)


async def _settings_page(
    request: Request, user: Principal, tested: dict[str, Any] | None = None
) -> Response:
    sid = request.path_params["space_id"]
    fallback = float(request.app.state.settings.alert_default_grace_seconds)

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid, "admin")
        ctx = nav(s, user, space, role)
        ctx["title"] = f"Notifications · {space.name}"
        ctx["grace"] = ops.grace_settings(s, space, fallback)
        ctx["nodes"] = _nodes(s, space.id)
        ctx["channels"] = [ops.channel_json(c) for c in ops.channels_of(s, user, space.id)]
        ctx["kinds"] = list(channels.KINDS)
        ctx["severities"] = list(policy.SEVERITIES)
        return ctx

    ctx = await in_db(request, load)
    ctx["flash"] = FLASH.get(request.query_params.get("done", ""))
    ctx["tested"] = tested
    return render(request, "alert_settings.html", ctx)


@page
async def settings_page(request: Request) -> Response:
    return await _settings_page(request, await signed_in(request))


def _alerts(sid: str, done: str) -> Response:
    return redirect(f"/spaces/{sid}/alerts?done={done}")


def _settings(sid: str, done: str) -> Response:
    return redirect(f"/spaces/{sid}/alerts/settings?" + urlencode({"done": done}))


def _number(form: FormData, name: str) -> float:
    try:
        return float(field(form, name))
    except ValueError:
        raise UiError(400, f"{name.replace('_', ' ').capitalize()} must be a number.") from None


@page
async def add_silence(request: Request) -> Response:
    sid = request.path_params["space_id"]

    def add(s: Session, user: Principal, form: FormData) -> None:
        ops.create_silence(
            s,
            user,
            sid,
            {
                "scope": field(form, "scope"),
                "target": field(form, "target"),
                "minutes": _number(form, "minutes"),
                "reason": field(form, "reason"),
            },
        )

    await posted(request, add)
    return _alerts(sid, "silenced")


@page
async def remove_silence(request: Request) -> Response:
    sid, xid = request.path_params["space_id"], request.path_params["silence_id"]
    await posted(request, lambda s, user, _: ops.delete_silence(s, user, sid, xid))
    return _alerts(sid, "unsilenced")


@page
async def set_grace(request: Request) -> Response:
    sid = request.path_params["space_id"]

    def change(s: Session, user: Principal, form: FormData) -> None:
        scope = field(form, "scope") or "space"
        ops.set_grace(s, user, sid, scope, field(form, "target"), _number(form, "grace_seconds"))

    await posted(request, change)
    return _settings(sid, "grace")


@page
async def clear_grace(request: Request) -> Response:
    sid = request.path_params["space_id"]

    def clear(s: Session, user: Principal, form: FormData) -> None:
        ops.clear_grace(s, user, sid, field(form, "scope"), field(form, "target"))

    await posted(request, clear)
    return _settings(sid, "grace-cleared")


@page
async def add_channel(request: Request) -> Response:
    sid, box = request.path_params["space_id"], request.app.state.secret_box

    def add(s: Session, user: Principal, form: FormData) -> None:
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
        ops.create_channel(s, box, user, sid, body)

    await posted(request, add)
    return _settings(sid, "channel")


@page
async def delete_channel(request: Request) -> Response:
    sid, cid = request.path_params["space_id"], request.path_params["channel_id"]
    await posted(request, lambda s, user, _: ops.delete_channel(s, user, sid, cid))
    return _settings(sid, "channel-deleted")


@page
async def toggle_channel(request: Request) -> Response:
    sid, cid = request.path_params["space_id"], request.path_params["channel_id"]
    box = request.app.state.secret_box

    def toggle(s: Session, user: Principal, form: FormData) -> None:
        ops.update_channel(s, box, user, sid, cid, {"enabled": field(form, "enabled") == "yes"})

    await posted(request, toggle)
    return _settings(sid, "channel-changed")


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
