"""/nodes/{id}: the node URL kickstart.sh prints (a node does not know its
Space) takes a member of the node's Space to the node's page, and tells
nobody else that the node exists."""

from __future__ import annotations

import json
import secrets
import uuid

from tests.fixtures.api import claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import make_member, session_client


def test_node_url_redirects_members_and_is_404_for_others(cloud: Cloud) -> None:
    node_id = str(uuid.uuid4())
    assert claim(cloud, node_id).status_code == 204
    email, password = make_member(cloud, "member")
    browser = session_client(cloud, email, password)
    try:
        r = browser.get(f"/nodes/{node_id.upper()}")
        assert r.status_code == 303
        assert r.headers["location"] == f"/spaces/{cloud.space_id}/nodes/{node_id}"
        page = browser.get(r.headers["location"])
        assert page.status_code == 200 and "web-1" in page.text
        unknown = browser.get(f"/nodes/{uuid.uuid4()}")
        assert unknown.status_code == 404
    finally:
        browser.close()

    # A user of another Space: the same 404 as for a node that does not exist.
    other_email, other_password = f"x{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(12)
    made = cloud.cli(
        "admin",
        "create-user",
        "--email",
        other_email,
        "--password-stdin",
        "--json",
        input=other_password + "\n",
    )
    assert made.returncode == 0 and json.loads(made.stdout)["user_id"]
    stranger = session_client(cloud, other_email, other_password)
    try:
        r = stranger.get(f"/nodes/{node_id}")
        assert r.status_code == 404 and node_id not in r.text and "web-1" not in r.text
    finally:
        stranger.close()

    # Signed out: to the sign-in page, back to this URL after.
    with cloud.client(follow_redirects=False) as anonymous:
        r = anonymous.get(f"/nodes/{node_id}")
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=")
