"""The alerts API and pages on a real Cloud: who may do what, secrets sealed
at rest, the test send against a real webhook server, validation answers,
and the pages' forms (with CSRF) over real HTTPS."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tests.fixtures.api import new_member
from tests.fixtures.cloud import Cloud
from tests.fixtures.receivers import WebhookReceiver, webhook
from tests.fixtures.ui import csrf_of, make_member, session_client

__all__ = ["webhook"]
KEY = "a-webhook-signing-key-of-32-chars"


def sp(cloud: Cloud) -> str:
    return f"/api/v1/spaces/{cloud.space_id}"


def test_roles_members_read_managers_silence_admins_configure(cloud: Cloud) -> None:
    member, manager = new_member(cloud, "member"), new_member(cloud, "manager")
    stranger = new_member(cloud, "")
    hook = {"name": "h", "kind": "webhook", "url": "http://127.0.0.1:9/x", "secret": KEY}
    assert cloud.api("GET", f"{sp(cloud)}/alerts", token=member).status_code == 200
    assert cloud.api("GET", f"{sp(cloud)}/alerts", token=stranger).status_code == 404
    for tok in (member, manager):
        r = cloud.api("POST", f"{sp(cloud)}/notification-channels", token=tok, json=hook)
        assert r.status_code == 403, r.text
        assert cloud.api("GET", f"{sp(cloud)}/notification-channels", token=tok).status_code == 403
    grace = {"scope": "space", "grace_seconds": 30}
    assert cloud.api("PUT", f"{sp(cloud)}/alert-grace", token=member, json=grace).status_code == 403
    assert (
        cloud.api("PUT", f"{sp(cloud)}/alert-grace", token=manager, json=grace).status_code == 200
    )
    room = cloud.room_ids[0]
    silence = {"scope": "room", "target": room, "minutes": 30, "reason": "upgrade"}
    r = cloud.api("POST", f"{sp(cloud)}/silences", token=member, json=silence)
    assert r.status_code == 403
    r = cloud.api("POST", f"{sp(cloud)}/silences", token=manager, json=silence)
    assert r.status_code == 201, r.text
    listed = cloud.api("GET", f"{sp(cloud)}/silences", token=member).json()
    assert [(x["scope"], x["target"], x["reason"]) for x in listed] == [("room", room, "upgrade")]
    r = cloud.api("DELETE", f"{sp(cloud)}/silences/{listed[0]['id']}", token=manager)
    assert r.status_code == 204
    assert cloud.api("GET", f"{sp(cloud)}/alert-grace").json()["grace_seconds"] == 30


def test_bad_settings_are_refused_with_what_to_fix(cloud: Cloud) -> None:
    cases = [
        ({"name": "h", "kind": "pager", "url": "http://x/"}, "kind must be one of"),
        ({"name": "h", "kind": "webhook", "url": "ftp://x/"}, "http:// or https://"),
        ({"name": "h", "kind": "webhook", "url": "http://x/", "secret": "short"}, "16"),
        ({"name": "m", "kind": "email", "host": "smtp", "to": ["x"], "from": "a@b"}, '"to"'),
        (
            {"name": "h", "kind": "webhook", "url": "http://x/", "severities": ["info"]},
            "severities",
        ),
    ]
    for body, words in cases:
        r = cloud.api("POST", f"{sp(cloud)}/notification-channels", json=body)
        assert r.status_code == 400 and words in r.json()["errorMessage"], (body, r.text)
    r = cloud.api("PUT", f"{sp(cloud)}/alert-grace", json={"grace_seconds": -5})
    assert r.status_code == 400 and "between 0" in r.json()["errorMessage"]
    r = cloud.api(
        "PUT",
        f"{sp(cloud)}/alert-grace",
        json={"scope": "node", "target": "nope", "grace_seconds": 5},
    )
    assert r.status_code == 404
    r = cloud.api("GET", f"{sp(cloud)}/alerts", params={"severity": "loud"})
    assert r.status_code == 400
    label = {"scope": "label", "target": "no equals sign", "minutes": 5}
    r = cloud.api("POST", f"{sp(cloud)}/silences", json=label)
    assert r.status_code == 400 and "key=value" in r.json()["errorMessage"]
    r = cloud.api("POST", f"{sp(cloud)}/silences", json={**label, "minutes": 10**400 // 10**300})
    assert r.status_code == 400
    r = cloud.api("POST", f"{sp(cloud)}/silences", json={**label, "target": " env = prod "})
    assert r.status_code == 201 and r.json()["target"] == "env=prod"


def test_secrets_are_sealed_at_rest_and_never_shown(cloud: Cloud, webhook: WebhookReceiver) -> None:
    r = cloud.api(
        "POST",
        f"{sp(cloud)}/notification-channels",
        json={"name": "ops", "kind": "webhook", "url": webhook.url, "secret": KEY},
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["has_secret"] and "secret" not in made and KEY not in r.text
    mail = {
        "name": "mail",
        "kind": "email",
        "host": "127.0.0.1",
        "port": 2525,
        "username": "u",
        "password": "smtp-password-in-clear",
        "from": "t@example.test",
        "to": ["ops@example.test"],
    }
    r = cloud.api("POST", f"{sp(cloud)}/notification-channels", json=mail)
    assert r.status_code == 201, r.text
    listed = cloud.api("GET", f"{sp(cloud)}/notification-channels").text
    assert KEY not in listed and "smtp-password-in-clear" not in listed
    engine = sa.create_engine(cloud.database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT config, secret_sealed FROM notification_channels"))
        stored = " ".join(f"{c} {s}" for c, s in rows)
    engine.dispose()
    assert KEY not in stored and "smtp-password-in-clear" not in stored
    if cloud.database_url.startswith("sqlite"):
        raw = Path(cloud.database_url.removeprefix("sqlite:///")).read_bytes()
        assert KEY.encode() not in raw
    # A webhook made without a key gets one, shown once.
    r = cloud.api(
        "POST",
        f"{sp(cloud)}/notification-channels",
        json={"name": "auto", "kind": "webhook", "url": webhook.url},
    )
    assert len(r.json()["secret"]) >= 32


def test_the_test_send_reaches_a_real_receiver_signed(
    cloud: Cloud, webhook: WebhookReceiver
) -> None:
    r = cloud.api(
        "POST",
        f"{sp(cloud)}/notification-channels",
        json={"name": "ops", "kind": "webhook", "url": webhook.url, "secret": KEY},
    )
    cid = r.json()["id"]
    r = cloud.api("POST", f"{sp(cloud)}/notification-channels/{cid}/test")
    assert r.status_code == 200 and r.json()["delivered"], r.text
    (d,) = webhook.accepted()
    assert d.signed_by(KEY) and not d.signed_by("another-key-of-enough-length")
    assert d.json()["event"] == "test" and d.key == r.json()["idempotency_key"]
    # A receiver that refuses: the answer says so.
    webhook.fail_first = 99
    r = cloud.api("POST", f"{sp(cloud)}/notification-channels/{cid}/test")
    assert r.status_code == 502 and "HTTP 500" in r.json()["error"]


def test_pages_show_alerts_and_configure_channels(cloud: Cloud, webhook: WebhookReceiver) -> None:
    admin = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    base = f"/spaces/{cloud.space_id}/alerts"
    page = admin.get(base)
    assert page.status_code == 200 and "No active alerts." in page.text
    assert admin.get(base, params={"severity": "loud"}).status_code == 400
    settings = admin.get(base + "/settings")
    assert settings.status_code == 200
    csrf = csrf_of(settings.text)
    r = admin.post(
        base + "/channels",
        data={
            "csrf_token": csrf,
            "kind": "webhook",
            "name": "from the page",
            "url": webhook.url,
            "secret": KEY,
            "severities": "critical",
        },
    )
    assert r.status_code == 303, r.text
    (ch,) = cloud.api("GET", f"{sp(cloud)}/notification-channels").json()
    assert ch["name"] == "from the page" and ch["severities"] == ["critical"]
    r = admin.post(f"{base}/channels/{ch['id']}/test", data={"csrf_token": csrf})
    assert r.status_code == 200 and "Test sent: the receiver took it." in r.text
    assert len(webhook.accepted()) == 1
    # Without the CSRF token nothing changes.
    r = admin.post(f"{base}/channels/{ch['id']}/delete", data={})
    assert r.status_code == 403
    assert len(cloud.api("GET", f"{sp(cloud)}/notification-channels").json()) == 1
    r = admin.post(
        f"{base}/grace", data={"csrf_token": csrf, "scope": "space", "grace_seconds": "45"}
    )
    assert r.status_code == 303
    assert cloud.api("GET", f"{sp(cloud)}/alert-grace").json()["grace_seconds"] == 45
    # A member sees the alerts page but not the channels.
    email, password = make_member(cloud, "member")
    member = session_client(cloud, email, password)
    assert member.get(base).status_code == 200
    assert member.get(base + "/settings").status_code == 403
