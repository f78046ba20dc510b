"""Inviting someone without an account, in a real headless Chromium against a
real Cloud: the admin invites on Manage Space and gets the link once; the
invitee opens it in a browser of their own, sets a name and a password, lands
in the Space and sees its nodes (and no other Space). The link then fails a
second time; revoked and expired links fail with a clear message; wrong
tokens are rate limited."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.invitations import invite, link_path
from tests.fixtures.peer import Peer
from tests.fixtures.ui import sign_in


def invite_in_ui(page: Any, cloud: Cloud, email: str, role: str = "member") -> str:
    """Invite on Manage Space; the link the page shows once."""
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/manage")
    page.fill("#add-member input[name=email]", email)
    page.select_option("#add-member select[name=role]", role)
    page.select_option("#add-member select[name=expires]", "7 days")
    page.click("#add-member button[type=submit]")
    link = str(page.locator("#new-invite-link").inner_text()).strip()
    assert re.fullmatch(re.escape(cloud.url) + r"/invite/tin_[a-z0-9]{8}_\S{43,}", link), link
    return link


def refused(tab: Any, link: str) -> tuple[int, str]:
    """Open `link` in this browser: the answer's status and the message shown."""
    response = tab.page.goto(link)
    return response.status, str(tab.page.locator("#error-message").inner_text())


@pytest.mark.browser
def test_invitee_without_an_account_joins_through_the_link(cloud: Cloud, open_tab: Any) -> None:
    hostname = f"web-{uuid.uuid4().hex[:6]}"
    Peer(cloud, hostname=hostname).claim()
    r = cloud.api("POST", "/api/v1/spaces", json={"name": "Another Space"})
    assert r.status_code == 201, r.text
    admin = open_tab("admin")
    sign_in(admin, cloud)
    email = f"ada-{uuid.uuid4().hex[:6]}@example.org"
    link = invite_in_ui(admin.page, cloud, email)
    admin.shot("link-shown-once")
    row = admin.page.locator(f"#invitations tr[data-email='{email}']")
    assert "pending" in row.inner_text() and cloud.admin_email in row.inner_text()
    admin.page.goto(f"{cloud.url}/spaces/{cloud.space_id}/manage")
    assert admin.page.locator("#new-invite-link").count() == 0
    assert link not in admin.page.content()

    # The invitee: a browser of their own, no account, no session.
    invitee = open_tab("invitee")
    page = invitee.page
    page.goto(link)
    summary = page.locator("#invite-summary").inner_text()
    assert "My Space" in summary and cloud.admin_email in summary and email in summary
    invitee.shot("invite-page")
    page.fill("#invite-form input[name=name]", "Ada Lovelace")
    page.fill("#invite-form input[name=password]", "analytical-engine")
    page.fill("#invite-form input[name=again]", "analytical-engine")
    page.click("#invite-form button[type=submit]")
    page.wait_for_url(re.compile(rf".*/spaces/{cloud.space_id}/rooms/.*"))
    page.get_by_text(hostname).first.wait_for()
    assert "Another Space" not in page.content()  # only the Space invited to
    invitee.shot("joined-space")
    members = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").json()
    assert {(m["email"], m["role"]) for m in members} >= {(email, "member")}

    # The link works once: a second time it fails clearly, in any browser.
    status, message = refused(open_tab("second-use"), link)
    assert status == 409 and "already used" in message and "only once" in message

    # Revoked on Manage Space: the link fails.
    gone = f"gone-{uuid.uuid4().hex[:6]}@example.org"
    revoked_link = invite_in_ui(admin.page, cloud, gone)
    admin.page.goto(f"{cloud.url}/spaces/{cloud.space_id}/manage")
    admin.page.locator(f"#invitations tr[data-email='{gone}'] button[type=submit]").click()
    admin.page.wait_for_url(re.compile(r".*done=invitation-revoked"))
    assert admin.page.locator(f"#invitations tr[data-email='{gone}']").count() == 0
    stranger = open_tab("revoked")
    status, message = refused(stranger, revoked_link)
    assert status == 410 and "revoked" in message
    stranger.shot("revoked")

    # Expired: an invitation of one second, made through the API.
    short = invite(cloud, f"late-{uuid.uuid4().hex[:6]}@example.org", expires_in=1)
    expired_link = cloud.url + link_path(short)
    poll(lambda: cloud.client().get(expired_link).status_code == 410, 10, "the link to expire")
    status, message = refused(stranger, expired_link)
    assert status == 410 and "expired" in message and "invite you again" in message
    stranger.shot("expired")
    for tab in (admin, invitee, stranger):
        assert not [e for e in tab.console_errors if "Content Security Policy" in e]


@pytest.mark.browser
def test_wrong_invite_tokens_are_rate_limited(cloud: Cloud, open_tab: Any) -> None:
    link = cloud.url + link_path(invite(cloud, f"x-{uuid.uuid4().hex[:6]}@example.org"))
    guesser = open_tab("guesser")
    for _ in range(10):
        status, message = refused(
            guesser, f"{cloud.url}/invite/tin_{uuid.uuid4().hex[:8]}_{'A' * 43}"
        )
        assert status == 404 and "not valid" in message
    status, message = refused(guesser, f"{cloud.url}/invite/tin_abcdefgh_{'B' * 43}")
    assert status == 429 and "Too many wrong invitation links" in message
    guesser.shot("rate-limited")
    # From that address even the right link waits (the limit is per address).
    assert refused(guesser, link)[0] == 429
