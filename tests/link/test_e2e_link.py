"""The link end to end: a real agent claimed into a real Cloud over TLS.

Claim -> live -> read CPU through the relay -> Cloud killed -> agent backs off ->
Cloud back on the same port -> live again; agent killed -> offline within 1.5
keepalive intervals; graceful stop and unclaim -> offline with a reason;
node removed -> the agent stops retrying and says how to fix it.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.link.conftest import KEEPALIVE, Linked, cloud_args, link_agent, poll


def cpu_through_cloud(linked: Linked) -> dict[str, Any]:
    r = linked.relay("data", chart="system.cpu", after=-5, points=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "system.cpu"
    labels, rows = body["result"]["labels"], body["result"]["data"]
    assert labels[0] == "time" and len(labels) > 1
    assert 1 <= len(rows) <= 5
    now = time.time()
    assert all(now - 30 < row[0] <= now + 2 for row in rows), rows
    total = sum(v for v in rows[0][1:] if v is not None)
    assert 0 <= total <= 100.5, rows
    return dict(body)


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
    assert "connected since:" in text and "link url: wss://" in text
    assert "ACLK connected to wss://" in agent.log_text()

    # Current CPU through the Cloud matches what the agent itself serves.
    body = cpu_through_cloud(linked)
    local = agent.get("/api/v1/data", chart="system.cpu", after=-5, points=5).json()
    assert body["dimension_names"] == local["dimension_names"]

    # Other documented relay paths, and several queries in flight on one link.
    r = linked.relay("info")
    assert r.status_code == 200 and r.json()["machine_guid"] == info["machine_guid"]
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
    assert linked.aclk()["connected"] is True
    cpu_through_cloud(linked)
    assert "Bearer" not in agent.log_text()


def test_agent_killed_goes_offline_within_keepalive(linked: Linked) -> None:
    linked.agent.proc.send_signal(signal.SIGKILL)
    linked.agent.proc.wait(5)
    took = linked.wait_state("offline", 4 * KEEPALIVE + 5)
    print(f"offline {took:.2f} s after SIGKILL (keepalive {KEEPALIVE:g} s)")
    assert took <= 1.5 * KEEPALIVE + 1.0, f"offline only after {took:.2f} s"
    node = linked.node()
    assert node["state_since"]
    # Relaying to an offline node fails fast and clearly, never hangs.
    r = linked.relay("info")
    assert r.status_code in (502, 503, 504), r.text


def test_graceful_stop_tells_the_cloud_why(linked: Linked) -> None:
    proc = linked.agent.cli("shutdown-agent")
    assert proc.returncode == 0, proc.stderr
    linked.agent.proc.wait(15)
    took = linked.wait_state("offline", 5)
    print(f"offline {took:.2f} s after shutdown-agent")
    node = linked.node()
    assert node["state_cause"] == "goodbye", node
    offline = [e for e in node["events"] if e["state"] == "offline"]
    assert offline and "shutdown" in str(offline[0]["detail"]), node["events"]
    assert "ACLK disconnecting" in linked.agent.log_text()


def test_unclaim_stops_the_link(linked: Linked) -> None:
    shutil.rmtree(linked.agent.paths.cloud_dir)
    proc = linked.agent.cli("reload-claiming-state")
    assert proc.returncode == 0, proc.stderr
    linked.wait_state("offline", 10)
    info = linked.agent.info()
    assert info["agent-claimed"] is False and info["aclk-available"] is False
    assert linked.aclk()["state"] == "not claimed"
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
