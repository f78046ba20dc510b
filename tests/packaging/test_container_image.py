"""packaging/docker/Dockerfile really builds (from the wheels only, with no
network) and runs with the exact `docker run` Connect Nodes shows, translated
to podman: it claims on first start, reports the host, and neither a restart
nor a new container on the same volumes claims again."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import free_port, poll
from tests.fixtures.containers import (
    RUNC,
    Containers,
    agent_bundle,
    agent_image,
    containers_fixture,  # noqa: F401 (the `containers` fixture)
    podman,
)
from tether.cloud.web import commands

# The first run builds the Debian base and the images (minutes on a busy machine).
pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]


def ui_docker_run(cloud: Cloud, workdir: Path) -> list[str]:
    """The Docker command of Connect Nodes for this Cloud, as argv."""
    assert cloud.ca_sha256
    ca = commands.CloudCa(f"{cloud.url}/ca.pem", cloud.ca_sha256)
    steps = commands.build("docker-run", cloud.url, cloud.claim_token, [cloud.room_ids[1]], ca)
    [run] = [s.text for s in steps.steps if s.text.startswith("docker run")]
    text = run.replace("\\\n", " ").replace("$PWD", str(workdir))
    return shlex.split(text)


def to_podman(argv: list[str], c: Containers, image: str, name: str) -> list[str]:
    """docker -> podman on this machine: runc, the host's network (the Cloud
    is on 127.0.0.1 here, so -p has nothing to publish), this test's names for
    the container and its volumes, and the image built from the Dockerfile."""
    assert argv[:2] == ["docker", "run"]
    # Docker gives a container its own hostname; podman on the host's network
    # would give it the host's, which would hide where the agent reads it.
    out = ["podman", "--runtime", RUNC, "run", "--network", "host", f"--hostname={name}-h"]
    args = iter(argv[2:])
    for a in args:
        if a.startswith("--name="):
            out.append(f"--name={name}")
        elif a == "-p":
            next(args)
        elif a == "-v":
            src, _, rest = next(args).partition(":")
            if not src.startswith("/"):
                src = f"{c.prefix}-{src}"
            out += ["-v", f"{src}:{rest}"]
        elif a == commands.IMAGE:
            out.append(image)
        else:
            out.append(a)
    return out


def nodes(cloud: Cloud) -> list[dict[str, Any]]:
    return list(cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").json())


def live_node(cloud: Cloud) -> dict[str, Any] | None:
    found = nodes(cloud)
    return found[0] if len(found) == 1 and found[0]["state"] == "live" else None


def host_os() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    raise AssertionError("no PRETTY_NAME in /etc/os-release")


def test_image_from_the_dockerfile_runs_with_the_ui_settings(
    start_cloud: Callable[..., Cloud], containers: Containers, tmp_path: Path
) -> None:
    image = agent_image(agent_bundle())
    cloud = start_cloud()
    assert cloud.ca_file
    ca = tmp_path / commands.CA_NAME
    ca.write_bytes(Path(cloud.ca_file).read_bytes())
    ca.chmod(0o644)
    argv = ui_docker_run(cloud, tmp_path)
    config_volume = containers.volume("tetherconfig")
    containers.volume("tetherlib")
    containers.volume("tetherlog")
    # The host's network is shared: give the agent a free loopback port (the
    # only setting the test adds, in the config volume the command mounts).
    podman("volume", "create", config_volume)
    where = json.loads(podman("volume", "inspect", config_volume).stdout)[0]["Mountpoint"]
    conf = Path(where) / "tether.conf"
    conf.write_text(f"[web]\n    default port = {free_port()}\n    bind to = 127.0.0.1\n")
    conf.chmod(0o644)

    name = containers.name("agent")
    cmd = to_podman(argv, containers, image, name)
    r = podman(*cmd[3:])  # podman() adds the runtime
    assert r.returncode == 0, r.stderr
    node = poll(lambda: live_node(cloud), 60, "the container's node live")
    node_id = node["id"]
    # The host's data, not the container's (TETHER_HOST_ROOT=/host): the
    # host's OS, and its processes (the container alone has two or three).
    assert node["os"] and host_os() in node["os"], node
    on_host = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
    chart = f"/api/v2/nodes/{node_id}/data?chart=system.active_processes&after=-5&points=1"
    r = poll(
        lambda: (a := cloud.api("GET", chart)).status_code == 200 and a,
        20,
        "the processes chart through the Cloud",
        every=0.5,
    )
    [active] = r.json()["latest_values"]
    assert active > 10 and active > on_host / 2, (active, on_host)
    if any("/etc/hostname" in a for a in argv):
        assert node["hostname"] == Path("/etc/hostname").read_text().strip()
    else:
        # Without the host's /etc/hostname the agent names the container and says so.
        assert node["hostname"] == f"{name}-h"
        assert "Mount the host's /etc/hostname" in containers.logs(name)
    assert node["rooms"] and cloud.room_ids[1] in node["rooms"]

    # A restart: the same node, no new claim.
    podman("restart", "-t", "10", name)
    poll(
        lambda: (n := live_node(cloud)) and n["session_id"] != node["session_id"] and n,
        60,
        "the node live again after the restart",
    )
    assert [n["id"] for n in nodes(cloud)] == [node_id]
    logs = containers.logs(name)
    assert "already claimed as node" in logs, logs

    # A new container on the same volumes: still the same node.
    podman("rm", "-f", "-t", "10", name)
    poll(lambda: nodes(cloud)[0]["state"] == "offline", 30, "the node offline")
    second = containers.name("agent")
    podman(*to_podman(argv, containers, image, second)[3:])
    poll(lambda: live_node(cloud), 60, "the node live from a new container")
    assert [n["id"] for n in nodes(cloud)] == [node_id]
