"""Named claiming tokens with real agents and the real tether-claim: a 1-use
token enrolls one node, with its rooms and labels; revoking it refuses new
claims while the agent it enrolled stays live."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.claim import state, tether_claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tether.paths import AgentPaths


def test_one_use_token_enrolls_one_agent_and_revoking_it_keeps_that_agent_live(
    cloud: Cloud, start_agent: AgentLauncher, tmp_path: Path
) -> None:
    room = cloud.room_ids[1]
    r = cloud.api(
        "POST",
        f"/api/v1/spaces/{cloud.space_id}/claim-tokens",
        json={"name": "edge-01", "max_uses": 1, "rooms": [room], "labels": {"site": "edge"}},
    )
    assert r.status_code == 201, r.text
    tok = r.json()

    agent = start_agent()
    first = tether_claim(agent.prefix, cloud, tok["token"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert tok["token"] not in first.stdout + first.stderr
    node_id = agent.paths.claimed_id_file.read_text().strip()
    poll(lambda: state(cloud, node_id) == "live", 30, "the enrolled agent goes live")
    node = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}").json()
    assert room in node["rooms"]
    labels = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}/labels").json()
    assert labels["labels"]["site"] == {"value": "edge", "source": "token"}

    # A second machine with the same 1-use token is refused, and told why.
    second = tether_claim(tmp_path / "second", cloud, tok["token"], "-noreload")
    assert second.returncode != 0
    assert "used up" in second.stdout + second.stderr
    assert not AgentPaths(tmp_path / "second").claimed_id_file.exists()

    # Revoked: refused at once, while the agent it enrolled stays live and linked.
    assert (
        cloud.api("DELETE", f"/api/v1/spaces/{cloud.space_id}/claim-tokens/{tok['id']}").status_code
        == 200
    )
    third = tether_claim(tmp_path / "third", cloud, tok["token"], "-noreload")
    assert third.returncode != 0 and "was revoked" in third.stdout + third.stderr
    assert state(cloud, node_id) == "live"
    # It authenticates with its key again: sent away, it comes back on a new session.
    node_path = f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}"
    session = cloud.api("GET", node_path).json()["session_id"]
    r = cloud.api("POST", f"{node_path}/disconnect", json={"reconnect_after_seconds": 0})
    assert r.status_code == 200, r.text

    def back() -> bool:
        now = cloud.api("GET", node_path).json()
        return bool(now["state"] == "live" and now["session_id"] not in (None, session))

    poll(back, 30, "the agent links again after the revoke")
    assert [n["id"] for n in cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").json()] == [
        node_id
    ]
