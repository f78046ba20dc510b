"""The link end to end: a real agent claimed into a real Cloud over TLS.

Claim -> live -> read CPU through the relay -> Cloud killed -> agent backs off ->
Cloud back on the same port -> live again; agent killed -> offline within 1.5
keepalive intervals; graceful stop and unclaim -> offline with a reason;
node removed -> the agent stops retrying and says how to fix it.
"""

from __future__ import annotations

import shutil
import signal
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import KEEPALIVE, Linked, cloud_args, cpu_through_cloud, link_agent
from tether.paths import AgentPaths


def test_claim_live_query_then_cloud_killed_and_back(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud(*cloud_args())
    linked = link_agent(cloud, start_agent, live_timeout=5)
    agent = linked.agent

    info = agent.info()
    assert info["agent-claimed"] is True and info["aclk-available"] is True
    st = linked.aclk()
    assert st["connected"] is True and st["connected_since"]
    assert st["session_id"]
    assert st["link_url"] == f"wss://{cloud.url.split('://', 1)[1].rstrip('/')}/aclk"
    assert st["proxy"].startswith("no proxy")
    text = agent.cli("aclk-state").stdout
    print(f"tether-cli aclk-state:\n{text}")
    assert "connected since:" in text and "link url: wss://" in text
    assert "ACLK connected to wss://" in agent.log_text()

    # Current CPU through the Cloud matches what the agent itself serves.
    body = cpu_through_cloud(linked)
    local = agent.get("/api/v1/data", chart="system.cpu", after=-5, points=5).json()
    assert body["dimension_names"] == local["dimension_names"]

    # Other documented relay paths, and several queries in flight on one link.
    r = linked.relay("info")
    assert r.status_code == 200 and r.json()["machine_guid"] == info["machine_guid"]
    r = linked.relay("alarms")
    assert r.status_code == 200, r.text
    # A large answer (compressed inside the frame) arrives whole.
    r = linked.relay("charts")
    assert r.status_code == 200 and len(r.content) > 8 * 1024, len(r.content)
    assert set(r.json()["charts"]) == set(agent.get("/api/v1/charts").json()["charts"])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: linked.relay("charts").status_code, range(16)))
    assert answers == [200] * 16

    # Kill the Cloud: the agent notices, says so, and backs off.
    cloud.stop(signal.SIGKILL)
    poll(lambda: agent.info()["aclk-available"] is False, 10, "aclk-available false")
    st = poll(lambda: (s := linked.aclk())["next_retry_at"] and s, 15, "a scheduled retry")
    assert st["connected"] is False and st["last_error"] and st["last_error_at"]
    assert st["terminal"] is False
    assert "ACLK reconnecting in" in agent.log_text()
    time.sleep(1.5)
    attempts = linked.aclk()["attempts"]
    assert attempts < 6, f"{attempts} connection attempts in ~2 s: the agent hammers a dead Cloud"

    # The same Cloud comes back on the same port: the node is live again.
    began = time.monotonic()
    start_cloud(
        *cloud_args(), data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
    )
    linked.wait_state("live", 30)
    print(f"live again {time.monotonic() - began:.2f} s after the Cloud restarted")
    linked.wait_agent_connected()
    cpu_through_cloud(linked)
    assert "Bearer" not in agent.log_text()
    print("\n".join(x for x in agent.log_text().splitlines() if "ACLK" in x))


def test_agent_killed_goes_offline_within_keepalive(linked: Linked) -> None:
    linked.agent.proc.send_signal(signal.SIGKILL)
    linked.agent.proc.wait(5)
    took = linked.wait_state("offline", 4 * KEEPALIVE + 5)
    print(f"offline {took:.2f} s after SIGKILL (keepalive {KEEPALIVE:g} s)")
    node = linked.node()
    assert node["state_since"]
    # Relaying to an offline node fails fast and clearly, never hangs.
    r = linked.relay("info")
    assert (r.status_code, r.json()["errorMsgKey"]) == (503, "ErrNodeUnreachable"), r.text
    assert r.json()["state"] == "offline" and r.headers["Retry-After"] == "5"


