"""packaging/compose/compose.yaml brought up with podman-compose on this
machine: PostgreSQL, NATS, `tether-cloud init`, two Cloud processes and
HAProxy. The Cloud answers through the balancer with the CA init made (its
fingerprint as init's log prints it), a real agent container claims and links
through it, a relay reaches the node through either Cloud process, and
`down -v` leaves none of the project's containers, volumes or network."""

from __future__ import annotations

import os
import re
import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.common import free_port, poll
from tests.fixtures.containers import (
    COMPOSE_SERVICES,
    RUNC,
    Containers,
    agent_bundle,
    agent_image,
    cloud_image,
    compose_service_image,
    containers_fixture,  # noqa: F401 (the `containers` fixture)
    podman,
    podman_env,
)
from tether.cloud.tls import cert_sha256

COMPOSE = Path(__file__).parents[2] / "packaging" / "compose" / "compose.yaml"
PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
DATA = "/var/lib/tether-cloud"


def compose_env(**extra: str) -> dict[str, str]:
    env = podman_env()
    env.update(extra)
    return env


def compose(
    project: str, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [
            PODMAN_COMPOSE,
            "--podman-args",
            f"--runtime {RUNC}",
            "-p",
            project,
            "-f",
            str(COMPOSE),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert r.returncode == 0, f"podman-compose {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def project_objects(project: str) -> list[str]:
    """Containers, volumes and networks podman labels as this project's."""
    label = f"label=io.podman.compose.project={project}"
    found = podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split()
    found += podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split()
    nets = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    return found + [n for n in nets if n.startswith(project + "_")]


def test_config_is_valid_for_podman_compose() -> None:
    env = compose_env(TETHER_DB_PASSWORD="x", TETHER_PUBLIC_URL="https://cloud.example:19443")
    out = compose("tether", env, "config", timeout=60).stdout
    import yaml

    config: dict[str, Any] = yaml.safe_load(out)
    assert set(config["services"]) == {"postgres", "nats", "init", "cloud-1", "cloud-2", "haproxy"}
    for name in ("cloud-1", "cloud-2"):
        cmd = config["services"][name]["command"]
        assert "nats://nats:4222" in cmd and "--require-proxy-header" in cmd
        assert config["services"][name]["depends_on"]["init"]["condition"] == (
            "service_completed_successfully"
        )


def test_compose_file_needs_its_secrets() -> None:
    """Without TETHER_DB_PASSWORD the file says what to set, not a blank password."""
    r = subprocess.run(
        [PODMAN_COMPOSE, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env={k: v for k, v in compose_env().items() if not k.startswith("TETHER_")},
        timeout=60,
        check=False,
    )
    assert r.returncode != 0
    assert "set TETHER_DB_PASSWORD in .env" in r.stdout + r.stderr


def init_state(project: str) -> str:
    r = podman("inspect", "--format", "{{.State.Status}}", f"{project}_init_1", check=False)
    return r.stdout.strip()


def ready(url: str, ca: ssl.SSLContext) -> bool:
    try:
        return (
            httpx.get(url + "/api/ready", verify=ca, trust_env=False, timeout=3).status_code == 200
        )
    except httpx.HTTPError:
        return False


def relay_in(project: str, cloud: str, token: str, node_id: str) -> int:
    """GET /api/v2/nodes/ID/info asked of one Cloud process directly (from
    inside its container, so not through the balancer)."""
    code = (
        "import json, ssl, sys, urllib.request as u, urllib.error as e\n"
        f"c = ssl.create_default_context(cafile='{DATA}/ca.pem'); c.check_hostname = False\n"
        f"r = u.Request('https://127.0.0.1:19443/api/v2/nodes/{node_id}/info',"
        f" headers={{'Authorization': 'Bearer {token}'}})\n"
        "try:\n    print(u.urlopen(r, context=c, timeout=20).status)\n"
        "except e.HTTPError as x:\n    print(x.code)\n"
    )
    r = podman("exec", f"{project}_{cloud}_1", "python3", "-c", code, check=False, timeout=60)
    return int(r.stdout.strip() or 0)


# The first run builds the Debian bases and the images (minutes on a busy machine).
@pytest.mark.container
@pytest.mark.timeout(1200)
def test_compose_runs_the_scale_out_cloud(containers: Containers, tmp_path: Path) -> None:
    bundle = agent_bundle()
    images = {s: compose_service_image(s) for s in COMPOSE_SERVICES}
    agent = agent_image(bundle)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    project = f"ttcompose{os.getpid()}"
    net = 100 + os.getpid() % 100  # a subnet of its own, should two runs overlap
    env = compose_env(
        TETHER_CLOUD_IMAGE=cloud_image(bundle),
        TETHER_POSTGRES_IMAGE=images["postgres"],
        TETHER_NATS_IMAGE=images["nats"],
        TETHER_HAPROXY_IMAGE=images["haproxy"],
        TETHER_DB_PASSWORD=secrets.token_urlsafe(16),
        TETHER_PUBLIC_URL=url,
        TETHER_LISTEN="127.0.0.1",
        TETHER_PORT=str(port),
        TETHER_SUBNET=f"10.89.{net}.0/24",
        TETHER_LB_ADDRESS=f"10.89.{net}.10",
    )
    assert project_objects(project) == []
    left: list[str] = []
    try:
        started = time.monotonic()
        # --no-deps: podman 4.3 cannot start a container whose --requires
        # chain is two deep (cloud -> init -> postgres); without it the
        # services converge through their restart policies and init's retries.
        compose(project, env, "up", "-d", "--no-deps")
        poll(lambda: init_state(project) == "exited", 180, "init finished", every=0.5)
        # What the operator reads in `compose logs init`.
        log = service_log(project, "init")
        password = re.search(r"Sign in as admin@localhost, password (\S+)", log)
        fingerprint = re.search(r"CA SHA-256: (\S+)", log)
        assert password and fingerprint, log
        # The Cloud's CA, fetched through the balancer and checked against
        # init's fingerprint, as Connect Nodes has a node do.
        ca_pem = httpx.get(url + "/ca.pem", verify=False, trust_env=False, timeout=10).text  # noqa: S501
        ca_file = tmp_path / "ca.pem"
        ca_file.write_text(ca_pem)
        assert cert_sha256(ca_file) == fingerprint.group(1)
        ca = ssl.create_default_context(cafile=str(ca_file))
        poll(lambda: ready(url, ca), 120, "the Cloud ready through HAProxy", every=0.5)
        print(f"compose up to ready through HAProxy: {time.monotonic() - started:.1f} s")

        # Sign in as the first admin, through HAProxy, and get what Connect Nodes shows.
        # (A sign-in checks an Argon2 hash: slow on purpose, slower on a busy machine.)
        web = httpx.Client(base_url=url, verify=ca, trust_env=False, timeout=90)
        creds = {"email": "admin@localhost", "password": password.group(1)}

        def sign_in() -> httpx.Response | None:
            # 503 + Retry-After (seen once: the network's DNS briefly lost
            # "postgres") is answered by trying again, as a browser user would.
            r = web.post("/api/v1/auth/login", json=creds)
            return None if r.status_code == 503 else r

        login = poll(sign_in, 60, "a sign-in through HAProxy", every=2)
        assert login.status_code == 200, login.text
        csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
        made = web.post("/api/v1/me/api-tokens", json={"name": "compose-test"}, headers=csrf)
        assert made.status_code in (200, 201), made.text
        token = made.json()["token"]
        api = httpx.Client(
            base_url=url,
            verify=ca,
            trust_env=False,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        [space] = api.get("/api/v1/spaces").json()
        space_id = space["id"]
        claim_token = api.get(f"/api/v1/spaces/{space_id}/claim-token").json()["token"]

        # A real agent container claims and links through the balancer.
        conf = tmp_path / "tether.conf"
        conf.write_text(f"[web]\n    default port = {free_port()}\n    bind to = 127.0.0.1\n")
        conf.chmod(0o644)
        name = containers.name("agent")
        podman(
            "run", "-d", "--name", name, "--network", "host", f"--hostname={name}-h",
            "-v", f"{conf}:/etc/tether/tether.conf:ro",
            "-v", f"{containers.volume('agentlib')}:/var/lib/tether",
            "-e", f"TETHER_CLAIM_TOKEN={claim_token}",
            "-e", f"TETHER_CLAIM_URL={url}",
            "-e", f"TETHER_CLAIM_CA={ca_pem}",
            agent,
        )  # fmt: skip

        def live() -> dict[str, Any] | None:
            nodes = api.get(f"/api/v1/spaces/{space_id}/nodes").json()
            nodes = nodes["nodes"] if isinstance(nodes, dict) else nodes
            return next((n for n in nodes if n["state"] == "live"), None)

        node = poll(live, 120, "the agent live through HAProxy", every=0.5)
        assert containers.exec(name, "cat", "/var/lib/tether/cloud.d/cloud_fullchain.pem").stdout
        # A relay through the balancer, and through each process on its own:
        # one holds the link, the other reaches it over NATS.
        assert api.get(f"/api/v2/nodes/{node['id']}/info").status_code == 200
        for cloud in ("cloud-1", "cloud-2"):
            assert relay_in(project, cloud, token, node["id"]) == 200, cloud
    finally:
        for c in ("init", "cloud-1", "cloud-2", "haproxy"):
            print(f"--- {c}\n" + "\n".join(service_log(project, c).splitlines()[-15:]))
        containers.cleanup()
        compose(project, env, "down", "-v", "-t", "10")
        left = project_objects(project)
        remove(left)  # should `down` have missed any, not to leave them running
    assert left == [], "podman-compose down -v left these"


def remove(objects: list[str]) -> None:
    for o in objects:
        podman("rm", "-f", "-t", "1", o, check=False, timeout=60)
    for o in objects:
        podman("volume", "rm", "-f", o, check=False, timeout=60)
        podman("network", "rm", "-f", o, check=False, timeout=60)


def service_log(project: str, service: str) -> str:
    r = podman("logs", f"{project}_{service}_1", check=False)
    return r.stdout + r.stderr
