"""Node labels and room rules against a real Cloud: rule rooms gain and lose
nodes as labels change, manual memberships stay, sources and precedence."""

from __future__ import annotations

import uuid
from typing import Any

from tests.fixtures.api import claim, new_member
from tests.fixtures.cloud import Cloud


def sp(cloud: Cloud) -> str:
    return f"/api/v1/spaces/{cloud.space_id}"


def new_room(cloud: Cloud, name: str, *rules: dict[str, str]) -> str:
    r = cloud.api("POST", f"{sp(cloud)}/rooms", json={"name": name})
    assert r.status_code == 201, r.text
    room_id = str(r.json()["id"])
    for rule in rules:
        made = cloud.api("POST", f"{sp(cloud)}/rooms/{room_id}/rules", json=rule)
        assert made.status_code == 201, made.text
    return room_id


def members(cloud: Cloud, room_id: str) -> dict[str, str]:
    r = cloud.api("GET", f"{sp(cloud)}/rooms/{room_id}/nodes")
    assert r.status_code == 200, r.text
    return {n["id"]: n["membership"] for n in r.json()}


def set_labels(cloud: Cloud, node_id: str, labels: dict[str, str], **kw: Any) -> Any:
    return cloud.api("PUT", f"{sp(cloud)}/nodes/{node_id}/labels", json={"labels": labels}, **kw)


def new_node(cloud: Cloud, token: str | None = None) -> str:
    node_id = str(uuid.uuid4())
    assert claim(cloud, node_id, token=token).status_code == 204
    return node_id


def test_a_rule_room_gains_and_loses_a_node_as_its_label_changes(cloud: Cloud) -> None:
    prod = new_room(
        cloud, "prod", {"action": "include", "key": "env", "op": "equals", "value": "prod"}
    )
    node = new_node(cloud)
    assert members(cloud, prod) == {}

    r = set_labels(cloud, node, {"env": "prod"})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"env": {"value": "prod", "source": "cloud"}}
    assert members(cloud, prod) == {node: "rule"}

    assert set_labels(cloud, node, {"env": "staging"}).status_code == 200
    assert members(cloud, prod) == {}
    assert set_labels(cloud, node, {"env": "prod"}).status_code == 200
    assert members(cloud, prod) == {node: "rule"}
    assert set_labels(cloud, node, {}).status_code == 200  # cleared
    assert members(cloud, prod) == {}


def test_every_operator_include_and_exclude(cloud: Cloud) -> None:
    room = new_room(
        cloud,
        "databases",
        {"action": "include", "key": "role", "op": "starts_with", "value": "db-"},
        {"action": "include", "key": "role", "op": "ends_with", "value": "-cache"},
        {"action": "exclude", "key": "role", "op": "contains", "value": "test"},
    )
    roles = {
        "db-primary": "rule",
        "redis-cache": "rule",
        "db-test-1": None,  # included by prefix, then excluded
        "web": None,
        "DB-primary": None,  # case matters, on SQLite as on PostgreSQL
        "xdb-": None,
    }
    ids = {}
    for role in roles:
        ids[role] = new_node(cloud)
        assert set_labels(cloud, ids[role], {"role": role}).status_code == 200
    want = {ids[r]: how for r, how in roles.items() if how}
    assert members(cloud, room) == want

    # Removing the exclude rule lets db-test-1 in at once; removing an include lets others go.
    rules = cloud.api("GET", f"{sp(cloud)}/rooms/{room}/rules").json()
    exclude = next(r for r in rules if r["action"] == "exclude")
    gone = cloud.api("DELETE", f"{sp(cloud)}/rooms/{room}/rules/{exclude['id']}")
    assert gone.status_code == 204
    assert members(cloud, room) == {**want, ids["db-test-1"]: "rule"}
    ends = next(r for r in rules if r["op"] == "ends_with")
    assert cloud.api("DELETE", f"{sp(cloud)}/rooms/{room}/rules/{ends['id']}").status_code == 204
    assert ids["redis-cache"] not in members(cloud, room)


