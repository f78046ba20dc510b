"""The UI's server-side rules, checked over real HTTPS without a browser:
who may see the token, CSRF, security headers, the CA chain, served files."""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command
from tests.fixtures.ui import csrf_of, make_member, session_client, trust_cloud
from tether.cloud.tls import cert_sha256

KICKSTART = Path(__file__).resolve().parents[2] / "src" / "tether" / "claim" / "kickstart.sh"


def admin(cloud: Cloud) -> httpx.Client:
    return session_client(cloud, cloud.admin_email, str(cloud.admin_password))


def test_private_ca_chain_verifies_only_with_the_ca(cloud: Cloud) -> None:
    assert cloud.ca_file
    with httpx.Client(
        verify=ssl.create_default_context(cafile=cloud.ca_file), trust_env=False
    ) as c:
        assert c.get(cloud.url + "/signin").status_code == 200
    with (
        httpx.Client(trust_env=False) as c,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        c.get(cloud.url + "/signin")
    # /ca.pem serves that same CA, whose fingerprint the Connect Nodes page shows.
    with cloud.client() as c:
        served = c.get("/ca.pem")
    assert served.status_code == 200
    assert served.content == Path(cloud.ca_file).read_bytes()
    assert cert_sha256(Path(cloud.ca_file)) == cloud.ca_sha256


def test_kickstart_is_served_from_the_package(cloud: Cloud) -> None:
    with cloud.client() as c:
        r = c.get("/kickstart.sh")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(KICKSTART.read_bytes()).digest()


def test_pages_and_static_files_carry_security_headers(cloud: Cloud) -> None:
    c = admin(cloud)
    for path in (
        "/signin",
        f"/spaces/{cloud.space_id}/connect",
        "/ui/static/ui.js",
        "/ui/vendor/uplot/uPlot.iife.min.js",
    ):
        r = c.get(path, follow_redirects=True)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp, path
        assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
    page = c.get(f"/spaces/{cloud.space_id}/connect")
    assert page.headers["cache-control"] == "no-store"  # it holds the token
    # No inline scripts or styles anywhere (the CSP would block them).
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    assert "style=" not in page.text and "<style" not in page.text
    cookie = c.cookies.jar
    session = next(k for k in cookie if k.name == "tether_session")
    assert session.secure and session.has_nonstandard_attr("HttpOnly")


def test_member_gets_403_and_never_the_token(cloud: Cloud) -> None:
    email, password = make_member(cloud)
    c = session_client(cloud, email, password)
    for path in (
        f"/spaces/{cloud.space_id}/connect",
        f"/spaces/{cloud.space_id}/connect?env=docker-run",
    ):
        r = c.get(path)
        assert r.status_code == 403
        assert cloud.claim_token not in r.text and "tct_" not in r.text
    for path in (f"/spaces/{cloud.space_id}", f"/spaces/{cloud.space_id}/manage"):
        r = c.get(path, follow_redirects=True)
        assert r.status_code == 200 and "tct_" not in r.text
    # A member cannot rotate the token either, even with a valid form.
    form = c.get(f"/spaces/{cloud.space_id}/manage")
    r = c.post(
        f"/spaces/{cloud.space_id}/token/rotate",
        data={"csrf_token": csrf_of(form.text), "confirm": "yes"},
    )
    assert r.status_code == 403
    assert (
        cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token").json()["token"]
        == cloud.claim_token
    )


def test_forms_need_the_session_csrf_token(cloud: Cloud) -> None:
    c = admin(cloud)
    url = f"/spaces/{cloud.space_id}/rooms"
    r = c.post(url, data={"name": "no-token"})
    assert r.status_code == 403 and "did not come from this site" in r.text
    r = c.post(url, data={"name": "wrong", "csrf_token": "x" * 32})
    assert r.status_code == 403
    page = c.get(f"/spaces/{cloud.space_id}/manage")
    r = c.post(url, data={"name": "with-token", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    rooms = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/rooms").json()
    assert [x["name"] for x in rooms].count("with-token") == 1
    assert "no-token" not in [x["name"] for x in rooms]


def test_sign_in_rules(cloud: Cloud) -> None:
    with cloud.client() as c:
        # Pages and the polling endpoint send strangers to the sign-in page.
        r = c.get(f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}/nodes.json")
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=")
        # A sign-in form without its cookie pair (login CSRF) is refused.
        r = c.post(
            "/signin",
            data={
                "email": cloud.admin_email,
                "password": str(cloud.admin_password),
                "login_csrf": "x",
            },
        )
        assert r.status_code == 403
        form = c.get("/signin")
        token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
        assert token
        r = c.post(
            "/signin",
            data={
                "email": cloud.admin_email,
                "password": "wrong-password",
                "login_csrf": token.group(1),
            },
        )
        assert r.status_code == 401 and "Wrong email or password" in r.text
        # `next` never leads to another site.
        form = c.get("/signin?next=//evil.example.com/x")
        token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
        assert token and 'value="/"' in form.text
        r = c.post(
            "/signin",
            data={
                "email": cloud.admin_email,
                "password": str(cloud.admin_password),
                "login_csrf": token.group(1),
                "next": "//evil.example.com/x",
            },
        )
        assert r.status_code == 303 and r.headers["location"] == "/"
        # Sign out needs the CSRF token, then ends the session.
        room = c.get("/", follow_redirects=True)
        assert c.post("/signout", data={}).status_code == 403
        assert c.post("/signout", data={"csrf_token": csrf_of(room.text)}).status_code == 303
        assert c.get("/").headers["location"].startswith("/signin")


def test_add_existing_node_to_a_room_then_remove_it(cloud: Cloud) -> None:
    from tests.fixtures.api import claim

    node_id = str(uuid.uuid4())
    assert claim(cloud, node_id, hostname="db-7", rooms=[]).status_code == 204
    c = admin(cloud)
    default_room = cloud.room_ids[1]
    room_url = f"/spaces/{cloud.space_id}/rooms/{default_room}"
    page = c.get(room_url)
    assert 'id="choice-add"' in page.text and "db-7" not in page.text  # empty: both choices
    form = c.get(room_url + "/add")
    assert "db-7" in form.text
    r = c.post(room_url + "/add", data={"csrf_token": csrf_of(form.text), "node": node_id})
    assert r.status_code == 303
    nodes = c.get(room_url + "/nodes.json").json()
    assert [(n["hostname"], n["state"], n["unreachable"]) for n in nodes["nodes"]] == [
        ("db-7", "unseen", True)
    ]
    assert nodes["room_counts"][default_room] == 1
    # Remove it from the Space on its page: gone, and its key no longer claims.
    node_page = c.get(f"/spaces/{cloud.space_id}/nodes/{node_id}")
    assert node_page.status_code == 200 and 'id="remove-node"' in node_page.text
    r = c.post(
        f"/spaces/{cloud.space_id}/nodes/{node_id}/remove",
        data={"csrf_token": csrf_of(node_page.text)},
    )
    assert r.status_code == 303
    assert c.get(room_url + "/nodes.json").json()["nodes"] == []
    assert c.get(f"/spaces/{cloud.space_id}/nodes/{node_id}").status_code == 404


def test_roles_change_with_clear_errors(cloud: Cloud) -> None:
    email, _ = make_member(cloud)
    c = admin(cloud)
    manage = c.get(f"/spaces/{cloud.space_id}/manage")
    csrf = csrf_of(manage.text)
    members = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").json()
    by_email = {m["email"]: m["user_id"] for m in members}
    r = c.post(
        f"/spaces/{cloud.space_id}/members/{by_email[email]}/role",
        data={"csrf_token": csrf, "role": "manager"},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("done=member-changed")
    roles = {
        m["email"]: m["role"]
        for m in cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").json()
    }
    assert roles[email] == "manager"
    # The only admin cannot step down: the page says why.
    r = c.post(
        f"/spaces/{cloud.space_id}/members/{by_email[cloud.admin_email]}/role",
        data={"csrf_token": csrf, "role": "member"},
    )
    assert r.status_code == 400 and "at least one admin" in r.text
    # Inviting someone already in the Space says so; inviting anyone else makes an
    # invitation, whether or not an account has that email.
    r = c.post(
        f"/spaces/{cloud.space_id}/members",
        data={"csrf_token": csrf, "email": email, "role": "member"},
    )
    assert r.status_code == 409 and "already a member" in r.text
    r = c.post(
        f"/spaces/{cloud.space_id}/members",
        data={"csrf_token": csrf, "email": "nobody@example.com", "role": "member"},
    )
    assert r.status_code == 200 and 'id="new-invite-link"' in r.text


def test_user_without_a_space_can_create_one(cloud: Cloud) -> None:
    email, password = f"solo-{uuid.uuid4().hex[:6]}@example.com", "a-long-password"
    made = cloud.cli(
        "admin", "create-user", "--email", email, "--password-stdin", input=password + "\n"
    )
    assert made.returncode == 0, made.stderr
    c = session_client(cloud, email, password)
    home = c.get("/")
    assert home.status_code == 200 and "not in any Space yet" in home.text
    r = c.post("/spaces", data={"csrf_token": csrf_of(home.text), "name": "Solo lab"})
    assert r.status_code == 303
    room = c.get(r.headers["location"], follow_redirects=True)
    assert "Solo lab" in room.text and "All nodes" in room.text
    # Its creator is its admin: Connect Nodes works and shows that Space's own token.
    space_id = r.headers["location"].rsplit("/", 1)[1]
    connect = c.get(f"/spaces/{space_id}/connect?env=kubernetes")
    assert connect.status_code == 200 and "tct_" in connect.text
    assert cloud.claim_token not in connect.text


def test_invitations_are_answered_on_the_home_page(cloud: Cloud) -> None:
    """Inviting in Manage Space makes no member; the invitee accepts or
    declines on their home page (CSRF-checked forms), the admin can withdraw."""
    email, password = f"inv-{uuid.uuid4().hex[:6]}@example.com", "a-long-password"
    made = cloud.cli(
        "admin", "create-user", "--email", email, "--password-stdin", input=password + "\n"
    )
    assert made.returncode == 0, made.stderr
    a = admin(cloud)
    manage_url = f"/spaces/{cloud.space_id}/manage"
    csrf = csrf_of(a.get(manage_url).text)
    r = a.post(
        f"/spaces/{cloud.space_id}/members",
        data={"csrf_token": csrf, "email": email, "role": "manager"},
    )
    assert r.status_code == 200 and 'id="new-invite-link"' in r.text
    manage = a.get(manage_url)
    assert f'data-email="{email}" data-invitation-id=' in manage.text
    assert email not in cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").text

    c = session_client(cloud, email, password)
    assert c.get(f"/spaces/{cloud.space_id}").status_code == 404  # not a member yet
    home = c.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/invitations"
    page = c.get("/invitations")
    assert "My Space" in page.text and cloud.admin_email in page.text
    iid = re.search(r'data-invitation-id="([^"]+)"', page.text)
    assert iid, page.text
    # A form without the session's CSRF token does nothing.
    r = c.post(f"/invitations/{iid.group(1)}/accept", data={"csrf_token": "forged"})
    assert r.status_code == 403
    assert c.get(f"/spaces/{cloud.space_id}").status_code == 404
    r = c.post(f"/invitations/{iid.group(1)}/accept", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/spaces/{cloud.space_id}"
    assert c.get(f"/spaces/{cloud.space_id}").status_code == 303  # on to its first room
    roles = {
        m["email"]: m["role"]
        for m in cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").json()
    }
    assert roles[email] == "manager"
    # Accepting twice says it was answered already.
    r = c.post(f"/invitations/{iid.group(1)}/accept", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 409 and "already accepted" in r.text

    # Declined, and withdrawn, invitations to another Space make no member either.
    other = cloud.api("POST", "/api/v1/spaces", json={"name": "Other"}).json()["id"]
    for _ in range(2):
        r = cloud.api("POST", f"/api/v1/spaces/{other}/members", json={"email": email})
        assert r.status_code == 201, r.text
    page = c.get("/invitations")
    iid = re.search(r'data-invitation-id="([^"]+)"', page.text)
    assert iid and page.text.count("data-invitation-id=") == 1  # the newer replaced the older
    r = c.post(f"/invitations/{iid.group(1)}/decline", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/invitations?done=declined"
    assert c.get(f"/spaces/{other}").status_code == 404
    r = cloud.api("POST", f"/api/v1/spaces/{other}/members", json={"email": email})
    inv_id = r.json()["id"]
    manage = a.get(f"/spaces/{other}/manage")
    r = a.post(
        f"/spaces/{other}/invitations/{inv_id}/revoke", data={"csrf_token": csrf_of(manage.text)}
    )
    assert r.status_code == 303 and r.headers["location"].endswith("done=invitation-revoked")
    r = c.post(f"/invitations/{inv_id}/accept", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 410 and "withdrew" in r.text
    assert c.get(f"/spaces/{other}").status_code == 404
    assert c.get("/").headers["location"] == f"/spaces/{cloud.space_id}"


def test_connect_nodes_with_a_proxy(cloud: Cloud) -> None:
    c = admin(cloud)
    base = f"/spaces/{cloud.space_id}/connect?env=linux&room={cloud.room_ids[1]}"
    r = c.get(base + "&proxy=socks5h://proxy.lan:1080")
    assert r.status_code == 200
    assert "--claim-proxy socks5h://proxy.lan:1080" in r.text
    assert "-proxy=socks5h://proxy.lan:1080" in r.text
    r = c.get(base + "&proxy=proxy.lan:1080")
    assert 'id="proxy-error"' in r.text and "--claim-proxy" not in r.text
    assert cloud.claim_token in r.text  # the commands are still shown, without the proxy


def test_repeated_wrong_passwords_are_slowed_down(cloud: Cloud) -> None:
    with cloud.client() as c:

        def attempt(password: str) -> httpx.Response:
            form = c.get("/signin")
            token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
            assert token
            return c.post(
                "/signin",
                data={
                    "email": cloud.admin_email,
                    "password": password,
                    "login_csrf": token.group(1),
                },
            )

        for _ in range(10):
            assert attempt("not-the-password").status_code == 401
        # Now even the right password waits, and the page says for how long.
        r = attempt(str(cloud.admin_password))
        assert r.status_code == 429 and re.search(r"try again in \d+ s", r.text)


def test_a_cloned_node_is_shown_as_a_duplicate(
    cloud: Cloud, start_agent: AgentLauncher, tmp_path: Path
) -> None:
    first = start_agent()
    trust_cloud(first.prefix, cloud)
    done = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(first.prefix),
            f"-token={cloud.claim_token}",
            f"-url={cloud.url}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    c = admin(cloud)
    poll = f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}/nodes.json"

    def nodes() -> list[dict[str, Any]]:
        return list(c.get(poll).json()["nodes"])

    wait_until(lambda: [n["state"] for n in nodes()] == ["live"], "the node to go live")
    # A clone: the same var/lib/tether (identity and key) on another "machine".
    clone = tmp_path / "clone"
    shutil.copytree(first.prefix / "var" / "lib" / "tether", clone / "var" / "lib" / "tether")
    start_agent(prefix=clone)
    wait_until(
        lambda: len(nodes()) == 1 and bool(nodes()[0]["duplicate"]), "the duplicate to be shown"
    )
    assert "Two agents use this node's identity" in nodes()[0]["duplicate"]
    assert "-id=$(uuidgen)" in nodes()[0]["duplicate"]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
