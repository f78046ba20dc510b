"""The REST API against a real Cloud: roles, Spaces, rooms, nodes, login, OpenAPI."""

from __future__ import annotations

import uuid

from tests.fixtures.api import claim, new_member, nodes
from tests.fixtures.cloud import Cloud


def test_roles_and_membership(cloud: Cloud) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    member = new_member(cloud, "member")
    manager = new_member(cloud, "manager")
    outsider = new_member(cloud, role="")

    assert cloud.api("GET", "/api/v1/me", token=member).json()["spaces"][0]["role"] == "member"
    # Not a member: the Space does not exist for them.
    r = cloud.api("GET", f"{sp}/nodes", token=outsider)
    assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNotFound"
    assert cloud.api("GET", f"{sp}/claim-token", token=outsider).status_code == 404
    # Members read but do not change; managers manage rooms but not the token.
    assert cloud.api("GET", f"{sp}/rooms", token=member).status_code == 200
    assert cloud.api("POST", f"{sp}/rooms", token=member, json={"name": "x"}).status_code == 403
    assert cloud.api("POST", f"{sp}/rooms", token=manager, json={"name": "x"}).status_code == 201
    assert cloud.api("POST", f"{sp}/claim-token", token=manager).status_code == 403
    assert cloud.api("POST", f"{sp}/claim-token", token=member).status_code == 403
    assert cloud.api("PATCH", sp, token=manager, json={"name": "Mine"}).status_code == 403
    # Promote the member to admin: now they read the token.
    members = cloud.api("GET", f"{sp}/members").json()
    me = cloud.api("GET", "/api/v1/me", token=member).json()
    assert any(m["user_id"] == me["id"] and m["role"] == "member" for m in members)
    r = cloud.api("PATCH", f"{sp}/members/{me['id']}", json={"role": "admin"})
    assert r.status_code == 200
    assert cloud.api("GET", f"{sp}/claim-token", token=member).status_code == 200
    assert cloud.api("DELETE", f"{sp}/members/{me['id']}").status_code == 204
    assert cloud.api("GET", f"{sp}/claim-token", token=member).status_code == 404
    # The last admin cannot leave.
    admin_id = cloud.api("GET", "/api/v1/me").json()["id"]
    r = cloud.api("DELETE", f"{sp}/members/{admin_id}")
    assert r.status_code == 400 and "at least one admin" in r.json()["errorMessage"]
    # Inviting an email no account has answers like any invitation (no enumeration).
    r = cloud.api("POST", f"{sp}/members", json={"email": "nobody@example.org"})
    assert r.status_code == 201 and r.json()["state"] == "pending", r.text
    assert cloud.api("GET", "/api/v1/me", token="tat_bogus").status_code == 401


def test_spaces_crud(cloud: Cloud) -> None:
    r = cloud.api("POST", "/api/v1/spaces", json={"name": "Lab"})
    assert r.status_code == 201
    space = r.json()
    assert space["role"] == "admin"
    rooms = cloud.api("GET", f"/api/v1/spaces/{space['id']}/rooms").json()
    assert [r["name"] for r in rooms] == ["All nodes"]
    assert (
        cloud.api("PATCH", f"/api/v1/spaces/{space['id']}", json={"name": "Lab 2"}).json()["name"]
        == "Lab 2"
    )
    assert cloud.api("POST", "/api/v1/spaces", json={"name": ""}).status_code == 400
    token = cloud.api("GET", f"/api/v1/spaces/{space['id']}/claim-token").json()["token"]
    nid = str(uuid.uuid4())
    assert claim(cloud, nid, token=token).status_code == 204
    assert cloud.api("DELETE", f"/api/v1/spaces/{space['id']}").status_code == 204
    assert cloud.api("GET", f"/api/v1/spaces/{space['id']}").status_code == 404
    assert {s["name"] for s in cloud.api("GET", "/api/v1/spaces").json()} == {"My Space"}
    assert claim(cloud, token=token).status_code == 403  # its token died with it
    assert claim(cloud, nid).status_code == 204  # the node id is free again


