"""The container entrypoint against a real Cloud: claim on first start, never again."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.cloud import Cloud
from tests.fixtures.packaging import ContainerStarter


def _nodes(cloud: Cloud) -> list[dict[str, object]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes")
    r.raise_for_status()
    return list(r.json())


def _claims(cloud: Cloud) -> list[dict[str, object]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-audit")
    r.raise_for_status()
    return [a for a in r.json() if a["result"] == "claimed"]


def test_claims_on_first_start_and_restarts_never_claim_again(
    cloud: Cloud, start_container: ContainerStarter, tmp_path: Path
) -> None:
    assert cloud.ca_file
    room = cloud.room_ids[0]
    env = {
        "TETHER_CLAIM_TOKEN": cloud.claim_token,
        "TETHER_CLAIM_URL": cloud.url,
        "TETHER_CLAIM_ROOMS": room,
        "TETHER_CLAIM_CA": Path(cloud.ca_file).read_text(),  # PEM text form
    }
    first = start_container(tmp_path, env)
    first.wait_for(lambda: first.info()["agent-claimed"], "agent-claimed")
    first.wait_for(lambda: first.info()["aclk-available"], "the link to come up")
    node_id = first.paths.claimed_id_file.read_text().strip()
    key = first.paths.private_key_file.read_bytes()
    assert first.paths.cloud_fullchain_file.read_text().strip() == (
        Path(cloud.ca_file).read_text().strip()
    )
    nodes = _nodes(cloud)
    assert [(n["id"], n["state"], n["rooms"]) for n in nodes] == [(node_id, "live", [room])]
    assert first.stop() == 0  # SIGTERM reached the agent itself: the script exec'd it
    first_output = first.output()
    assert "claim on start: url" in first_output and "token set (hidden)" in first_output

    # The same container started again: same prefix (the volume), same environment.
    second = start_container(tmp_path, env)
    second.wait_for(lambda: second.info()["aclk-available"], "the link to come back")
    assert second.info()["agent-claimed"] is True
    assert second.paths.claimed_id_file.read_text().strip() == node_id
    assert second.paths.private_key_file.read_bytes() == key
    assert f"already claimed as node {node_id}" in second.output()
    assert [n["id"] for n in _nodes(cloud)] == [node_id]
    assert [a["node_id"] for a in _claims(cloud)] == [node_id]  # one claim, not two
    second.stop()
    for text in (first_output, second.output(), second.log()):
        assert cloud.claim_token not in text


def test_netdata_claim_names_work(
    cloud: Cloud, start_container: ContainerStarter, tmp_path: Path
) -> None:
    assert cloud.ca_file
    env = {
        "NETDATA_CLAIM_TOKEN": cloud.claim_token,
        "NETDATA_CLAIM_URL": cloud.url,
        "NETDATA_CLAIM_ROOMS": ",".join(cloud.room_ids),
        "TETHER_CLAIM_CA": cloud.ca_file,  # path form
    }
    run = start_container(tmp_path / "prefix", env)
    run.wait_for(lambda: run.info()["agent-claimed"], "agent-claimed")
    node_id = run.paths.claimed_id_file.read_text().strip()
    [node] = _nodes(cloud)
    assert node["id"] == node_id
    assert node["rooms"] == sorted(cloud.room_ids)
    run.stop()
    assert cloud.claim_token not in run.output() + run.log()


def test_bad_token_leaves_the_agent_running_unclaimed(
    cloud: Cloud, start_container: ContainerStarter, tmp_path: Path
) -> None:
    assert cloud.ca_file
    bad = "tcl_wrong-token-" + "x" * 24
    env = {
        "TETHER_CLAIM_TOKEN": bad,
        "TETHER_CLAIM_URL": cloud.url,
        "TETHER_CLAIM_CA": cloud.ca_file,
    }
    run = start_container(tmp_path / "prefix", env)
    info = run.info()
    assert info["agent-claimed"] is False
    assert info["aclk-available"] is False
    assert run.proc.poll() is None  # still serving locally
    assert "claim on start failed (exit code 12)" in run.log()
    assert not run.paths.claimed_id_file.exists()
    assert _nodes(cloud) == []
    run.stop()
    for text in (run.output(), run.log()):
        assert bad not in text
