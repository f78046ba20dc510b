"""Issue 12: every claiming path of today's agents, against a real Cloud and
real agents: claim.conf at start and on reload-claiming-state, `-D -W claim`,
NETDATA_CLAIM_INSECURE / NETDATA_EXTRA_CLAIM_OPTS, a new identity in another
Space, and the rooms of a pending claim staying with its token."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.certs import issue
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, poll
from tests.fixtures.linked import Linked, run_claim, trust
from tether.net.tls import pem_fingerprints


def node_in(cloud: Cloud, space_id: str, node_id: str) -> dict[str, object] | None:
    r = cloud.api("GET", f"/api/v1/spaces/{space_id}/nodes/{node_id}")
    return dict(r.json()) if r.status_code == 200 else None


def live(cloud: Cloud, space_id: str, node_id: str, timeout: float = 20) -> dict[str, object]:
    return dict(
        poll(
            lambda: (n := node_in(cloud, space_id, node_id)) and n["state"] == "live" and n,
            timeout,
            f"node {node_id} live in Space {space_id}",
        )
    )


def another_space(cloud: Cloud) -> tuple[str, str, str]:
    """(space id, its claiming token, a War Room id) of a new Space."""
    sp = cloud.api("POST", "/api/v1/spaces", json={"name": "Second"})
    assert sp.status_code in (200, 201), sp.text
    space_id = sp.json()["id"]
    room = cloud.api("POST", f"/api/v1/spaces/{space_id}/rooms", json={"name": "edge"})
    assert room.status_code in (200, 201), room.text
    tok = cloud.api("GET", f"/api/v1/spaces/{space_id}/claim-token")
    assert tok.status_code == 200, tok.text
    return space_id, tok.json()["token"], room.json()["id"]


@pytest.mark.parametrize("with_rooms", [True, False])
def test_new_identity_into_another_space(
    cloud: Cloud, start_agent: AgentLauncher, with_rooms: bool
) -> None:
    agent = start_agent()
    trust(agent.prefix, cloud)
    first = run_claim(agent.prefix, cloud)  # rooms of the first Space given
    assert first.returncode == 0, first.stderr
    old_id = agent.paths.claimed_id_file.read_text().strip()
    space_id, token, room_id = another_space(cloud)
    new_id = str(uuid.uuid4())
    flags = [f"-rooms={room_id}"] if with_rooms else []
    proc = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(agent.prefix),
            f"-token={token}",
            f"-url={cloud.url}",
            f"-id={new_id}",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    # Before: exit 10 (ErrInvalidRoomID), the first Space's rooms were reused.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node = live(cloud, space_id, new_id)
    if with_rooms:
        assert room_id in node["rooms"]  # type: ignore[operator]
    assert node_in(cloud, space_id, old_id) is None


def test_rooms_file_goes_with_its_token_only(cloud: Cloud, tmp_path: Path) -> None:
    """A pending claim (cloud.d/token + cloud.d/rooms) of another Space must
    not lend its rooms to a claim with an explicit token."""
    trust(tmp_path, cloud)
    cloud_dir = tmp_path / "var/lib/tether/cloud.d"
    (cloud_dir / "token").write_text("tct_someone_elses_token\n")
    (cloud_dir / "rooms").write_text(str(uuid.uuid4()) + "\n")  # not a room of this Space
    proc = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(tmp_path),
            f"-token={cloud.claim_token}",
            f"-url={cloud.url}",
            "-noreload",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_claim_conf_as_netdata_documents_claims_on_start(
    cloud: Cloud, start_agent: AgentLauncher, tmp_path: Path
) -> None:
    prefix = tmp_path / "node"
    trust(prefix, cloud)
    conf = prefix / "etc/tether/claim.conf"
    conf.parent.mkdir(parents=True)
    # Netdata v2's documented claim.conf, with this Cloud's URL, token and rooms.
    conf.write_text(
        "[global]\n"
        f"   url = {cloud.url}\n"
        f"   token = {cloud.claim_token}\n"
        f"   rooms = {','.join(cloud.room_ids)}\n"
        "   proxy = env\n"
        "   insecure = no\n"
    )
    conf.chmod(0o600)
    agent = start_agent(prefix=prefix)
    node_id = poll(
        lambda: agent.info()["claimed_id"], 20, "the agent to claim itself from claim.conf"
    )
    node = live(cloud, cloud.space_id, node_id)
    assert set(cloud.room_ids) <= set(node["rooms"])  # type: ignore[arg-type]
    assert "claim.conf" in agent.log_text()
    assert cloud.claim_token not in agent.log_text()


def test_claim_conf_read_on_reload_claiming_state(cloud: Cloud, start_agent: AgentLauncher) -> None:
    agent = start_agent()
    trust(agent.prefix, cloud)
    assert agent.info()["agent-claimed"] is False
    agent.paths.claim_conf_file.write_text(
        f"[global]\nurl = {cloud.url}\ntoken = {cloud.claim_token}\n"
    )
    agent.paths.claim_conf_file.chmod(0o600)
    proc = agent.cli("reload-claiming-state")
    assert proc.returncode == 0, proc.stderr
    assert "claimed as" in proc.stdout
    node_id = agent.paths.claimed_id_file.read_text().strip()
    live(cloud, cloud.space_id, node_id)
    Linked(cloud, agent, node_id).wait_agent_connected()


def test_agent_D_W_claim_claims_then_runs_linked(
    cloud: Cloud, start_agent: AgentLauncher, tmp_path: Path
) -> None:
    prefix = tmp_path / "node"
    trust(prefix, cloud)
    claim = f"claim -token={cloud.claim_token} -rooms={cloud.room_ids[0]} -url={cloud.url}"
    agent = start_agent(prefix=prefix, args=("-W", claim))
    assert agent.proc.poll() is None  # running, not exited with 5
    node_id = agent.paths.claimed_id_file.read_text().strip()
    live(cloud, cloud.space_id, node_id)
    Linked(cloud, agent, node_id).wait_agent_connected()
    assert "Agent was successfully claimed." in agent.stderr_text()


@pytest.mark.parametrize(
    "insecure_env",
    [{"NETDATA_CLAIM_INSECURE": "yes"}, {"NETDATA_EXTRA_CLAIM_OPTS": "-insecure"}],
    ids=["NETDATA_CLAIM_INSECURE", "NETDATA_EXTRA_CLAIM_OPTS"],
)
def test_netdata_insecure_variables_are_honoured(
    cloud: Cloud, start_agent: AgentLauncher, insecure_env: dict[str, str]
) -> None:
    # The Cloud's private CA is NOT trusted: only -insecure lets claim and link through.
    env = {"NETDATA_CLAIM_TOKEN": cloud.claim_token, "NETDATA_CLAIM_URL": cloud.url}
    agent = start_agent(env={**env, **insecure_env})
    node_id = poll(lambda: agent.info()["claimed_id"], 20, "claim on start with -insecure")
    live(cloud, cloud.space_id, node_id)
    st = Linked(cloud, agent, node_id).wait_agent_connected()
    assert st["insecure"] is True
    assert "verification is OFF" in agent.log_text() or "insecure" in agent.log_text()


def test_without_insecure_the_untrusted_cloud_is_refused(
    cloud: Cloud, start_agent: AgentLauncher
) -> None:
    """The counterpart of the test above: the same agent without -insecure does not claim."""
    env = {"NETDATA_CLAIM_TOKEN": cloud.claim_token, "NETDATA_CLAIM_URL": cloud.url}
    agent = start_agent(env=env)
    poll(lambda: "claim on start failed" in agent.log_text(), 20, "the refused claim")
    assert "not trusted" in agent.log_text()
    assert agent.info()["agent-claimed"] is False


def test_ca_fingerprint_pins_and_saves_the_ca_on_first_use(
    cloud: Cloud, start_agent: AgentLauncher
) -> None:
    agent = start_agent()  # nothing trusted: no cloud_fullchain.pem
    assert cloud.ca_sha256
    pin = cloud.ca_sha256.replace(":", "").lower()
    # The attack: a fingerprint that is not this Cloud's CA (as if someone
    # between node and Cloud served their own). Refused, nothing saved.
    bad = run_claim(agent.prefix, cloud, "-ca-fingerprint=sha256:" + "00" * 32)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "does not match" in bad.stderr
    assert not agent.paths.cloud_fullchain_file.exists()
    assert not agent.paths.claimed_id_file.exists()

    ok = run_claim(agent.prefix, cloud, f"-ca-fingerprint=sha256:{pin.upper()}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    saved = agent.paths.cloud_fullchain_file.read_bytes()
    assert pem_fingerprints(saved) == [pin]  # the pinned CA only
    node_id = agent.paths.claimed_id_file.read_text().strip()
    live(cloud, cloud.space_id, node_id)
    st = json.loads(agent.cli("aclk-state", "json").stdout)
    assert st["ca_fingerprint"] == f"sha256:{pin}"

    # The link trusts only the pinned CA: a replaced fullchain stops it, saying why.
    agent.stop()
    other = Path(str(cloud.ca_file)).parent / "other-ca.pem"
    other.write_bytes(issue(other.parent / "other", "other").ca_file.read_bytes())
    agent.paths.cloud_fullchain_file.write_bytes(other.read_bytes())
    agent = start_agent(prefix=agent.prefix)
    err = poll(
        lambda: (
            (e := json.loads(agent.cli("aclk-state", "json").stdout)["last_error"])
            and "pinned" in e
            and e
        ),
        20,
        "the link to refuse the replaced CA file",
    )
    assert f"sha256:{pin}" in err