@pytest.mark.parametrize("how", ["shutdown-agent", "SIGTERM"])
def test_graceful_stop_tells_the_cloud_why(linked: Linked, how: str) -> None:
    if how == "SIGTERM":
        linked.agent.proc.send_signal(signal.SIGTERM)
    else:
        proc = linked.agent.cli("shutdown-agent")
        assert proc.returncode == 0, proc.stderr
    assert linked.agent.proc.wait(15) == 0
    took = linked.wait_state("offline", 5)
    print(f"offline {took:.2f} s after {how}")
    node = linked.node()
    assert node["state_cause"].startswith("goodbye"), node
    assert "shutdown" in node["state_cause"], node
    assert "ACLK disconnecting" in linked.agent.log_text()


@pytest.mark.parametrize("how", ["remove cloud.d", "enabled = no"])
def test_unclaim_or_disable_stops_the_link(linked: Linked, how: str) -> None:
    paths = linked.agent.paths
    if how == "remove cloud.d":
        shutil.rmtree(paths.cloud_dir)
    else:
        conf = paths.cloud_conf_file.read_text().replace("enabled = yes", "enabled = no")
        paths.cloud_conf_file.write_text(conf)
    proc = linked.agent.cli("reload-claiming-state")
    assert proc.returncode == 0, proc.stderr
    linked.wait_state("offline", 10)
    assert "unclaim" in linked.node()["state_cause"]
    info = linked.agent.info()
    assert info["aclk-available"] is False
    if how == "remove cloud.d":
        assert info["agent-claimed"] is False
        assert linked.aclk()["state"] == "not claimed"
    else:
        assert info["cloud-enabled"] is False
        assert linked.aclk()["state"] == "cloud disabled in cloud.d/cloud.conf"
    attempts = linked.aclk()["attempts"]
    time.sleep(2)
    assert linked.aclk()["attempts"] == attempts, "an unclaimed agent keeps connecting"


def test_removed_node_stops_retrying_and_says_why(linked: Linked) -> None:
    cloud = linked.cloud
    r = cloud.api("DELETE", f"/api/v1/spaces/{cloud.space_id}/nodes/{linked.node_id}")
    assert r.status_code == 204, r.text
    st = poll(lambda: (s := linked.aclk())["terminal"] and s, 20, "the agent to give up")
    assert st["connected"] is False
    assert "tether-claim" in st["fix"], st
    info = linked.agent.info()
    assert info["aclk-available"] is False
    assert info["aclk-error"] and "tether-claim" in info["aclk-fix"]
    log = linked.agent.log_text()
    assert "ACLK stopped retrying" in log and "tether-claim" in log
    attempts = st["attempts"]
    time.sleep(3)
    assert linked.aclk()["attempts"] == attempts, "the agent keeps retrying a removed node"
    assert linked.aclk()["next_retry_at"] is None


