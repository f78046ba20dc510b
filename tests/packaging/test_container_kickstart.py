"""The Linux command in a fresh Debian container with every package index
unreachable: only the Cloud serves anything. Real podman, a real Cloud on the
host network, kickstart.sh as served by that Cloud."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import free_port, poll
from tests.fixtures.containers import (
    REPO,
    Containers,
    agent_bundle,
    containers_fixture,  # noqa: F401 (the `containers` fixture)
    linux_command,
)

# The first run builds the Debian base and the images (minutes on a busy machine).
pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

NODE_URL = re.compile(r"^Node ([0-9a-f-]{36}) is live: (https://\S+)$", re.M)


def node_state(cloud: Cloud, node_id: str) -> str:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}")
    return str(r.json()["state"]) if r.status_code == 200 else f"HTTP {r.status_code}"


def test_linux_command_installs_starts_and_claims_with_no_index(
    start_cloud: Callable[..., Cloud], containers: Containers
) -> None:
    bundle = agent_bundle()
    cloud = start_cloud("--agent-bundle", str(bundle.path))
    name = containers.fresh_node(free_port())
    command = linux_command(cloud.url, cloud.claim_token, [cloud.room_ids[1]], cloud.ca_sha256)

    r = containers.exec(name, "bash", "-c", command)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Agent was successfully claimed." in r.stdout
    assert "the Cloud's CA matches the fingerprint" in r.stderr
    assert "checksums verified" in r.stderr
    # No systemd in a plain container: the fallback, said so.
    assert "no systemd or launchd here: started the agent with nohup" in r.stderr
    m = NODE_URL.search(r.stdout)
    assert m, r.stdout
    node_id, node_url = m.groups()
    assert node_url == f"{cloud.url}/nodes/{node_id}"
    assert node_state(cloud, node_id) == "live"
    # It runs as the tether user kickstart made, from the venv under /opt/tether.
    ps = containers.exec(name, "ps", "-o", "user=,args=", "-C", "tether-agent")
    assert "tether " in ps.stdout and "/opt/tether/venv/bin/" in ps.stdout, ps.stdout
    assert cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}").json()[
        "rooms"
    ] == sorted([cloud.room_ids[0], cloud.room_ids[1]])

    # The same command again: nothing changes.
    again = containers.exec(name, "bash", "-c", command)
    assert again.returncode == 0, again.stderr
    assert f"already claimed as node {node_id}" in again.stderr
    assert "nothing changed" in again.stderr
    assert "Agent was successfully claimed." not in again.stdout
    nodes = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").json()
    assert [n["id"] for n in nodes] == [node_id]
    assert node_state(cloud, node_id) == "live"

    # Without claim options: an upgrade from the Cloud (same version here).
    up = containers.exec(name, "bash", "/tmp/tether-kickstart.sh")
    assert up.returncode == 0, up.stderr
    assert "the agent is at version" in up.stderr

    # --uninstall removes what it made; the Cloud sees the node go.
    gone = containers.exec(name, "bash", "/tmp/tether-kickstart.sh", "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert containers.exec(name, "test", "-e", "/opt/tether/venv").returncode == 1
    assert containers.exec(name, "id", "tether").returncode == 1
    poll(lambda: node_state(cloud, node_id) == "offline", 20, "the node offline")


def test_with_systemd_the_command_installs_and_starts_the_unit(
    start_cloud: Callable[..., Cloud], containers: Containers
) -> None:
    """systemd as PID 1 in the container: kickstart installs
    packaging/systemd/tether-agent.service, starts it, and the unit's stop
    takes the node offline."""
    cloud = start_cloud("--agent-bundle", str(agent_bundle().path))
    name = containers.fresh_node(free_port(), systemd=True)
    command = linux_command(cloud.url, cloud.claim_token, [cloud.room_ids[1]], cloud.ca_sha256)
    r = containers.exec(name, "bash", "-c", command)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "started the systemd service tether-agent (enabled at boot)" in r.stderr
    m = NODE_URL.search(r.stdout)
    assert m, r.stdout
    node_id = m.group(1)
    assert node_state(cloud, node_id) == "live"
    unit = containers.exec(name, "cat", "/etc/systemd/system/tether-agent.service").stdout
    assert unit == (REPO / "packaging/systemd/tether-agent.service").read_text()
    show = containers.exec(
        name, "systemctl", "show", "tether-agent", "-p", "ActiveState,User,MainPID"
    ).stdout
    assert "ActiveState=active" in show and "User=tether" in show, show
    assert containers.exec(name, "systemctl", "is-enabled", "tether-agent").stdout.strip() == (
        "enabled"
    )
    containers.exec(name, "systemctl", "stop", "tether-agent")
    poll(lambda: node_state(cloud, node_id) == "offline", 20, "the node offline after the stop")
