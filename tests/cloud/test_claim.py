"""The claim endpoint against a real Cloud: success, every error key, rotation."""

from __future__ import annotations

import threading
import uuid

from tests.fixtures.api import claim, claim_body, ec_pem, new_member, nodes, rsa_pem
from tests.fixtures.cloud import Cloud


def test_done_when_admin_reads_token_member_forbidden_claim_lists_unseen(cloud: Cloud) -> None:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token")
    assert r.status_code == 200
    token = r.json()["token"]
    assert token == cloud.claim_token and token.startswith("tct_")
    assert r.json()["prefix"] == token.split("_")[1]

    member = new_member(cloud, "member")
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token", token=member)
    assert r.status_code == 403
    assert r.json()["errorMsgKey"] == "ErrForbidden"
    manager = new_member(cloud, "manager")
    assert (
        cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token", token=manager).status_code
        == 403
    )
    assert (
        cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token", token="").status_code
        == 401
    )

    node_id = str(uuid.uuid4())
    r = claim(cloud, node_id, rooms=[cloud.room_ids[1]], hostname="db-7")
    assert r.status_code == 204, r.text
    [node] = nodes(cloud, token=member)
    assert node["id"] == node_id and node["hostname"] == "db-7" and node["state"] == "unseen"
    assert set(node["rooms"]) == set(cloud.room_ids)  # All nodes + Default


def _key(r: object) -> str:
    return r.json()["errorMsgKey"]  # type: ignore[attr-defined, no-any-return]


