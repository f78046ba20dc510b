"""Issue 13's pages in a real Chromium: an ephemeral token with its TTL from
the token form, Remove nodes (filter, preview, remove), the Audit log
(filtered, admins only)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.fixtures.api import claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import make_member, session_client, sign_in

pytestmark = pytest.mark.browser


def test_ephemeral_token_bulk_remove_and_audit_log_pages(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab()
    page = tab.page
    sign_in(tab, cloud)

    # An ephemeral token with a TTL in minutes.
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/claim-tokens")
    page.fill("#create-token input[name=name]", "runners")
    page.fill("#create-token input[name=labels]", "env=ci")
    page.check("#create-token input[name=ephemeral]")
    page.fill("#create-token input[name=ephemeral_ttl_minutes]", "30")
    page.click("#create-token button[type=submit]")
    secret = page.locator("#new-token-secret").inner_text().strip()
    assert (
        "removed after 1800 s offline" in page.locator("tr[data-token-name='runners']").inner_text()
    )
    runners = [str(uuid.uuid4()) for _ in range(2)]
    for nid in runners:
        assert claim(cloud, nid, token=secret).status_code == 204
    keep = str(uuid.uuid4())
    assert claim(cloud, keep).status_code == 204

    # Remove nodes: filter by label, see the two, remove them.
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}")
    page.click("#remove-nodes-link")
    page.fill("#remove-filter input[name=label]", "env=ci")
    page.click("#remove-filter button[type=submit]")
    listed = {page.locator("#matches li").nth(i).get_attribute("data-node-id") for i in range(2)}
    assert listed == set(runners) and page.locator("#matches li").count() == 2
    tab.shot("remove-preview")
    page.click("#remove-confirm button[type=submit]")
    assert page.locator("#removed-count").inner_text().startswith("2 node(s) removed")
    nodes = {n["id"] for n in cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").json()}
    assert keep in nodes and not nodes & set(runners)

    # The audit log, filtered to removals.
    page.click("#audit-link")
    assert page.locator("tr[data-action='token.created']").count() == 1
    page.select_option("#audit-filter select[name=action]", "node.removed")
    page.click("#audit-filter button[type=submit]")
    rows = page.locator("#audit tbody tr")
    assert rows.count() == 2
    assert all(rows.nth(i).get_attribute("data-action") == "node.removed" for i in range(2))
    assert "bulk remove" in rows.nth(0).inner_text()
    tab.shot("audit")

    # Who may: a member sees neither link and gets 403 on both pages.
    email, password = make_member(cloud, "member")
    reader = session_client(cloud, email, password)
    home = reader.get(f"/spaces/{cloud.space_id}")
    assert "audit-link" not in home.text and "remove-nodes-link" not in home.text
    assert reader.get(f"/spaces/{cloud.space_id}/audit").status_code == 403
    assert reader.get(f"/spaces/{cloud.space_id}/nodes/remove").status_code == 403
    bad = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    assert bad.get(f"/spaces/{cloud.space_id}/audit", params={"since": "soon"}).status_code == 400
    empty = bad.get(f"/spaces/{cloud.space_id}/nodes/remove", params={"state": "nope"})
    assert empty.status_code == 400
