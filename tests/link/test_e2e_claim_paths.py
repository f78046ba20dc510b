"""The other ways into a Space: `tether-agent -W "claim ..."` and claim on start
from TETHER_CLAIM_* / NETDATA_CLAIM_* (containers), each ending with a live link."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, poll
from tests.fixtures.linked import Linked, cloud_args, trust
from tests.fixtures.proxies import ProxyProcess


def space_nodes(cloud: Cloud) -> list[dict[str, object]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_agent_w_claim_links_the_running_agent(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud(*cloud_args())
    agent = start_agent()
    trust(agent.prefix, cloud)
    spec = f"claim -token={cloud.claim_token} -rooms={','.join(cloud.room_ids)} -url={cloud.url}"
    proc = subprocess.run(
        [command("tether-agent"), "--prefix", str(agent.prefix), "-W", spec],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Agent was successfully claimed." in proc.stdout
    node_id = agent.paths.claimed_id_file.read_text().strip()
    Linked(cloud, agent, node_id).wait_state("live", 10)
    assert agent.info()["aclk-available"] is True


def test_agent_w_claim_exits_with_the_claim_exit_code(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud(*cloud_args())
    agent = start_agent()
    trust(agent.prefix, cloud)
    proc = subprocess.run(
        [
            command("tether-agent"),
            "--prefix",
            str(agent.prefix),
            "-W",
            f"claim -token=not-the-token -url={cloud.url}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 12, proc.stdout + proc.stderr  # ErrForbidden
    assert agent.info()["agent-claimed"] is False


def test_claim_on_start_is_idempotent_across_restarts(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cloud = start_cloud(*cloud_args())
    prefix = tmp_path_factory.mktemp("agent-cos")
    trust(prefix, cloud)
    env = {
        "TETHER_CLAIM_TOKEN": cloud.claim_token,
        "TETHER_CLAIM_URL": cloud.url,
        "TETHER_CLAIM_ROOMS": ",".join(cloud.room_ids),
    }
    agent = start_agent(prefix=prefix, env=env)
    node_id = poll(lambda: agent.info()["claimed_id"], 20, "the agent to claim on start")
    linked = Linked(cloud, agent, node_id)
    linked.wait_state("live", 10)
    assert "claim on start: node" in agent.log_text()
    assert agent.stop() == 0

    # A container restart with the same variables: same node, no duplicate.
    again = start_agent(prefix=prefix, env=env)
    linked = Linked(cloud, again, node_id)
    linked.wait_state("live", 15)
    assert again.info()["claimed_id"] == node_id
    assert "already claimed" in again.log_text()
    assert [n["id"] for n in space_nodes(cloud)] == [node_id]


def test_claim_on_start_accepts_netdata_names(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cloud = start_cloud(*cloud_args())
    prefix = tmp_path_factory.mktemp("agent-nd")
    trust(prefix, cloud)
    env = {"NETDATA_CLAIM_TOKEN": cloud.claim_token, "NETDATA_CLAIM_URL": cloud.url}
    agent = start_agent(prefix=prefix, env=env)
    node_id = poll(lambda: agent.info()["claimed_id"], 20, "the agent to claim on start")
    Linked(cloud, agent, node_id).wait_state("live", 10)


def test_claim_on_start_failure_keeps_the_agent_running(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cloud = start_cloud(*cloud_args())
    prefix = tmp_path_factory.mktemp("agent-bad")
    trust(prefix, cloud)
    env = {"TETHER_CLAIM_TOKEN": "wrong-token", "TETHER_CLAIM_URL": cloud.url}
    agent = start_agent(prefix=prefix, env=env)
    info = agent.info()
    assert info["agent-claimed"] is False and info["aclk-available"] is False
    log = agent.log_text()
    assert "claim on start failed" in log and "wrong-token" not in log
    assert agent.proc.poll() is None
    assert space_nodes(cloud) == []


def test_claim_on_start_proxy_also_carries_the_link(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    tmp_path_factory: pytest.TempPathFactory,
    socks_proxy_auth: ProxyProcess,
) -> None:
    cloud = start_cloud(*cloud_args())
    prefix = tmp_path_factory.mktemp("agent-proxy")
    trust(prefix, cloud)
    env = {
        "TETHER_CLAIM_TOKEN": cloud.claim_token,
        "TETHER_CLAIM_URL": cloud.url,
        "TETHER_CLAIM_PROXY": socks_proxy_auth.url("socks5h"),
    }
    agent = start_agent(prefix=prefix, env=env)
    node_id = poll(lambda: agent.info()["claimed_id"], 20, "the agent to claim on start")
    linked = Linked(cloud, agent, node_id)
    linked.wait_state("live", 10)
    st = linked.aclk()
    assert f"127.0.0.1:{socks_proxy_auth.port}" in st["proxy"], st
    assert st["proxy_source"] == "environment variable TETHER_CLAIM_PROXY", st
    assert socks_proxy_auth.password and socks_proxy_auth.password not in agent.log_text()
