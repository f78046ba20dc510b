"""The Cloud as a container (packaging/docker/Dockerfile.cloud): its data on a
volume that survives a new container, and a fresh Debian node installing and
claiming from it with no package index, since the image serves its own wheels."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path

import httpx
import pytest

from tests.fixtures.common import free_port, poll
from tests.fixtures.containers import (
    Containers,
    agent_bundle,
    cloud_image,
    containers_fixture,  # noqa: F401 (the `containers` fixture)
    linux_command,
    podman,
)
from tether.cloud.tls import cert_sha256

# The first run builds the Debian base and the images (minutes on a busy machine).
pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]
DATA = "/var/lib/tether-cloud"


def start(c: Containers, image: str, volume: str, port: int) -> str:
    name = c.name("cloud")
    podman(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "-v",
        f"{volume}:{DATA}",
        image,
        "--port",
        str(port),
    )
    return name


def health(url: str) -> bool:
    try:
        return httpx.get(url + "/api/health", verify=False, timeout=2).status_code == 200  # noqa: S501
    except httpx.HTTPError:
        return False


def test_cloud_image_keeps_its_data_and_serves_nodes_with_no_index(
    containers: Containers, tmp_path: Path
) -> None:
    bundle = agent_bundle()
    image = cloud_image(bundle)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    volume = containers.volume("clouddata")
    first = start(containers, image, volume, port)
    poll(lambda: health(url), 60, "the Cloud container healthy", every=0.5)
    prep = containers.exec(
        first,
        "tether-cloud",
        "quickstart",
        "--no-serve",
        "--json",
        "--data-dir",
        DATA,
        "--port",
        str(port),
    )
    assert prep.returncode == 0, prep.stderr
    info = json.loads(prep.stdout.splitlines()[0])
    fingerprint = info["ca_sha256"]

    # A new container on the same volume: the same CA, the same Space.
    podman("rm", "-f", "-t", "10", first)
    second = start(containers, image, volume, port)
    poll(lambda: health(url), 60, "the new Cloud container healthy", every=0.5)
    ca = containers.exec(second, "cat", f"{DATA}/ca.pem").stdout
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca)
    verify = ssl.create_default_context(cafile=str(ca_file))
    client = httpx.Client(base_url=url, verify=verify, trust_env=False, timeout=30)
    assert cert_sha256(ca_file) == fingerprint
    listing = client.get("/downloads/?format=json").json()
    assert listing["complete"] is True
    assert {f["name"] for f in listing["files"]} == set(
        (bundle.path / "SHA256SUMS").read_text().split()[1::2]
    )

    # A fresh node installs from it and claims.
    node = containers.fresh_node(free_port())
    command = linux_command(url, info["claim_token"], [info["room_ids"][1]], fingerprint)
    r = containers.exec(node, "bash", "-c", command)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Agent was successfully claimed." in r.stdout
    node_id = re.search(r"^Node ([0-9a-f-]{36}) is live", r.stdout, re.M)
    assert node_id, r.stdout
    assert containers.exec(node, "cat", "/var/lib/tether/cloud.d/cloud_fullchain.pem").stdout == ca
    api = client.get(
        f"/api/v1/spaces/{info['space_id']}/nodes/{node_id.group(1)}",
        headers={"Authorization": f"Bearer {info['api_token']}"},
    )
    assert api.json()["state"] == "live"
