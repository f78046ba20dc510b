"""Issue 13, items 2 (agent labels), 5 (ephemeral nodes, bulk remove) and 7
(the audit log) with a real Cloud, real agents and the real tether-claim."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.api import claim
from tests.fixtures.claim import state, tether_claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.invitations import join, new_account


def _exists(cloud: Cloud, node_id: str) -> bool:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}")
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def _token(cloud: Cloud, **body: Any) -> dict[str, Any]:
    r = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/claim-tokens", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _enroll(
    cloud: Cloud, start_agent: AgentLauncher, token: str, **kw: Any
) -> tuple[RunningAgent, str]:
    agent = start_agent(**kw)
    done = tether_claim(agent.prefix, cloud, token)
    assert done.returncode == 0, done.stdout + done.stderr
    node_id = agent.paths.claimed_id_file.read_text().strip()
    poll(lambda: state(cloud, node_id) == "live", 60, "the enrolled agent goes live")
    return agent, node_id


def _audit(cloud: Cloud, token: str | None = None, **params: str) -> list[dict[str, Any]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/audit", token=token, params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["entries"])


# --- item 5: ephemeral nodes -------------------------------------------------------------


def test_an_ephemeral_node_is_removed_after_its_ttl_offline_and_a_plain_one_stays(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    # A TTL of 2 s needs the test-only lower minimum; the reaping runs with the
    # sweeper (every keepalive, history-prune cadence of at most 10 s).
    cloud = start_cloud("--min-ephemeral-ttl", "1", "--keepalive", "2")
    refused = cloud.api(
        "POST",
        f"/api/v1/spaces/{cloud.space_id}/claim-tokens",
        json={"name": "x", "ephemeral": True, "ephemeral_ttl": 0},
    )
    assert refused.status_code == 400 and "ephemeral_ttl" in refused.text
    eph = _token(cloud, name="ci-runners", ephemeral=True, ephemeral_ttl=2)
    assert eph["ephemeral_ttl"] == 2
    plain = _token(cloud, name="servers")
    server, server_id = _enroll(cloud, start_agent, plain["token"])
    first, first_id = _enroll(cloud, start_agent, eph["token"])
    second, second_id = _enroll(cloud, start_agent, eph["token"])
    node = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{first_id}").json()
    assert node["ephemeral_ttl"] == 2

    server.stop()
    poll(lambda: state(cloud, server_id) == "offline", 60, "the plain node goes offline")
    first.stop()
    poll(lambda: not _exists(cloud, first_id), 90, "the first ephemeral node is removed")
    # The reap that removed it saw the plain node offline for longer than the
    # TTL (it stays: not ephemeral) and the second runner live for longer than
    # the TTL (it stays: live).
    assert state(cloud, server_id) == "offline"
    assert state(cloud, second_id) == "live"

    second.stop()
    poll(lambda: not _exists(cloud, second_id), 90, "the second ephemeral node is removed")
    assert state(cloud, server_id) == "offline"
    removed = _audit(cloud, action="node.removed")
    assert sorted((e["actor"], e["target"]) for e in removed) == sorted(
        [("policy:ephemeral", first_id), ("policy:ephemeral", second_id)]
    )
    # Its credential is gone: the restarted runner cannot link, and the node
    # does not come back.
    again = start_agent(prefix=first.prefix)
    poll(
        lambda: (
            again.cli("aclk-state", "json").stdout
            and '"last_error": null' not in again.cli("aclk-state", "json").stdout
        ),
        60,
        "the removed runner is refused",
    )
    assert '"connected": false' in again.cli("aclk-state", "json").stdout
    assert not _exists(cloud, first_id)


# --- item 5: bulk remove -----------------------------------------------------------------


def test_bulk_remove_by_label_and_state_with_a_dry_run_first(cloud: Cloud) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    ci = _token(cloud, name="ci", labels={"env": "ci"})
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for nid in ids[:2]:
        assert claim(cloud, nid, token=ci["token"]).status_code == 204
    assert claim(cloud, ids[2]).status_code == 204  # the default token: no label

    nothing = cloud.api("POST", f"{sp}/nodes/remove", json={})
    assert nothing.status_code == 400 and "at least one filter" in nothing.text
    bad = cloud.api("POST", f"{sp}/nodes/remove", json={"state": "gone"})
    assert bad.status_code == 400 and "state" in bad.text
    dry = cloud.api(
        "POST", f"{sp}/nodes/remove", json={"label": "env=ci", "state": ["unseen"], "dry_run": True}
    )
    assert dry.status_code == 200, dry.text
    assert sorted(n["id"] for n in dry.json()["nodes"]) == sorted(ids[:2])
    assert all(_exists(cloud, nid) for nid in ids)

    done = cloud.api("POST", f"{sp}/nodes/remove", json={"label": "env=ci", "state": "unseen"})
    assert done.status_code == 200, done.text
    assert done.json()["count"] == 2
    assert [_exists(cloud, nid) for nid in ids] == [False, False, True]
    entries = _audit(cloud, action="node.removed")
    assert sorted(e["target"] for e in entries) == sorted(ids[:2])
    assert {e["details"]["filter"]["label"][0] for e in entries} == {"env=ci"}

    member = join_new(cloud, "member")
    refused = cloud.api("POST", f"{sp}/nodes/remove", token=member, json={"state": "unseen"})
    assert refused.status_code == 403
    assert _exists(cloud, ids[2])


def join_new(cloud: Cloud, role: str) -> str:
    email, token = new_account(cloud)
    join(cloud, email, token, role)
    return token


# --- item 5: the stale policy's API ------------------------------------------------------


def test_stale_policy_is_set_by_admins_only_and_audited(cloud: Cloud) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}/stale-policy"
    assert cloud.api("GET", sp).json() == {"after_days": None, "action": None}
    r = cloud.api("PUT", sp, json={"after_days": 30, "action": "remove"})
    assert r.status_code == 200 and r.json() == {"after_days": 30, "action": "remove"}
    assert cloud.api("PUT", sp, json={"after_days": 0, "action": "remove"}).status_code == 400
    assert cloud.api("PUT", sp, json={"after_days": 5, "action": "explode"}).status_code == 400
    manager = join_new(cloud, "manager")
    assert cloud.api("PUT", sp, token=manager, json={"after_days": None}).status_code == 403
    (entry,) = _audit(cloud, action="space.stale_policy")
    assert entry["details"]["after"] == {"after_days": 30, "action": "remove"}
    made = cloud.cli(
        "token",
        "create",
        "--space",
        cloud.space_id,
        "--name",
        "pods",
        "--ephemeral",
        "--ttl",
        "120",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    assert '"ephemeral_ttl": 120' in made.stdout
    short = cloud.cli(
        "token", "create", "--space", cloud.space_id, "--name", "p2", "--ephemeral", "--ttl", "5"
    )
    assert short.returncode == 1 and "ephemeral_ttl" in short.stderr
    assert ("cli", "token.created", "pods") in {
        (e["actor"], e["action"], e["target"]) for e in _audit(cloud)
    }
    cli = cloud.cli("space", "stale-policy", "--space", cloud.space_id, "--off", "--json")
    assert cli.returncode == 0, cli.stderr
    assert cloud.api("GET", sp).json() == {"after_days": None, "action": None}


# --- item 7: the audit log ---------------------------------------------------------------


def test_the_audit_log_records_each_action_and_only_admins_read_it(
    cloud: Cloud, start_cloud: Callable[..., Cloud]
) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    tok = _token(cloud, name="edge")
    node_id = str(uuid.uuid4())
    assert claim(cloud, node_id, token=tok["token"]).status_code == 204
    assert cloud.api("DELETE", f"{sp}/claim-tokens/{tok['id']}").status_code == 200
    email, member = new_account(cloud)
    join(cloud, email, member, "member")
    users = {m["email"]: m["user_id"] for m in cloud.api("GET", f"{sp}/members").json()}
    assert (
        cloud.api("PATCH", f"{sp}/members/{users[email]}", json={"role": "manager"}).status_code
        == 200
    )
    assert cloud.api("DELETE", f"{sp}/nodes/{node_id}").status_code == 204
    assert cloud.api("DELETE", f"{sp}/members/{users[email]}").status_code == 204

    entries = _audit(cloud)
    got = [(e["actor"], e["action"], e["target"]) for e in reversed(entries)]
    admin = cloud.admin_email
    expected = [
        (admin, "token.created", "edge"),
        ("token:edge", "token.used", "edge"),
        ("token:edge", "node.claimed", node_id),
        (admin, "token.revoked", "edge"),
        (admin, "member.invited", email),
        (email, "member.added", email),
        (admin, "member.role_changed", email),
        (admin, "node.removed", node_id),
        (admin, "member.removed", email),
    ]
    assert [g for g in got if g[1] != "token.rotated"] == expected
    assert tok["token"] not in str(entries)  # prefixes only, never the secret
    assert entries[-1]["id"] < entries[0]["id"]  # newest first

    # Filters and paging.
    assert {e["action"] for e in _audit(cloud, action="token.")} == {
        "token.created",
        "token.used",
        "token.revoked",
    }
    assert {e["actor"] for e in _audit(cloud, actor="TOKEN:EDGE")} == {"token:edge"}
    assert _audit(cloud, since="2999-01-01T00:00:00Z") == []
    first = cloud.api("GET", f"{sp}/audit", params={"limit": "2"}).json()
    assert len(first["entries"]) == 2 and first["next_before"] == first["entries"][-1]["id"]
    second = cloud.api(
        "GET", f"{sp}/audit", params={"limit": "2", "before": str(first["next_before"])}
    ).json()
    assert second["entries"][0]["id"] < first["entries"][-1]["id"]
    for bad in ({"limit": "0"}, {"since": "yesterday"}, {"before": "x"}, {"actor": "a\x00b"}):
        r = cloud.api("GET", f"{sp}/audit", params=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["errorMsgKey"]

    # Who is asking: a member or manager gets 403, another Space's admin 404.
    for role in ("member", "manager"):
        r = cloud.api("GET", f"{sp}/audit", token=join_new(cloud, role))
        assert r.status_code == 403, r.text
    _, stranger = new_account(cloud)
    made = cloud.api("POST", "/api/v1/spaces", token=stranger, json={"name": "Other"})
    assert made.status_code == 201
    assert cloud.api("GET", f"{sp}/audit", token=stranger).status_code == 404
    other = cloud.api("GET", f"/api/v1/spaces/{made.json()['id']}/audit", token=stranger)
    assert other.status_code == 200
    assert all(e["target"] != node_id for e in other.json()["entries"])


# --- item 2: labels from the agent's [host labels] ---------------------------------------


def _rule_room(cloud: Cloud, key: str, value: str) -> str:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    room = cloud.api("POST", f"{sp}/rooms", json={"name": f"rule-{uuid.uuid4().hex[:6]}"})
    assert room.status_code == 201, room.text
    rid = str(room.json()["id"])
    rule = cloud.api(
        "POST", f"{sp}/rooms/{rid}/rules", json={"action": "include", "key": key, "value": value}
    )
    assert rule.status_code == 201, rule.text
    return rid


def _members(cloud: Cloud, room_id: str) -> dict[str, str]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/rooms/{room_id}/nodes")
    assert r.status_code == 200, r.text
    return {n["id"]: n["membership"] for n in r.json()}


def _write_labels(agent: RunningAgent, labels: dict[str, str]) -> None:
    lines = ["[web]", "    bind to = 127.0.0.1", "", "[host labels]"]
    lines += [f"    {k} = {v}" for k, v in labels.items()]
    agent.paths.config_file.write_text("\n".join(lines) + "\n")


def test_a_rule_room_follows_the_agents_host_labels_across_reload_and_restart(
    cloud: Cloud, start_agent: AgentLauncher, tmp_path: Path
) -> None:
    prod = _rule_room(cloud, "Env", "prod")
    config = {"host labels": {"Env": "prod", "bad key!": "x", "team": "web\u202e"}}
    agent, node_id = _enroll(cloud, start_agent, cloud.claim_token, config=config)
    # The key keeps its case; lines breaking the rule are skipped and logged.
    poll(lambda: _members(cloud, prod).get(node_id) == "rule", 30, "the rule room gains it")
    labels = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}/labels").json()
    assert labels["sources"]["agent"] == {"Env": "prod"}
    assert "bad key!" in agent.log_text() + agent.stderr_text()

    # Changed in tether.conf and reloaded: out of the room, no reconnect needed.
    session = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}").json()
    _write_labels(agent, {"Env": "staging"})
    done = agent.cli("reload-labels")
    assert done.returncode == 0 and "1 label" in done.stdout, done.stdout + done.stderr
    poll(lambda: node_id not in _members(cloud, prod), 30, "the rule room loses it")
    after = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}").json()
    assert after["session_id"] == session["session_id"]
    staging = _rule_room(cloud, "Env", "staging")
    assert _members(cloud, staging).get(node_id) == "rule"

    # Changed while stopped: the restarted agent's Hello carries the new set.
    agent.stop()
    start_agent(prefix=agent.prefix, config={"host labels": {"Env": "prod"}})
    poll(lambda: _members(cloud, prod).get(node_id) == "rule", 60, "back in after a restart")
    assert node_id not in _members(cloud, staging)
    assert tmp_path.exists()
