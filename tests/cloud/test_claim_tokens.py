"""Named claiming tokens against a real Cloud: uses counted atomically, rooms
and labels given, revoke, the CLI, and the default token still working."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.fixtures.api import claim, claim_body, new_member, nodes
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import Peer, link_up, new_key


def tokens_path(cloud: Cloud) -> str:
    return f"/api/v1/spaces/{cloud.space_id}/claim-tokens"


def create_token(cloud: Cloud, **body: Any) -> dict[str, Any]:
    r = cloud.api("POST", tokens_path(cloud), json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_fifty_concurrent_claims_on_a_one_use_token_give_exactly_one_node(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud("--claim-failures-per-minute", "1000")
    tok = create_token(cloud, name="one-shot", max_uses=1)
    assert tok["max_uses"] == 1 and tok["uses"] == 0 and tok["state"] == "active"

    start = threading.Barrier(50)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def claimer() -> None:
        node_id = str(uuid.uuid4())
        body = claim_body(node_id, tok["token"])
        start.wait()
        r = cloud.api("PUT", f"/api/v1/spaces/nodes/{node_id}", token="", json=body)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=claimer) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(r.status_code for r in results) == [204] + [403] * 49
    refused = [r.json() for r in results if r.status_code == 403]
    assert all(e["errorMsgKey"] == "ErrForbidden" for e in refused)
    assert all("'one-shot'" in e["errorMessage"] for e in refused)
    assert all("used up" in e["errorMessage"] for e in refused)
    [node] = nodes(cloud)
    one = cloud.api("GET", f"{tokens_path(cloud)}/{tok['id']}").json()
    assert one["uses"] == 1 and one["state"] == "used_up"
    assert [u["node_id"] for u in one["uses_list"]] == [node["id"]]


def test_named_token_gives_rooms_and_labels_and_lists_its_uses(cloud: Cloud) -> None:
    room = cloud.room_ids[1]
    tok = create_token(
        cloud, name="web fleet", rooms=[room], labels={"env": "prod"}, ephemeral=True
    )
    assert tok["token"].startswith("tct_") and tok["rooms"] == [room]
    assert tok["labels"] == {"env": "prod"} and tok["ephemeral"] is True

    listed = cloud.api("GET", tokens_path(cloud))
    assert listed.status_code == 200
    assert tok["token"] not in listed.text  # the secret is shown only at creation
    assert [t["name"] for t in listed.json()] == ["default", "web fleet"]
    assert listed.json()[0]["default"] is True

    node_id = str(uuid.uuid4())
    r = claim(cloud, node_id, token=tok["token"], hostname="web-9")  # asks for no room
    assert r.status_code == 204, r.text
    [node] = nodes(cloud)
    assert set(node["rooms"]) == set(cloud.room_ids)  # All nodes + the token's room
    labels = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}/labels").json()
    assert labels["labels"] == {"env": {"value": "prod", "source": "token"}}

    one = cloud.api("GET", f"{tokens_path(cloud)}/web fleet").json()  # by name
    assert one["uses"] == 1
    [use] = one["uses_list"]
    assert use["node_id"] == node_id and use["result"] == "claimed"
    assert use["address"] == "127.0.0.1" and use["at"]

    # A re-claim of the same node takes no use (a retried claim is not a new node).
    assert claim(cloud, node_id, token=tok["token"], hostname="web-9").status_code == 204
    again = cloud.api("GET", f"{tokens_path(cloud)}/{tok['prefix']}").json()  # by prefix
    assert again["uses"] == 1 and [u["result"] for u in again["uses_list"]] == [
        "reclaimed",
        "claimed",
    ]


def test_claim_tokens_need_the_admin_role_and_valid_fields(cloud: Cloud) -> None:
    for role in ("member", "manager"):
        other = new_member(cloud, role)
        assert cloud.api("GET", tokens_path(cloud), token=other).status_code == 403
        r = cloud.api("POST", tokens_path(cloud), token=other, json={"name": "x"})
        assert r.status_code == 403
    assert cloud.api("GET", tokens_path(cloud), token="").status_code == 401
    for bad in (
        {},
        {"name": ""},
        {"name": "a", "max_uses": 0},
        {"name": "a", "max_uses": "3"},
        {"name": "a", "expires_in": -1},
        {"name": "a", "rooms": ["no such room"]},
        {"name": "a", "labels": {"bad key!": "v"}},
        {"name": "a", "labels": {"k": "line\nbreak"}},
        {"name": "a", "ephemeral": "yes"},
    ):
        r = cloud.api("POST", tokens_path(cloud), json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["errorMessage"]
    create_token(cloud, name="dup")
    r = cloud.api("POST", tokens_path(cloud), json={"name": "dup"})
    assert r.status_code == 400 and "already has a claiming token named 'dup'" in r.text
    assert cloud.api("GET", f"{tokens_path(cloud)}/nope").status_code == 404


def test_revoked_token_refuses_claims_while_its_nodes_stay_live(cloud: Cloud) -> None:
    tok = create_token(cloud, name="batch-7")
    peer = Peer(cloud, hostname="enrolled")
    peer.private_pem, peer.public_pem = new_key()
    body = claim_body(peer.node_id, tok["token"], key=peer.public_pem.decode())
    r = cloud.api("PUT", f"/api/v1/spaces/nodes/{peer.node_id}", token="", json=body)
    assert r.status_code == 204, r.text

    async def run() -> None:
        link = await link_up(peer)
        poll(lambda: peer.state() == "live", 15, "the enrolled node goes live")
        r = cloud.api("DELETE", f"{tokens_path(cloud)}/{tok['id']}")
        assert r.status_code == 200 and r.json()["state"] == "revoked"
        refused = claim(cloud, token=tok["token"])
        assert refused.status_code == 403
        assert "'batch-7'" in refused.text and "was revoked" in refused.text
        # The node enrolled with it is left alone: still live, still linked,
        # and it can authenticate again.
        assert peer.state() == "live" and link.ws.close_code is None
        assert peer.authenticate().link_token
        await link.ws.close()

    asyncio.run(run())
    listed = cloud.api("GET", tokens_path(cloud)).json()
    assert {t["name"]: t["state"] for t in listed} == {"default": "active", "batch-7": "revoked"}


def test_default_token_still_claims_and_rotates_apart_from_named_ones(cloud: Cloud) -> None:
    named = create_token(cloud, name="keep-me")
    # The old single-token path: GET shows the same default token, it claims.
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token")
    assert r.status_code == 200 and r.json()["token"] == cloud.claim_token
    assert claim(cloud).status_code == 204
    show = cloud.cli("token", "show", "--space", cloud.space_id)
    assert show.returncode == 0 and show.stdout.strip() == cloud.claim_token

    rotated = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/claim-token")
    assert rotated.status_code == 201
    assert claim(cloud).status_code == 403  # the old default token stopped at once
    assert claim(cloud, token=rotated.json()["token"]).status_code == 204
    assert claim(cloud, token=named["token"]).status_code == 204  # named ones are left alone
    states = [(t["name"], t["state"]) for t in cloud.api("GET", tokens_path(cloud)).json()]
    assert states.count(("default", "active")) == 1 and ("keep-me", "active") in states
    assert ("default", "revoked") in states


def test_cli_token_create_list_revoke(cloud: Cloud) -> None:
    room = cloud.room_ids[1]
    made = cloud.cli(
        "token",
        "create",
        "--space",
        cloud.space_id,
        "--name",
        "ci",
        "--max-uses",
        "2",
        "--room",
        room,
        "--label",
        "team=infra",
        "--expires-in",
        "3600",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    tok = json.loads(made.stdout)
    assert tok["name"] == "ci" and tok["max_uses"] == 2 and tok["rooms"] == [room]
    assert tok["labels"] == {"team": "infra"} and tok["expires_at"]
    assert claim(cloud, token=tok["token"]).status_code == 204

    listed = cloud.cli("token", "list", "--space", cloud.space_id, "--json")
    assert listed.returncode == 0 and tok["token"] not in listed.stdout
    rows = {t["name"]: t for t in json.loads(listed.stdout)}
    assert rows["ci"]["uses"] == 1 and rows["default"]["default"] is True
    text = cloud.cli("token", "list", "--space", cloud.space_id)
    assert "uses 1/2  ci" in text.stdout

    gone = cloud.cli("token", "revoke", "--space", cloud.space_id, "--token", "ci")
    assert gone.returncode == 0 and "revoked claiming token 'ci'" in gone.stdout
    assert claim(cloud, token=tok["token"]).status_code == 403
    assert "ci" not in cloud.cli("token", "list", "--space", cloud.space_id).stdout
    both = cloud.cli("token", "list", "--space", cloud.space_id, "--all").stdout
    assert "revoked" in both and "ci" in both
    missing = cloud.cli("token", "revoke", "--space", cloud.space_id, "--token", "nope")
    assert missing.returncode == 1 and "no claiming token 'nope'" in missing.stderr
