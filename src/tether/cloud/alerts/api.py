"""The alerts REST API under /api/v1/spaces/{space_id}: active alerts, grace
periods, notification channels (with a test send), silences and the delivery
log. Documented in docs/alerts.md."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.cloud import space_ops
from tether.cloud.alerts import ops, views
from tether.cloud.api import Ctx, endpoint, space_error
from tether.cloud.auth import require_user
from tether.cloud.secrets import SecretBox
from tether.cloud.store import spaces as space_store


def _box(c: Ctx) -> SecretBox:
    box: SecretBox = c.request.app.state.secret_box
    return box


def _fallback(c: Ctx) -> float:
    return float(c.request.app.state.settings.alert_default_grace_seconds)


@endpoint
def list_alerts(c: Ctx) -> Any:
    """Active alerts of the Space (reachability and the agents'), critical
    first; filter with ?room=, ?node=, ?severity=warning|critical."""
    sp = ops.space(c.s, c.user, c.param("space_id"))
    return views.active(c.s, sp.id, views.Filter.of(c.request.query_params))


@endpoint
def alert_counts(c: Ctx) -> Any:
    """Active alerts per node: {node_id: {"warning": n, "critical": n}}."""
    sp = ops.space(c.s, c.user, c.param("space_id"))
    return views.counts_per_node(c.s, sp.id)


@endpoint
def node_alert_history(c: Ctx) -> Any:
    """A node's alert transitions, newest first (never metric values)."""
    sp = ops.space(c.s, c.user, c.param("space_id"))
    node = space_ops.node(c.s, sp, c.param("node_id"))
    return views.history(c.s, sp.id, node.id)


@endpoint
def get_grace(c: Ctx) -> Any:
    """The Space's grace period and its room and node overrides."""
    sp = ops.space(c.s, c.user, c.param("space_id"))
    return ops.grace_settings(c.s, sp, _fallback(c))


@endpoint
def put_grace(c: Ctx) -> Any:
    """Set a grace period: {"scope": "space"|"room"|"node", "target": id, "grace_seconds": n}."""
    b = c.body
    out = ops.set_grace(
        c.s, c.user, c.param("space_id"), b.get("scope"), b.get("target"), b.get("grace_seconds")
    )
    return JSONResponse(out)


@endpoint
def delete_grace(c: Ctx) -> Any:
    """Remove an override (or the Space's own default)."""
    ops.clear_grace(c.s, c.user, c.param("space_id"), c.param("scope"), c.param("target"))
    return Response(status_code=204)


@endpoint
def list_channels(c: Ctx) -> Any:
    """The Space's notification channels (admin; secrets never shown)."""
    return [ops.channel_json(ch) for ch in ops.channels_of(c.s, c.user, c.param("space_id"))]


@endpoint
def create_channel(c: Ctx) -> Any:
    """Create a channel (admin): {"name", "kind": "webhook"|"slack"|"email", ...}.
    A webhook made without "secret" gets a signing key, shown only here."""
    ch, shown = ops.create_channel(c.s, _box(c), c.user, c.param("space_id"), c.body)
    out = ops.channel_json(ch)
    if shown:
        out["secret"] = shown
    return out


@endpoint
def update_channel(c: Ctx) -> Any:
    """Change a channel's name, settings, routing (rooms, severities) or enabled."""
    ch = ops.update_channel(
        c.s, _box(c), c.user, c.param("space_id"), c.param("channel_id"), c.body
    )
    return ops.channel_json(ch)


@endpoint
def delete_channel(c: Ctx) -> Any:
    ops.delete_channel(c.s, c.user, c.param("space_id"), c.param("channel_id"))
    return Response(status_code=204)


async def test_channel(request: Request) -> Response:
    """Send a test notification through a channel now (admin); the answer says
    whether the receiver took it. Async: the send runs after the role check."""
    user = await require_user(request)
    box: SecretBox = request.app.state.secret_box

    def prepare() -> Any:
        with request.app.state.db.session() as s:
            ch = ops.channel(
                s,
                user,
                str(request.path_params["space_id"]),
                str(request.path_params["channel_id"]),
            )
            return ops.test_item(s, box, ch)

    try:
        item = await run_in_threadpool(prepare)
    except space_store.SpaceError as exc:
        raise space_error(exc) from None
    worker = request.app.state.alert_worker
    timeout = float(request.app.state.settings.notify_timeout_seconds)
    error = await worker.send_now(item, timeout)
    return JSONResponse(
        {"delivered": error is None, "error": error, "idempotency_key": item.key},
        status_code=200 if error is None else 502,
    )


@endpoint
def list_silences(c: Ctx) -> Any:
    """Silences that have not ended."""
    return [ops.silence_json(x) for x in ops.silences(c.s, c.user, c.param("space_id"))]


@endpoint
def create_silence(c: Ctx) -> Any:
    """Silence a node or a room (manager): {"scope": "node"|"room", "target": id,
    "minutes": n | "ends_at": ISO 8601, "reason": text}."""
    return ops.silence_json(ops.create_silence(c.s, c.user, c.param("space_id"), c.body))


@endpoint
def delete_silence(c: Ctx) -> Any:
    ops.delete_silence(c.s, c.user, c.param("space_id"), c.param("silence_id"))
    return Response(status_code=204)


@endpoint
def list_notifications(c: Ctx) -> Any:
    """The delivery log, newest first; ?state=pending|sending|sent|failed."""
    state = c.request.query_params.get("state") or None
    return ops.notifications(c.s, c.user, c.param("space_id"), state)


def routes() -> list[Route]:
    sp = "/api/v1/spaces/{space_id}"
    ch = sp + "/notification-channels/{channel_id}"
    return [
        Route(f"{sp}/alerts", list_alerts, methods=["GET"]),
        Route(f"{sp}/alerts/counts", alert_counts, methods=["GET"]),
        Route(sp + "/nodes/{node_id}/alert-history", node_alert_history, methods=["GET"]),
        Route(f"{sp}/alert-grace", get_grace, methods=["GET"]),
        Route(f"{sp}/alert-grace", put_grace, methods=["PUT"]),
        Route(sp + "/alert-grace/{scope}/{target}", delete_grace, methods=["DELETE"]),
        Route(f"{sp}/notification-channels", list_channels, methods=["GET"]),
        Route(f"{sp}/notification-channels", create_channel, methods=["POST"]),
        Route(ch, update_channel, methods=["PATCH"]),
        Route(ch, delete_channel, methods=["DELETE"]),
        Route(f"{ch}/test", test_channel, methods=["POST"]),
        Route(f"{sp}/silences", list_silences, methods=["GET"]),
        Route(f"{sp}/silences", create_silence, methods=["POST"]),
        Route(sp + "/silences/{silence_id}", delete_silence, methods=["DELETE"]),
        Route(f"{sp}/notifications", list_notifications, methods=["GET"]),
    ]
