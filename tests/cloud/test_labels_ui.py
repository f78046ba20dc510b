"""The room rules page over real HTTPS (signed in like a browser): a manager
adds a rule, the members show by rule or manual, a member only reads."""

from __future__ import annotations

import re
import uuid

from tests.fixtures.api import claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import csrf_of, make_member, session_client


def test_rules_page_adds_and_removes_a_rule_and_shows_membership(cloud: Cloud) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    room = cloud.api("POST", f"{sp}/rooms", json={"name": "gpu"}).json()["id"]
    by_rule, by_hand = str(uuid.uuid4()), str(uuid.uuid4())
    for node_id in (by_rule, by_hand):
        assert claim(cloud, node_id).status_code == 204
    cloud.api("PUT", f"{sp}/nodes/{by_rule}/labels", json={"labels": {"gpu": "a100"}})
    assert cloud.api("PUT", f"{sp}/rooms/{room}/nodes/{by_hand}").status_code == 204

    web = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    page_url = f"/spaces/{cloud.space_id}/rooms/{room}/rules"
    manage = web.get(f"/spaces/{cloud.space_id}/manage")
    assert page_url in manage.text  # linked from Manage Space
    page = web.get(page_url)
    assert page.status_code == 200 and "No rules" in page.text
    r = web.post(
        page_url,
        data={
            "csrf_token": csrf_of(page.text),
            "action": "include",
            "key": "gpu",
            "op": "starts_with",
            "value": "a1",
        },
    )
    assert r.status_code == 303
    page = web.get(r.headers["location"])
    assert "Rule added" in page.text and "include when <code>gpu</code> starts with" in page.text
    assert f'data-node-id="{by_rule}" data-membership="rule"' in page.text
    assert f'data-node-id="{by_hand}" data-membership="manual"' in page.text

    bad = web.post(page_url, data={"csrf_token": csrf_of(page.text), "key": "gpu", "op": "regex"})
    assert bad.status_code == 400 and "op" in bad.text
    no_csrf = web.post(page_url, data={"key": "k", "value": "v"})
    assert no_csrf.status_code == 403

    rule_id = re.search(r'data-rule-id="([^"]+)"', page.text)
    assert rule_id
    r = web.post(f"{page_url}/{rule_id.group(1)}/remove", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    page = web.get(r.headers["location"])
    assert by_rule not in page.text and f'data-node-id="{by_hand}"' in page.text

    email, password = make_member(cloud, "member")
    reader = session_client(cloud, email, password)
    seen = reader.get(page_url)
    assert seen.status_code == 200 and 'id="add-rule"' not in seen.text
    refused = reader.post(
        page_url, data={"csrf_token": csrf_of(seen.text), "key": "k", "value": "v"}
    )
    assert refused.status_code == 403
