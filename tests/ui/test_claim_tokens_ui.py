"""The claiming tokens page in a real Chromium: create (secret shown once),
uses listed, revoke; only admins see it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.api import claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import make_member, sign_in

pytestmark = pytest.mark.browser


def test_admin_creates_a_token_sees_it_once_sees_its_use_and_revokes_it(
    cloud: Cloud, open_tab: Any
) -> None:
    tab = open_tab()
    page = tab.page
    sign_in(tab, cloud)
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/manage")
    page.click("#named-tokens")
    page.wait_for_selector("#create-token")
    assert page.locator("tr[data-token-name='default']").count() == 1

    page.fill("#create-token input[name=name]", "pods")
    page.fill("#create-token input[name=max_uses]", "1")
    page.check(f"#create-token input[name=rooms][value='{cloud.room_ids[1]}']")
    page.fill("#create-token input[name=labels]", "env=prod, team=web")
    page.click("#create-token button[type=submit]")
    secret = page.locator("#new-token-secret").inner_text().strip()
    assert secret.startswith("tct_")
    tab.shot("created")

    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/claim-tokens")
    assert secret not in page.content()  # shown only in the answer to the form
    row = page.locator("tr[data-token-name='pods']")
    assert row.get_attribute("data-state") == "active"
    assert "env=prod" in row.inner_text() and "team=web" in row.inner_text()

    assert claim(cloud, token=secret).status_code == 204
    page.reload()
    row = page.locator("tr[data-token-name='pods']")
    assert row.get_attribute("data-state") == "used_up"
    assert "1 of 1" in row.inner_text()
    row.locator("summary:has-text('who')").click()
    assert "claimed" in row.inner_text() and "127.0.0.1" in row.inner_text()

    row.locator("summary:has-text('Revoke')").click()
    row.locator("button:has-text('Yes, revoke pods')").click()
    page.wait_for_url("**/claim-tokens?done=revoked")
    assert page.locator("tr[data-token-name='pods']").get_attribute("data-state") == "revoked"
    assert "refused" in page.locator("p.flash").inner_text()
    tab.shot("revoked")
    assert tab.console_errors == []


def test_a_manager_cannot_open_the_tokens_page(cloud: Cloud, open_tab: Any) -> None:
    email, password = make_member(cloud, "manager")
    tab = open_tab()
    sign_in(tab, cloud, email, password)
    r = tab.page.goto(f"{cloud.url}/spaces/{cloud.space_id}/claim-tokens")
    assert r is not None and r.status == 403
    assert "admin" in tab.page.content()
