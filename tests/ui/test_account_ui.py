"""Your password (changed with the current one) and a Space admin's reset,
through the real sign-in form of a real Cloud; and the attack the reset rule
stops: an admin of one Space taking over someone who also belongs to a Space
they do not administer."""

from __future__ import annotations

import re

import httpx

from tests.fixtures.api import new_member
from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import csrf_of, make_member, session_client


def signed_in(c: httpx.Client) -> bool:
    return c.get("/account").status_code == 200


def test_change_your_password(cloud: Cloud) -> None:
    email, password = make_member(cloud)
    here = session_client(cloud, email, password)
    elsewhere = session_client(cloud, email, password)
    csrf = csrf_of(here.get("/account").text)
    new = "a-new-password-42"

    def change(current: str, again: str = new, token: str = csrf) -> httpx.Response:
        form = {"csrf_token": token, "current": current, "password": new, "again": again}
        return here.post("/account/password", data=form)

    r = change("wrong password")
    assert r.status_code == 403 and "current password is not right" in r.text
    r = change(password, again="something else")
    assert r.status_code == 400 and "differ" in r.text
    assert change(password, token="forged").status_code == 403
    r = change(password)
    assert r.status_code == 303 and r.headers["location"] == "/account?done=password-changed"
    # This browser stays signed in (a new session); every other one is out.
    assert signed_in(here)
    assert not signed_in(elsewhere)
    session_client(cloud, email, new)
    bad = cloud.client(follow_redirects=False)
    token = re.search(r'name="login_csrf" value="([^"]+)"', bad.get("/signin").text)
    assert token
    r = bad.post(
        "/signin", data={"email": email, "password": password, "login_csrf": token.group(1)}
    )
    assert r.status_code == 401


def test_an_admin_resets_a_members_password(cloud: Cloud) -> None:
    email, password = make_member(cloud)
    member = session_client(cloud, email, password)
    admin = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    page = admin.get(f"/spaces/{cloud.space_id}/manage")
    row = re.search(
        r'data-email="' + re.escape(email) + r'".*?/members/([0-9a-f-]+)/reset-password',
        page.text,
        re.S,
    )
    assert row, "no reset form for the member"
    user_id = row.group(1)
    csrf = csrf_of(page.text)
    url = f"/spaces/{cloud.space_id}/members/{user_id}/reset-password"
    r = admin.post(url, data={"csrf_token": csrf})
    assert r.status_code == 200, r.text
    shown = re.search(r'id="reset-password">([^<]+)<', r.text)
    assert shown and r.headers["cache-control"] == "no-store"
    assert not signed_in(member)  # signed out everywhere
    session_client(cloud, email, shown.group(1))
    # A plain member cannot reset anyone.
    other_email, other_password = make_member(cloud)
    plain = session_client(cloud, other_email, other_password)
    csrf_plain = csrf_of(plain.get("/account").text)
    r = plain.post(url, data={"csrf_token": csrf_plain})
    assert r.status_code == 403


def test_no_reset_of_someone_in_a_space_you_do_not_administer(cloud: Cloud) -> None:
    """The attack: the victim is a member here and an admin of their own Space."""
    victim_token = new_member(cloud)
    victim_id = cloud.api("GET", "/api/v1/me", token=victim_token).json()["id"]
    r = cloud.api("POST", "/api/v1/spaces", token=victim_token, json={"name": "Victim's own"})
    assert r.status_code in (200, 201), r.text
    admin = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    csrf = csrf_of(admin.get(f"/spaces/{cloud.space_id}/manage").text)
    r = admin.post(
        f"/spaces/{cloud.space_id}/members/{victim_id}/reset-password", data={"csrf_token": csrf}
    )
    assert r.status_code == 403, r.text
    assert "tether-cloud admin set-password" in r.text
    assert 'id="reset-password"' not in r.text
    # Their credentials still work: nothing was changed.
    assert cloud.api("GET", "/api/v1/me", token=victim_token).status_code == 200
    # Nor of oneself (that is the change form, with the current password).
    me = cloud.api("GET", "/api/v1/me").json()["id"]
    r = admin.post(
        f"/spaces/{cloud.space_id}/members/{me}/reset-password", data={"csrf_token": csrf}
    )
    assert r.status_code == 403 and "account page" in r.text