def test_every_claim_error_key(start_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = start_cloud("--claim-failures-per-minute", "100")
    url = "/api/v1/spaces/nodes/"

    def put(node_id: str, body: object) -> object:
        return cloud.api("PUT", url + node_id, token="", json=body)

    nid = str(uuid.uuid4())
    r = claim(cloud, "not-a-uuid")
    assert (r.status_code, _key(r)) == (400, "ErrInvalidNodeID")
    assert "uuidgen" in r.json()["errorMessage"] and r.json()["errorCode"]
    body = claim_body(str(uuid.uuid4()), cloud.claim_token)
    r = put(nid, body)  # body id differs from the URL's
    assert (r.status_code, _key(r)) == (400, "ErrInvalidNodeID")

    for hostname in ["", "   ", "h" * 256, "bad\nname"]:
        r = claim(cloud, hostname=hostname)
        assert (r.status_code, _key(r)) == (400, "ErrInvalidNodeName"), hostname
    assert claim(cloud, hostname="h" * 255).status_code == 204

    other = cloud.api("POST", "/api/v1/spaces", json={"name": "Other"}).json()
    other_rooms = cloud.api("GET", f"/api/v1/spaces/{other['id']}/rooms").json()
    for rooms in [[other_rooms[0]["id"]], [str(uuid.uuid4())], ["no such room"]]:
        r = claim(cloud, rooms=rooms)
        assert r.status_code == 400, (rooms, r.status_code, r.text)
        assert _key(r) == "ErrInvalidRoomID"
    assert claim(cloud, rooms=["Default"]).status_code == 204  # a room name works too

    for key in ["", "garbage", ec_pem(), rsa_pem(1024)]:
        r = claim(cloud, key=key)
        assert (r.status_code, _key(r)) == (400, "ErrInvalidPublicKey")

    for token in ["", "nonsense", cloud.claim_token[:-4] + "AAAA", "tct_abcdefgh_" + "A" * 43]:
        r = claim(cloud, token=token)
        assert (r.status_code, _key(r)) == (403, "ErrForbidden"), token
        assert token not in r.text or not token

    taken = str(uuid.uuid4())
    assert claim(cloud, taken, key=rsa_pem(2048, 1)).status_code == 204
    r = claim(cloud, taken, key=rsa_pem(2048, 2))
    assert (r.status_code, _key(r)) == (409, "ErrAlreadyClaimed")
    other_token = cloud.api("GET", f"/api/v1/spaces/{other['id']}/claim-token").json()["token"]
    r = claim(cloud, taken, token=other_token, key=rsa_pem(2048, 1))
    assert (r.status_code, _key(r)) == (409, "ErrAlreadyClaimed")

    # Malformed and oversized bodies get a clear 4xx in the same JSON shape.
    with cloud.client() as c:
        r = c.put(url + nid, content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["errorMessage"]
        r = c.put(url + nid, content=b"[1, 2]")
        assert r.status_code == 400
        r = c.put(url + nid, content=b"x" * 200_000)
        assert r.status_code == 413 and r.json()["errorMsgKey"] == "ErrRequestTooLarge"

    audit = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-audit").json()
    results = {a["result"] for a in audit}
    assert {"claimed", "ErrInvalidRoomID", "ErrInvalidPublicKey", "ErrAlreadyClaimed"} <= results
    assert all(a["address"] == "127.0.0.1" for a in audit)
    # Logs name the token's prefix, never the token (quickstart's own banner aside).
    log_lines = [ln for ln in cloud.log_file.read_text().splitlines() if " INFO " in ln]
    assert any("token prefix" in ln for ln in log_lines)
    assert not any(cloud.claim_token in ln for ln in log_lines)


def test_reclaim_is_idempotent_and_merges_rooms(cloud: Cloud) -> None:
    nid = str(uuid.uuid4())
    assert claim(cloud, nid).status_code == 204
    assert claim(cloud, nid).status_code == 204
    assert claim(cloud, nid, rooms=[cloud.room_ids[1]], hostname="renamed").status_code == 204
    [node] = nodes(cloud)
    assert node["hostname"] == "renamed"
    assert set(node["rooms"]) == set(cloud.room_ids)
    detail = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{nid}").json()
    assert [e["kind"] for e in detail["events"]].count("claimed") == 1


def test_rotation_refuses_old_token_at_once_and_keeps_claimed_nodes(cloud: Cloud) -> None:
    nid = str(uuid.uuid4())
    assert claim(cloud, nid).status_code == 204
    r = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/claim-token")
    assert r.status_code == 201
    new = r.json()["token"]
    assert new != cloud.claim_token
    r = claim(cloud)
    assert r.status_code == 403 and r.json()["errorMsgKey"] == "ErrForbidden"
    assert claim(cloud, token=new).status_code == 204
    # The node already claimed re-claims with the current token (same key): fine.
    assert claim(cloud, nid, token=new).status_code == 204
    assert len(nodes(cloud)) == 2
    assert cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token").json()["token"] == new


def test_expired_token_is_refused(cloud: Cloud) -> None:
    r = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/claim-token", json={"expires_in": 1})
    assert r.status_code == 201 and r.json()["expires_at"]
    token = r.json()["token"]
    import time

    time.sleep(1.5)
    r = claim(cloud, token=token)
    assert r.status_code == 403
    bad = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/claim-token", json={"expires_in": -5})
    assert bad.status_code == 400


def test_claims_racing_a_rotation(start_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = start_cloud("--claim-failures-per-minute", "1000")
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    rotated_at: list[float] = []
    statuses: list[int] = []
    import time

    def claimer() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            not rotated_at or sum(1 for s, _, _ in results if s > rotated_at[0]) < 8
        ):
            start = time.monotonic()
            r = claim(cloud)
            with lock:
                results.append((start, time.monotonic(), r.status_code))

    def rotator() -> None:
        time.sleep(0.3)
        r = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/claim-token")
        rotated_at.append(time.monotonic())
        statuses.append(r.status_code)

    threads = [threading.Thread(target=claimer) for _ in range(4)] + [
        threading.Thread(target=rotator)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201]
    assert {code for _, _, code in results} <= {204, 403}
    # Every claim that started after the rotation answered was refused.
    after = [code for start, _, code in results if start > rotated_at[0]]
    assert after and all(code == 403 for code in after)
    # Nothing half-done: the Space holds exactly the nodes that got 204.
    assert len(nodes(cloud)) == sum(1 for *_, code in results if code == 204)


def test_failed_claims_are_rate_limited_per_address(start_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = start_cloud("--claim-failures-per-minute", "5")
    for _ in range(5):
        assert claim(cloud, token="wrong").status_code == 403
    r = claim(cloud)  # even a good claim waits while the address is limited
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert r.json()["errorMsgKey"] == "ErrTooManyRequests"
