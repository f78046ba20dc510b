"""API tokens in a real headless Chromium against a real Cloud: create one
(name, scope, expiry) whose secret is shown once, use it, revoke it. And the
attacks: a read-only token that tries to change something (or to mint itself
a full token), an expired token, another user's token revoked by prefix."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import sqlalchemy as sa

from tests.fixtures.api import new_member
from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import csrf_of, make_member, session_client, sign_in


@pytest.mark.browser
def test_create_use_and_revoke_an_api_token(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab()
    page = tab.page
    sign_in(tab, cloud)
    page.click("#account-link")
    page.click("#api-tokens-link")
    page.wait_for_selector("#create-api-token")
    page.fill("#create-api-token input[name=name]", "backup <script>")
    page.check("#create-api-token input[name=scope][value=read]")
    page.select_option("#create-api-token select[name=expiry]", "30 days")
    page.click("#create-api-token button[type=submit]")
    secret = page.locator("#new-api-token-secret").inner_text()
    assert re.fullmatch(r"tat_[A-Za-z0-9]+_\S+", secret), secret
    prefix = secret.split("_")[1]
    row = page.locator(f"tr[data-prefix='{prefix}']")
    assert row.get_attribute("data-state") == "active"
    assert "backup <script>" in row.inner_text()  # the name is text
    assert "read" in row.locator("td[data-label=Scope]").inner_text()
    assert row.locator("td[data-label=Expires] time").count() == 1
    tab.shot("created")
    # It works, read-only.
    me = cloud.api("GET", "/api/v1/me", token=secret)
    assert me.status_code == 200 and me.json()["email"] == cloud.admin_email
    # Shown once: the list page never holds it again.
    page.goto(f"{cloud.url}/account/api-tokens")
    assert secret not in page.content()
    assert page.locator("#new-api-token").count() == 0
    # Revoke, with the confirmation opened first.
    row = page.locator(f"tr[data-prefix='{prefix}']")
    row.locator("summary").click()
    row.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r".*done=revoked"))
    assert page.locator(f"tr[data-prefix='{prefix}']").get_attribute("data-state") == "revoked"
    tab.shot("revoked")
    assert cloud.api("GET", "/api/v1/me", token=secret).status_code == 401
    assert not [e for e in tab.console_errors if "Content Security Policy" in e], tab.console_errors


def test_a_read_token_cannot_change_anything_nor_mint_a_full_token(cloud: Cloud) -> None:
    r = cloud.api("POST", "/api/v1/me/api-tokens", json={"name": "ro", "scope": "read"})
    assert r.status_code in (200, 201), r.text
    read = r.json()["token"]
    assert r.json()["scope"] == "read" and r.json()["expires_at"] is None
    assert cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes", token=read).status_code == 200
    # The attack: writes with a read token, including making a full token.
    for method, path, body in (
        ("POST", "/api/v1/me/api-tokens", {"name": "escalate", "scope": "full"}),
        ("POST", f"/api/v1/spaces/{cloud.space_id}/rooms", {"name": "sneaky"}),
        ("DELETE", f"/api/v1/me/api-tokens/{cloud.api_token.split('_')[1]}", None),
        ("POST", f"/api/v1/spaces/{cloud.space_id}/claim-token", None),
    ):
        r = cloud.api(method, path, token=read, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["errorMsgKey"] == "ErrTokenScope"
    tokens = cloud.api("GET", "/api/v1/me/api-tokens").json()
    assert not [t for t in tokens if t["name"] == "escalate"]
    rooms = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/rooms").json()
    assert "sneaky" not in {room["name"] for room in rooms}
    # Bad input: a clear 400.
    bad: list[dict[str, object]] = [
        {"scope": "root"},
        {"expires_in_days": 0},
        {"expires_in_days": "7"},
        {"expires_in_days": 10**30},  # would overflow a date: refused, not a 500
    ]
    for extra in bad:
        r = cloud.api("POST", "/api/v1/me/api-tokens", json={"name": "x", **extra})
        assert r.status_code == 400 and r.json()["errorMsgKey"] == "ErrBadRequest", r.text


def test_an_expired_token_is_refused(cloud: Cloud) -> None:
    r = cloud.api("POST", "/api/v1/me/api-tokens", json={"name": "short", "expires_in_days": 1})
    token = r.json()["token"]
    assert r.json()["expires_at"] is not None
    prefix = r.json()["prefix"]
    # A day passes: the row's expiry is moved into the past in the database
    # (before the token was ever used, so no cache holds it).
    engine = sa.create_engine(cloud.database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE api_tokens SET expires_at = :t WHERE prefix = :p"),
            {"t": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1), "p": prefix},
        )
    engine.dispose()
    r = cloud.api("GET", "/api/v1/me", token=token)
    assert r.status_code == 401, r.text
    listed = {t["prefix"]: t for t in cloud.api("GET", "/api/v1/me/api-tokens").json()}
    assert listed[prefix]["expired"] is True


def test_tokens_page_rules(cloud: Cloud) -> None:
    """Another user's token cannot be revoked by its prefix; forms need CSRF;
    bad input is a 400 page."""
    other = new_member(cloud)
    their_prefix = other.split("_")[1]
    email, password = make_member(cloud)
    c = session_client(cloud, email, password)
    page = c.get("/account/api-tokens")
    assert page.status_code == 200
    csrf = csrf_of(page.text)
    r = c.post(f"/account/api-tokens/{their_prefix}/revoke", data={"csrf_token": csrf})
    assert r.status_code == 404
    assert cloud.api("GET", "/api/v1/me", token=other).status_code == 200
    r = c.post("/account/api-tokens", data={"name": "x", "scope": "read", "expiry": "7 days"})
    assert r.status_code == 403  # no CSRF token
    r = c.post(
        "/account/api-tokens",
        data={"csrf_token": csrf, "name": "x", "scope": "admin", "expiry": "7 days"},
    )
    assert r.status_code == 400 and "Choose a scope" in r.text
    assert not re.search(r"tat_[A-Za-z0-9]+_[A-Za-z0-9]", r.text)
    r = c.get("/account/api-tokens")
    assert r.headers["cache-control"] == "no-store"