def test_rooms_and_room_nodes(cloud: Cloud) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    all_nodes, default = cloud.room_ids
    nid = str(uuid.uuid4())
    assert claim(cloud, nid).status_code == 204
    room = cloud.api("POST", f"{sp}/rooms", json={"name": "Databases"}).json()
    assert cloud.api("PUT", f"{sp}/rooms/{room['id']}/nodes/{nid}").status_code == 204
    assert [n["id"] for n in cloud.api("GET", f"{sp}/rooms/{room['id']}/nodes").json()] == [nid]
    assert cloud.api("GET", f"{sp}/rooms/{default}/nodes").json() == []
    assert (
        cloud.api("PATCH", f"{sp}/rooms/{room['id']}", json={"name": "DBs"}).json()["name"] == "DBs"
    )
    assert cloud.api("DELETE", f"{sp}/rooms/{room['id']}/nodes/{nid}").status_code == 204
    assert cloud.api("GET", f"{sp}/rooms/{room['id']}/nodes").json() == []
    # The All nodes room keeps every node and cannot go away.
    assert cloud.api("DELETE", f"{sp}/rooms/{all_nodes}/nodes/{nid}").status_code == 400
    assert cloud.api("DELETE", f"{sp}/rooms/{all_nodes}").status_code == 400
    assert cloud.api("DELETE", f"{sp}/rooms/{room['id']}").status_code == 204
    assert [r["name"] for r in cloud.api("GET", f"{sp}/rooms").json()] == ["All nodes", "Default"]
    # A room of another Space is not found through this one.
    other = cloud.api("POST", "/api/v1/spaces", json={"name": "Other"}).json()
    other_room = cloud.api("GET", f"/api/v1/spaces/{other['id']}/rooms").json()[0]["id"]
    assert cloud.api("PUT", f"{sp}/rooms/{other_room}/nodes/{nid}").status_code == 404


def test_remove_node_any_state(cloud: Cloud) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    nid = str(uuid.uuid4())
    assert claim(cloud, nid, rooms=[cloud.room_ids[1]]).status_code == 204
    detail = cloud.api("GET", f"{sp}/nodes/{nid}").json()
    assert detail["state"] == "unseen" and detail["events"][0]["kind"] == "claimed"
    member = new_member(cloud, "member")
    assert cloud.api("DELETE", f"{sp}/nodes/{nid}", token=member).status_code == 403
    assert cloud.api("DELETE", f"{sp}/nodes/{nid}").status_code == 204
    assert nodes(cloud) == []
    assert cloud.api("GET", f"{sp}/rooms/{cloud.room_ids[1]}/nodes").json() == []
    assert cloud.api("DELETE", f"{sp}/nodes/{nid}").status_code == 404


def test_login_cookie_and_csrf(cloud: Cloud) -> None:
    assert cloud.admin_password
    with cloud.client() as c:
        r = c.post("/api/v1/auth/login", json={"email": cloud.admin_email, "password": "wrong"})
        assert r.status_code == 401
        r = c.post(
            "/api/v1/auth/login",
            json={"email": cloud.admin_email, "password": cloud.admin_password},
        )
        assert r.status_code == 200
        csrf = r.json()["csrf_token"]
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=lax" in cookie
        assert c.get("/api/v1/me").json()["email"] == cloud.admin_email
        r = c.post("/api/v1/spaces", json={"name": "Via cookie"})
        assert r.status_code == 403 and r.json()["errorMsgKey"] == "ErrCSRF"
        r = c.post("/api/v1/spaces", json={"name": "Via cookie"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201
        assert c.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        c.cookies.clear()
        assert c.get("/api/v1/me").status_code == 401


def test_openapi_lists_the_api(cloud: Cloud) -> None:
    r = cloud.api("GET", "/api/openapi.json", token="")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "put" in paths["/api/v1/spaces/nodes/{node_id}"]
    assert "get" in paths["/api/v1/spaces/{space_id}/nodes"]
    assert "delete" in paths["/api/v1/spaces/{space_id}/nodes/{node_id}"]
    assert paths["/api/v1/spaces/{space_id}/claim-token"]["get"]["summary"]


def test_failed_api_logins_are_rate_limited(cloud: Cloud) -> None:
    """Guessing passwords through the API is limited like the sign-in page:
    after 10 failures a minute the address waits, even with the right password."""
    with cloud.client() as c:
        for _ in range(10):
            r = c.post("/api/v1/auth/login", json={"email": cloud.admin_email, "password": "x"})
            assert r.status_code == 401
        r = c.post(
            "/api/v1/auth/login",
            json={"email": cloud.admin_email, "password": cloud.admin_password},
        )
        assert r.status_code == 429, r.text
        assert r.json()["errorMsgKey"] == "ErrRateLimited"
        assert 0 < int(r.headers["Retry-After"]) <= 61
