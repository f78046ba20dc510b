"""TETHER_HOST_ROOT: an agent in a container reports the host, not the container.

A fake host root is built in a temporary directory (real /proc files copied,
plus files with numbers no real machine has), and a real tether-agent reads
it; what it reports is checked through its local API and its log.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.common import poll
from tests.fixtures.host_root import (
    FAKE_HOSTNAME,
    FAKE_OS_NAME,
    FAKE_OS_VERSION,
    FAKE_PIDS,
    LOAD,
    MEM_AVAILABLE_KB,
    MEM_TOTAL_KB,
    THREADS,
    UPTIME,
    build_host_root,
)


def latest(agent: RunningAgent, chart: str) -> dict[str, float]:
    """The chart's latest value per dimension (none yet: left out)."""
    r = agent.get("/api/v1/data", chart=chart, after=-5)
    if r.status_code != 200:
        return {}
    body: dict[str, Any] = r.json()
    pairs = zip(body["dimension_names"], body["latest_values"], strict=True)
    return {name: value for name, value in pairs if value is not None}


def ram_total_mib(agent: RunningAgent) -> float | None:
    values = latest(agent, "system.ram")
    return sum(values.values()) if len(values) == 4 else None


def real_os_name() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("NAME="):
            return line.partition("=")[2].strip('"')
    raise AssertionError("this machine's /etc/os-release has no NAME")


def real_mem_total_kb() -> int:
    m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    assert m is not None
    return int(m.group(1))


@pytest.mark.parametrize("setting", ["TETHER_HOST_ROOT", "NETDATA_HOST_PREFIX"])
def test_agent_reports_the_host_under_the_host_root(
    start_agent: AgentLauncher, tmp_path: Path, setting: str
) -> None:
    root = build_host_root(tmp_path)
    a = start_agent(env={setting: str(root)})

    info = a.info()
    assert info["hostname"] == FAKE_HOSTNAME != socket.gethostname()
    assert info["os_name"] == FAKE_OS_NAME
    assert info["os_id"] == "tethertest"
    assert info["os_version"] == FAKE_OS_VERSION

    total = poll(lambda: ram_total_mib(a), 15, "system.ram")
    assert total == pytest.approx(MEM_TOTAL_KB / 1024, abs=0.01)
    assert latest(a, "mem.available")["avail"] == pytest.approx(MEM_AVAILABLE_KB / 1024, abs=0.01)
    assert latest(a, "system.uptime")["uptime"] == pytest.approx(UPTIME)
    load = latest(a, "system.load")
    assert (load["load1"], load["load5"], load["load15"]) == pytest.approx(LOAD)
    assert latest(a, "system.threads")["threads"] == THREADS
    assert latest(a, "system.active_processes")["active"] == len(FAKE_PIDS)
    # Disk space of the host's / is measured at the root itself.
    st = os.statvfs(root)
    space = poll(lambda: latest(a, "disk_space._"), 15, "disk_space._")
    assert space["avail"] + space["used"] + space["reserved_for_root"] == pytest.approx(
        st.f_blocks * st.f_frsize / 1024**3, rel=1e-6
    )
    # The agent's own cost is its own process's, never looked up under the root.
    rss_mib = poll(lambda: latest(a, "tether.agent_mem").get("rss"), 15, "tether.agent_mem")
    own_mib = psutil.Process(a.proc.pid).memory_info().rss / 1024**2
    assert rss_mib == pytest.approx(own_mib, rel=0.5)
    log = a.log_text()
    assert f"under {root} ({setting}={root})" in log
    assert not info["collector_errors"], info["collector_errors"]


def test_without_the_setting_the_agent_reports_this_machine(start_agent: AgentLauncher) -> None:
    a = start_agent(env={"TETHER_HOST_ROOT": "", "NETDATA_HOST_PREFIX": ""})
    info = a.info()
    assert info["hostname"] == socket.gethostname()
    assert info["os_name"] == real_os_name()
    total = poll(lambda: ram_total_mib(a), 15, "system.ram")
    assert total == pytest.approx(real_mem_total_kb() / 1024, abs=0.01)
    real_uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert latest(a, "system.uptime")["uptime"] == pytest.approx(real_uptime, abs=30)
    assert "reading the host's /proc" not in a.log_text()


def test_missing_host_files_are_logged_once_and_not_replaced_by_the_container(
    start_agent: AgentLauncher, tmp_path: Path
) -> None:
    root = build_host_root(tmp_path, missing=("proc/diskstats", "etc/os-release"))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/hostname").write_text("etc-hostname-wins\n")
    a = start_agent(env={"TETHER_HOST_ROOT": str(root)})

    # Several collection cycles pass; the agent keeps running and reporting the rest.
    a.wait_for(
        lambda: (
            a.get("/api/v1/data", chart="system.uptime", after=-10).json().get("points", 0) >= 4
        ),
        what="4 collection cycles",
    )
    assert a.proc.poll() is None
    info = a.info()
    assert info["hostname"] == "etc-hostname-wins"
    assert latest(a, "system.uptime")["uptime"] == pytest.approx(UPTIME)

    log = a.log_text().splitlines()
    setting = f"TETHER_HOST_ROOT={root}"
    diskstats = [line for line in log if f"{root}/proc/diskstats" in line]
    assert len(diskstats) == 1, diskstats
    assert setting in diskstats[0] and "collector disk_io failed" in diskstats[0]
    assert "disk_io" in info["collector_errors"]
    # No disk charts at all: this machine's own /proc/diskstats is not a stand-in.
    charts = a.get("/api/v1/charts").json()["charts"]
    assert not [c for c in charts if c.startswith(("disk.", "disk_ops."))]

    # The distribution is not the container's: unknown, said once; the kernel stays.
    osr = [line for line in log if f"{root}/etc/os-release" in line]
    assert len(osr) == 1 and setting in osr[0], osr
    assert info["os_name"] == info["kernel_name"] != real_os_name()

    # A host mount not visible under the root: said once, not measured.
    hidden = [line for line in log if "/srv/not mounted" in line]
    assert len(hidden) == 1 and "not reported" in hidden[0], hidden
    assert not [c for c in charts if c.startswith("disk_space._srv")]


def test_host_root_that_does_not_exist_is_reported(
    start_agent: AgentLauncher, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-host"
    a = start_agent(env={"TETHER_HOST_ROOT": str(missing)})
    errors = poll(lambda: a.info()["collector_errors"], 15, "collector errors")
    assert a.proc.poll() is None
    assert "memory" in errors and f"{missing}/proc/meminfo" in errors["memory"]
    assert not latest(a, "system.ram")  # nothing stands in for the host's memory
    log = a.log_text()
    assert f"TETHER_HOST_ROOT={missing}: {missing} is not a directory" in log
    # No host name to read: this machine's own, and the log says so.
    assert a.info()["hostname"] == socket.gethostname()
    assert "reporting this container's own name" in log
