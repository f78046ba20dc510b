"""Each alerts operation the API and the UI both offer, once: grace periods,
notification channels (secrets sealed with the SecretBox, like the claiming
token), silences, the delivery log. Role checks: reading needs membership,
grace and silences a manager, channels (they hold secrets) an admin."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets as pysecrets
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tether.cloud import space_ops
from tether.cloud.alerts import channels, outbox, policy
from tether.cloud.alerts.outbox import Claimed
from tether.cloud.auth import Principal
from tether.cloud.models import (
    AlertGrace,
    Notification,
    NotificationChannel,
    Silence,
    Space,
    utcnow,
)
from tether.cloud.secrets import SecretBox, aware, iso
from tether.cloud.store import spaces as space_store

log = logging.getLogger("tether.cloud.alerts")
MAX_SILENCE = 90 * 86400.0


def space(s: Session, actor: Principal, space_id: str, needed: str = "member") -> Space:
    return space_store.require_role(s, space_id, actor.user_id, needed)[0]


# --- grace ----------------------------------------------------------------------


def grace_settings(s: Session, sp: Space, fallback: float) -> dict[str, Any]:
    rows = list(s.scalars(select(AlertGrace).where(AlertGrace.space_id == sp.id)))
    default = next((r.grace_seconds for r in rows if r.scope == "space"), None)
    return {
        "grace_seconds": default if default is not None else fallback,
        "grace_is_default": default is None,
        "overrides": [
            {"scope": r.scope, "target": r.target, "grace_seconds": r.grace_seconds}
            for r in rows
            if r.scope != "space"
        ],
    }


def _target(s: Session, sp: Space, scope: str, target: object) -> str:
    if scope == "space":
        return ""
    if not isinstance(target, str) or not target:
        raise ValueError(f'"target" must be the {scope} id')
    if scope == "room":
        return space_ops.room(s, sp, target).id
    if scope == "node":
        return space_ops.node(s, sp, target).id
    raise ValueError('"scope" must be space, room or node')


def set_grace(
    s: Session, actor: Principal, space_id: str, scope: object, target: object, grace: object
) -> dict[str, Any]:
    sp = space(s, actor, space_id, "manager")
    scope = str(scope or "space")
    tgt = _target(s, sp, scope, target)
    seconds = policy.check_grace(grace)
    row = s.get(AlertGrace, (sp.id, scope, tgt))
    if row is None:
        s.add(AlertGrace(space_id=sp.id, scope=scope, target=tgt, grace_seconds=seconds))
    else:
        row.grace_seconds = seconds
    log.info(
        "grace of %s %s in Space %s set to %g s by %s", scope, tgt, sp.id, seconds, actor.email
    )
    return {"scope": scope, "target": tgt, "grace_seconds": seconds}


def clear_grace(s: Session, actor: Principal, space_id: str, scope: str, target: str) -> bool:
    sp = space(s, actor, space_id, "manager")
    done = s.execute(
        delete(AlertGrace).where(
            AlertGrace.space_id == sp.id,
            AlertGrace.scope == scope,
            AlertGrace.target == ("" if scope == "space" else target),
        )
    )
    return bool(getattr(done, "rowcount", 0))


# --- channels ---------------------------------------------------------------------


def channel_json(ch: NotificationChannel) -> dict[str, Any]:
    cfg = json.loads(ch.config)
    cfg.pop("ca_pem", None)
    return {
        "id": ch.id,
        "name": ch.name,
        "kind": ch.kind,
        "config": cfg,
        "has_secret": ch.secret_sealed is not None,
        "rooms": json.loads(ch.rooms),
        "severities": json.loads(ch.severities),
        "enabled": ch.enabled,
        "created_at": iso(ch.created_at),
    }


def _routing(s: Session, sp: Space, body: dict[str, Any], ch: NotificationChannel) -> None:
    if "rooms" in body:
        rooms = body["rooms"] or []
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise ValueError('"rooms" must be a list of room ids ([] for every room)')
        ch.rooms = json.dumps([space_ops.room(s, sp, str(r)).id for r in rooms])
    if "severities" in body:
        sev = body["severities"]
        if (
            not isinstance(sev, list)
            or not sev
            or not all(isinstance(v, str) and v in policy.SEVERITIES for v in sev)
        ):
            raise ValueError(f'"severities" must be a non-empty list of {policy.SEVERITIES}')
        ch.severities = json.dumps(sorted(set(sev), key=policy.SEVERITIES.index))
    if "enabled" in body:
        ch.enabled = bool(body["enabled"])


def channels_of(s: Session, actor: Principal, space_id: str) -> list[NotificationChannel]:
    sp = space(s, actor, space_id, "admin")
    return list(
        s.scalars(
            select(NotificationChannel)
            .where(NotificationChannel.space_id == sp.id)
            .order_by(NotificationChannel.created_at)
        )
    )


def create_channel(
    s: Session, box: SecretBox, actor: Principal, space_id: str, body: dict[str, Any]
) -> tuple[NotificationChannel, str | None]:
    """A new channel; for a webhook without a key, the key made for it (shown
    only in this answer)."""
    sp = space(s, actor, space_id, "admin")
    name = space_store.check_name(body.get("name"), "a channel")
    kind = str(body.get("kind") or "")
    cfg, secret = channels.check_config(kind, body)
    shown = None
    if kind == "webhook" and secret is None:
        secret = shown = pysecrets.token_urlsafe(32)
    ch = NotificationChannel(
        space_id=sp.id,
        name=name,
        kind=kind,
        config=json.dumps(cfg),
        secret_sealed=box.seal(secret) if secret else None,
        rooms="[]",
        severities=json.dumps(list(policy.SEVERITIES)),
        enabled=True,
        created_at=utcnow(),
    )
    _routing(s, sp, body, ch)
    s.add(ch)
    s.flush()
    log.info(
        "notification channel %s (%s) created in Space %s by %s", ch.id, kind, sp.id, actor.email
    )
    return ch, shown


def channel(s: Session, actor: Principal, space_id: str, channel_id: str) -> NotificationChannel:
    sp = space(s, actor, space_id, "admin")
    ch = s.get(NotificationChannel, channel_id)
    if ch is None or ch.space_id != sp.id:
        raise space_store.NotFound("Channel")
    return ch


def update_channel(
    s: Session,
    box: SecretBox,
    actor: Principal,
    space_id: str,
    channel_id: str,
    body: dict[str, Any],
) -> NotificationChannel:
    ch = channel(s, actor, space_id, channel_id)
    sp = space(s, actor, space_id, "admin")
    if "name" in body:
        ch.name = space_store.check_name(body.get("name"), "a channel")
    config_keys = {
        "url",
        "secret",
        "host",
        "port",
        "to",
        "from",
        "username",
        "password",
        "starttls",
        "ca_pem",
    }
    if config_keys & set(body):
        merged = {**json.loads(ch.config), **body}
        cfg, secret = channels.check_config(ch.kind, merged)
        ch.config = json.dumps(cfg)
        if secret is not None:
            ch.secret_sealed = box.seal(secret)
    _routing(s, sp, body, ch)
    return ch


def delete_channel(s: Session, actor: Principal, space_id: str, channel_id: str) -> None:
    s.delete(channel(s, actor, space_id, channel_id))


def test_item(s: Session, box: SecretBox, ch: NotificationChannel) -> Claimed:
    """A test notification for `ch`, sent at once (not through the outbox)."""
    sp = s.get(Space, ch.space_id)
    key = outbox.idempotency_key("test", ch.id, pysecrets.token_hex(8))
    return Claimed(
        id=0,
        key=key,
        event="test",
        body={"space": {"id": ch.space_id, "name": sp.name if sp else ""}, "name": "test"},
        attempts=1,
        channel_kind=ch.kind,
        channel_config=json.loads(ch.config),
        secret=box.open(ch.secret_sealed) if ch.secret_sealed else None,
    )


# --- silences ---------------------------------------------------------------------


def _label(target: object) -> str:
    """A label silence's target: "key=value" (the node's label as it shows)."""
    if not isinstance(target, str) or "=" not in target:
        raise ValueError('a label silence\'s "target" is "key=value"')
    key, value = (p.strip() for p in target.split("=", 1))
    if not key or len(key) > 64 or len(value) > 200:
        raise ValueError("a label key is 1 to 64 characters, its value at most 200")
    return f"{key}={value}"


def silence_json(x: Silence) -> dict[str, Any]:
    return {
        "id": x.id,
        "scope": x.scope,
        "target": x.target,
        "reason": x.reason,
        "ends_at": iso(x.ends_at),
        "created_by": x.created_by,
        "created_at": iso(x.created_at),
    }


def silences(s: Session, actor: Principal, space_id: str) -> list[Silence]:
    sp = space(s, actor, space_id)
    return list(
        s.scalars(
            select(Silence)
            .where(Silence.space_id == sp.id, Silence.ends_at > utcnow())
            .order_by(Silence.ends_at)
        )
    )


def create_silence(s: Session, actor: Principal, space_id: str, body: dict[str, Any]) -> Silence:
    sp = space(s, actor, space_id, "manager")
    scope = str(body.get("scope") or "")
    if scope not in ("node", "room", "label"):
        raise ValueError('"scope" must be node, room or label')
    if scope == "label":
        tgt = _label(body.get("target"))
    else:
        tgt = _target(s, sp, scope, body.get("target"))
    minutes = body.get("minutes")
    ends = body.get("ends_at")
    now = utcnow()
    if isinstance(minutes, int | float) and not isinstance(minutes, bool):
        if not 0 < minutes <= MAX_SILENCE / 60:  # before timedelta(): no overflow
            raise ValueError("minutes must be more than 0 and at most 90 days")
        ends_at = now + dt.timedelta(minutes=float(minutes))
    elif isinstance(ends, str):
        try:
            ends_at = aware(dt.datetime.fromisoformat(ends))
        except ValueError:
            raise ValueError('"ends_at" must be an ISO 8601 time') from None
    else:
        raise ValueError('send "minutes" (from now) or "ends_at" (ISO 8601)')
    if not now < ends_at <= now + dt.timedelta(seconds=MAX_SILENCE):
        raise ValueError("a silence must end in the future, within 90 days")
    reason = str(body.get("reason") or "")[:200]
    x = Silence(
        space_id=sp.id,
        scope=scope,
        target=tgt,
        reason=reason,
        ends_at=ends_at,
        created_by=actor.email,
        created_at=now,
    )
    s.add(x)
    s.flush()
    return x


def delete_silence(s: Session, actor: Principal, space_id: str, silence_id: str) -> None:
    sp = space(s, actor, space_id, "manager")
    x = s.get(Silence, silence_id)
    if x is None or x.space_id != sp.id:
        raise space_store.NotFound("Silence")
    s.delete(x)


# --- the delivery log ---------------------------------------------------------------


def notifications(
    s: Session, actor: Principal, space_id: str, state: str | None, limit: int = 200
) -> list[dict[str, Any]]:
    sp = space(s, actor, space_id)
    q = (
        select(Notification, NotificationChannel.name)
        .join(NotificationChannel, NotificationChannel.id == Notification.channel_id)
        .where(Notification.space_id == sp.id)
        .order_by(Notification.id.desc())
        .limit(limit)
    )
    if state:
        if state not in (outbox.PENDING, outbox.SENDING, outbox.SENT, outbox.FAILED):
            raise ValueError("state must be pending, sending, sent or failed")
        q = q.where(Notification.state == state)
    return [outbox.notification_json(n, name) for n, name in s.execute(q).all()]