def test_frozen_agent_times_out_then_returns(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    """A link that goes silent (no FIN: a frozen host, a dead network path) is
    caught by the keepalive; a query to it gets 504, not a hang."""
    cloud = start_cloud(*cloud_args(), "--relay-timeout", "1")
    linked = link_agent(cloud, start_agent)
    agent = linked.agent
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        r = linked.relay("info")
        # 504 ErrNodeTimeout: the relay gave up at its timeout, it did not hang.
        assert r.status_code == 504, r.text
        linked.wait_state("offline", 4 * KEEPALIVE + 5)
        took = time.monotonic() - began
        print(f"offline {took:.2f} s after the agent froze (keepalive {KEEPALIVE:g} s)")
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    # Thawed, the agent finds its link dead and comes back through the backoff.
    took = linked.wait_state("live", 30)
    print(f"live {took:.2f} s after the agent thawed")
    assert agent.info()["aclk-available"] is True


def test_no_metric_values_reach_the_cloud_database_or_log(linked: Linked) -> None:
    cpu_through_cloud(linked)
    values: set[float] = set()

    def distinctive_values() -> set[float]:
        # A fresh agent may hold only a few round values: ask until some are
        # distinctive enough to be searched for without false matches.
        for chart in ("system.cpu", "system.ram"):
            r = linked.relay("data", chart=chart, after=-60)
            assert r.status_code == 200, r.text
            values.update(v for row in r.json()["result"]["data"] for v in row[1:] if v)
        return {v for v in values if len(repr(v)) >= 7}  # e.g. 3.0150754

    distinctive = poll(distinctive_values, 15, "distinctive metric values", every=0.5)
    db = linked.cloud.data_dir / "cloud.db"
    blobs = [linked.cloud.log_file.read_bytes()]
    blobs += [p.read_bytes() for p in db.parent.glob("cloud.db*")]
    for v in distinctive:
        text, double = repr(v).encode(), struct.pack(">d", v)
        assert not any(text in b or double in b for b in blobs), f"{v} stored by the Cloud"


def test_cloned_identity_is_recorded_not_a_silent_flap(
    linked: Linked, start_agent: AgentLauncher, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second host with a copy of this node's cloud.d (a cloned VM) replaces
    the first link: the Cloud records it and the first agent says what to do."""
    clone_prefix = tmp_path_factory.mktemp("clone")
    shutil.copytree(linked.agent.paths.lib_dir, AgentPaths(clone_prefix).lib_dir)
    clone = start_agent(prefix=clone_prefix)
    replaced = "replaced by a newer connection with the same node identity"
    poll(lambda: replaced in linked.agent.log_text(), 20, "the first agent to be replaced")
    assert "cloned" in linked.agent.log_text() and "-id=$(uuidgen)" in linked.agent.log_text()
    causes = poll(
        lambda: [e["cause"] for e in linked.node()["events"] if "replaced" in str(e["cause"])],
        10,
        "a 'replaced' event on the node",
    )
    print(f"node events after the clone connected: {causes}")
    clone.stop()


def test_untrusted_cloud_certificate_is_named_and_retried(
    linked: Linked, start_agent: AgentLauncher
) -> None:
    """TLS is always verified: without the Cloud's CA the link names the TLS
    failure (and keeps retrying: the certificate may be fixed on either side)."""
    assert linked.agent.stop() == 0
    linked.agent.paths.cloud_fullchain_file.unlink()
    again = start_agent(prefix=linked.agent.prefix)
    relinked = Linked(linked.cloud, again, linked.node_id)
    err = poll(lambda: relinked.aclk()["last_error"], 15, "a TLS error in aclk-state")
    print(f"aclk-state without the Cloud's CA: {err}")
    assert "TLS" in err and "certificate" in err.lower(), err
    st = relinked.aclk()
    assert st["terminal"] is False and st["connected"] is False
    assert relinked.state() == "offline"


def test_replaced_key_is_terminal_and_says_why(linked: Linked, start_agent: AgentLauncher) -> None:
    """A private key that no longer matches the one the Cloud holds is not a
    network blip: the agent stops retrying and names the fix."""
    assert linked.agent.stop() == 0
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    linked.agent.paths.private_key_file.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    again = start_agent(prefix=linked.agent.prefix)
    relinked = Linked(linked.cloud, again, linked.node_id)
    st = poll(lambda: (s := relinked.aclk())["terminal"] and s, 20, "the agent to give up")
    print(f"aclk-state with a replaced key: {st['last_error']} | {st['fix']}")
    assert "private key" in st["last_error"], st
    assert "-id=$(uuidgen)" in st["fix"]
    assert again.info()["aclk-fix"] == st["fix"]
    assert "ACLK stopped retrying" in again.log_text()
    assert relinked.state() == "offline"


def test_cloud_graceful_restart_agent_backs_off_and_returns(
    linked: Linked, start_cloud: Callable[..., Cloud]
) -> None:
    cloud = linked.cloud
    assert cloud.stop(signal.SIGTERM) == 0
    poll(lambda: "Cloud restarting (1012)" in linked.agent.log_text(), 10, "a 1012 close")
    st = linked.aclk()
    assert st["connected"] is False and st["terminal"] is False
    start_cloud(
        *cloud_args(), data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
    )
    took = linked.wait_state("live", 30)
    print(f"live {took:.2f} s after the Cloud came back from a graceful restart")
    # The agent never reconnected at 0 s: each attempt waited in the backoff.
    assert "ACLK reconnecting in" in linked.agent.log_text()