def test_manual_membership_stays_and_is_shown_apart_from_rule_membership(cloud: Cloud) -> None:
    room = new_room(
        cloud, "eu", {"action": "include", "key": "region", "op": "equals", "value": "eu"}
    )
    by_rule, by_hand = new_node(cloud), new_node(cloud)
    set_labels(cloud, by_rule, {"region": "eu"})
    r = cloud.api("PUT", f"{sp(cloud)}/rooms/{room}/nodes/{by_hand}")
    assert r.status_code == 204
    assert members(cloud, room) == {by_rule: "rule", by_hand: "manual"}
    set_labels(cloud, by_hand, {"region": "us"})  # a rule never takes a manual member away
    assert members(cloud, room) == {by_rule: "rule", by_hand: "manual"}
    # Adding a rule member by hand makes it manual: it then stays when its label changes.
    assert cloud.api("PUT", f"{sp(cloud)}/rooms/{room}/nodes/{by_rule}").status_code == 204
    set_labels(cloud, by_rule, {"region": "us"})
    assert members(cloud, room) == {by_rule: "manual", by_hand: "manual"}


def test_token_labels_place_a_node_at_claim_and_cloud_labels_win(cloud: Cloud) -> None:
    room = new_room(
        cloud, "ci", {"action": "include", "key": "pool", "op": "contains", "value": "ci"}
    )
    r = cloud.api(
        "POST",
        f"{sp(cloud)}/claim-tokens",
        json={"name": "runners", "labels": {"pool": "ci-large"}},
    )
    assert r.status_code == 201, r.text
    node = new_node(cloud, r.json()["token"])
    assert members(cloud, room) == {node: "rule"}  # in the room from the claim on

    labels = set_labels(cloud, node, {"pool": "batch"}).json()  # the Cloud's value wins
    assert labels["labels"]["pool"] == {"value": "batch", "source": "cloud"}
    assert labels["sources"]["token"] == {"pool": "ci-large"}
    assert members(cloud, room) == {}
    set_labels(cloud, node, {})  # without the Cloud's, the token's applies again
    assert members(cloud, room) == {node: "rule"}


def test_labels_and_rules_are_checked_and_need_the_manager_role(cloud: Cloud) -> None:
    node = new_node(cloud)
    room = new_room(cloud, "r")
    for bad in ({"bad key": "v"}, {"k": 5}, {"k": "x" * 201}, {"k": "a\u202eb"}):
        r = set_labels(cloud, node, bad)  # type: ignore[arg-type]
        assert r.status_code == 400 and r.json()["errorMessage"], bad
    missing = cloud.api("PUT", f"{sp(cloud)}/nodes/{node}/labels", json={})
    assert missing.status_code == 400
    rules = f"{sp(cloud)}/rooms/{room}/rules"
    for bad in (
        {"key": "k", "op": "regex", "value": "v"},
        {"key": "k", "action": "maybe", "value": "v"},
        {"key": "k", "op": "contains", "value": ""},
        {"value": "v"},
    ):
        assert cloud.api("POST", rules, json=bad).status_code == 400, bad
    all_nodes = cloud.room_ids[0]
    r = cloud.api("POST", f"{sp(cloud)}/rooms/{all_nodes}/rules", json={"key": "k", "value": "v"})
    assert r.status_code == 400 and "All nodes" in r.text

    member = new_member(cloud, "member")
    assert set_labels(cloud, node, {"k": "v"}, token=member).status_code == 403
    assert (
        cloud.api("POST", rules, token=member, json={"key": "k", "value": "v"}).status_code == 403
    )
    assert cloud.api("GET", f"{sp(cloud)}/nodes/{node}/labels", token=member).status_code == 200
    assert cloud.api("GET", rules, token=member).status_code == 200
    manager = new_member(cloud, "manager")
    assert set_labels(cloud, node, {"k": "v"}, token=manager).status_code == 200
