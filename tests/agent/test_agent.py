"""The agent as a user meets it: the real tether-agent in a temporary prefix."""

from __future__ import annotations

import itertools
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.common import clean_env, command


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """One agent for the read-only checks, with a few seconds of data."""
    launcher = AgentLauncher(tmp_path_factory)
    a = launcher()
    try:
        a.wait_for(
            lambda: (
                a.get("/api/v1/chart", chart="system.uptime").status_code == 200
                and a.get("/api/v1/data", chart="system.uptime", after=-6).json()["points"] >= 6
            ),
            what="6 seconds of data",
        )
        yield a
    finally:
        launcher.stop_all()


def test_info_reports_identity_and_cloud_state(shared: RunningAgent) -> None:
    info = shared.info()
    guid = shared.paths.machine_guid_file.read_text().strip()
    assert info["uid"] == guid == info["machine_guid"]
    assert info["cloud-enabled"] is True
    assert info["cloud-available"] is True
    assert info["agent-claimed"] is False
    assert info["aclk-available"] is False
    assert info["claim-id"] is None
    modules = {c["module"] for c in info["collectors"]}
    assert {
        "cpu",
        "load",
        "memory",
        "swap",
        "disk_io",
        "disk_space",
        "network",
        "processes",
        "uptime",
        "agent_self",
    } <= modules
    assert info["metrics-count"] > 20
    assert 0 < info["collection-cycle-ms"] < 500


def test_charts_cover_every_collector(shared: RunningAgent) -> None:
    charts = shared.get("/api/v1/charts").json()["charts"]
    for cid in (
        "system.cpu",
        "cpu.cpu0",
        "system.load",
        "system.ram",
        "mem.swap",
        "disk_space._",
        "system.processes",
        "system.active_processes",
        "system.threads",
        "system.uptime",
        "tether.agent_cpu",
        "tether.agent_mem",
    ):
        assert cid in charts, cid
    assert any(c.startswith("net.") for c in charts)
    assert any(c.startswith("net_errors.") for c in charts)
    assert any(c.startswith("disk.") for c in charts)
    one = shared.get("/api/v1/chart", chart="system.ram").json()
    assert one["units"] == "MiB" and set(one["dimensions"]) == {"free", "used", "cached", "buffers"}
    missing = shared.get("/api/v1/chart", chart="no.such")
    assert missing.status_code == 404 and "no.such" in missing.json()["error"]


def test_data_returns_requested_points_with_correct_values(shared: RunningAgent) -> None:
    # Uptime grows by exactly one per second: a deterministic chart to check values.
    r = shared.get("/api/v1/data", chart="system.uptime", after=-4, points=4).json()
    rows = r["result"]["data"]
    assert r["result"]["labels"] == ["time", "uptime"]
    assert len(rows) == r["points"] == 4
    stamps = [row[0] for row in rows]
    assert stamps == sorted(stamps, reverse=True) and stamps[0] - stamps[-1] == 3
    for newer, older in itertools.pairwise(rows):
        # One second apart, give or take scheduling delay on a loaded test machine.
        assert newer[1] - older[1] == pytest.approx(1.0, abs=0.3)
    # Two points of two seconds each: averages and sums of the same raw values.
    avg = shared.get(
        "/api/v1/data", chart="system.uptime", after=-4, before=stamps[0], points=2
    ).json()["result"]["data"]
    total = shared.get(
        "/api/v1/data", chart="system.uptime", after=-4, before=stamps[0], points=2, group="sum"
    ).json()["result"]["data"]
    assert [row[0] for row in avg] == [stamps[0], stamps[2]]
    assert avg[0][1] == pytest.approx((rows[0][1] + rows[1][1]) / 2, abs=1e-6)
    assert total[1][1] == pytest.approx(rows[2][1] + rows[3][1], abs=1e-6)
    # CSV carries the same numbers.
    csv = (
        shared.get(
            "/api/v1/data",
            chart="system.uptime",
            after=-4,
            before=stamps[0],
            points=4,
            format="csv",
        )
        .text.strip()
        .splitlines()
    )
    assert csv[0] == "time,uptime"
    assert [int(line.split(",")[0]) for line in csv[1:]] == stamps
    bad = shared.get("/api/v1/data", chart="system.uptime", group="median")
    assert bad.status_code == 400 and "group" in bad.json()["error"]


def test_cpu_values_are_percentages(shared: RunningAgent) -> None:
    rows = shared.get("/api/v1/data", chart="system.cpu", after=-3).json()["result"]["data"]
    for row in rows:
        total = sum(v for v in row[1:] if v is not None)
        assert 0 <= total <= 100.01


def test_prometheus_can_parse_allmetrics(shared: RunningAgent) -> None:
    r = shared.get("/api/v1/allmetrics", format="prometheus")
    assert r.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(r.text))
    samples = [s for f in families for s in f.samples]
    assert len(samples) > 20
    uptime = [s for s in samples if s.labels.get("chart") == "system.uptime"]
    assert uptime and uptime[0].value > 0
    assert all(f.type == "gauge" for f in families)


def test_dashboard_and_vendored_assets_are_served(shared: RunningAgent) -> None:
    page = shared.get("/")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    assert "http" not in page.text.split("<footer>")[0].replace('"http-equiv', "")
    js = shared.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert js.status_code == 200 and "uPlot" in js.text
    assert shared.get("/static/agent/dashboard.js").status_code == 200


def test_alarms_list_default_alerts(shared: RunningAgent) -> None:
    body = shared.get("/api/v1/alarms", all="").json()
    names = {a["name"] for a in body["alarms"].values()}
    assert {"cpu_usage", "ram_in_use", "disk_space_usage"} <= names
    assert all(
        a["status"] in ("UNDEFINED", "CLEAR", "WARNING", "CRITICAL")
        for a in body["alarms"].values()
    )


def test_cli_ping_and_aclk_state(shared: RunningAgent) -> None:
    ping = shared.cli("ping")
    assert ping.returncode == 0 and ping.stdout.strip() == "pong"
    state = shared.cli("aclk-state", "json")
    assert state.returncode == 0
    assert '"connected": false' in state.stdout and '"claimed": false' in state.stdout
    unknown = shared.cli("frobnicate")
    assert unknown.returncode == 1 and "unknown command" in unknown.stderr


def test_control_socket_is_private(shared: RunningAgent) -> None:
    sock = shared.paths.control_socket
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o750


def test_cli_says_when_agent_is_not_running(tmp_path: os.PathLike[str]) -> None:
    r = subprocess.run(
        [command("tether-cli"), "--prefix", str(tmp_path), "ping"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
        check=False,
    )
    assert r.returncode == 2
    assert "not running" in r.stderr and str(tmp_path) in r.stderr


def test_guid_persists_and_shutdown_is_graceful(start_agent: AgentLauncher) -> None:
    first = start_agent()
    guid = first.info()["uid"]
    r = first.cli("shutdown-agent")
    assert r.returncode == 0
    assert first.proc.wait(timeout=15) == 0
    assert not first.paths.control_socket.exists()
    second = start_agent(prefix=first.prefix)
    assert second.info()["uid"] == guid
    assert second.stop() == 0  # SIGTERM is a clean stop too
    assert "received SIGTERM" in second.log_text()


def test_failing_collector_does_not_stop_the_others(start_agent: AgentLauncher) -> None:
    a = start_agent(config={"debug": {"failing collector": "yes"}})

    def last_entry() -> int:
        return int(a.get("/api/v1/chart", chart="system.uptime").json().get("last_entry", 0))

    a.wait_for(lambda: a.get("/api/v1/chart", chart="system.uptime").status_code == 200)
    start = last_entry()
    a.wait_for(lambda: last_entry() >= start + 3, what="uptime to keep updating")
    info = a.info()
    assert "failing" in info["collector_errors"]
    assert "on purpose" in info["collector_errors"]["failing"]
    # Logged once, not once per second.
    assert a.log_text().count("collector failing failed") == 1
    assert a.get("/api/v1/chart", chart="system.cpu").json()["last_entry"] >= start + 3


def test_sighup_reopens_the_log(start_agent: AgentLauncher) -> None:
    a = start_agent()
    log = a.paths.error_log
    rotated = log.with_name("error.log.1")
    log.rename(rotated)
    a.proc.send_signal(signal.SIGHUP)
    a.wait_for(log.exists, what="a new error.log after SIGHUP")
    a.wait_for(lambda: "reopened" in log.read_text(), what="the reopen line")
    assert a.cli("reload-health").returncode == 0
    a.wait_for(lambda: "health configuration reloaded" in log.read_text())
    assert "health configuration reloaded" not in rotated.read_text()
    assert a.proc.poll() is None


def test_allow_connections_from_rejects_others(start_agent: AgentLauncher) -> None:
    denied = start_agent(config={"web": {"allow connections from": "10.* 192.168.*"}})
    r = denied.get("/api/v1/info")
    assert r.status_code == 403 and "allow connections from" in r.text
    allowed = start_agent(config={"web": {"allow connections from": "localhost"}})
    assert allowed.get("/api/v1/info").status_code == 200


def test_reload_claiming_state_follows_cloud_d(start_agent: AgentLauncher) -> None:
    a = start_agent()
    cloud = a.paths.cloud_dir
    cloud.mkdir(parents=True, exist_ok=True)
    node = "0e0b7a2c-5d4e-4f6a-9b8c-1d2e3f405162"
    (cloud / "claimed_id").write_text(node + "\n")
    (cloud / "cloud.conf").write_text(
        "[global]\n    enabled = no\n    cloud base url = https://cloud.example:8443\n"
    )
    r = a.cli("reload-claiming-state")
    assert r.returncode == 0 and node in r.stdout
    info = a.info()
    assert info["agent-claimed"] is True and info["claim-id"] == node
    assert info["cloud-enabled"] is False
    assert info["cloud"]["base_url"] == "https://cloud.example:8443"


def test_reload_health_applies_new_levels(start_agent: AgentLauncher) -> None:
    low = {
        "ram warning": "0.001",
        "ram warning clear": "0.0005",
        "ram critical": "99.9",
        "ram critical clear": "99.8",
        "ram window": "2",
        "check every": "1",
    }
    a = start_agent(config={"health": low})

    def ram_status() -> str:
        alarms = a.get("/api/v1/alarms", all="").json()["alarms"]
        return str(alarms.get("system.ram.ram_in_use", {}).get("status"))

    a.wait_for(lambda: ram_status() == "WARNING", what="RAM warning")
    active = a.get("/api/v1/alarms").json()
    assert "system.ram.ram_in_use" in active["alarms"]
    text = a.paths.config_file.read_text().replace("ram warning = 0.001", "ram warning = 99.5")
    text = text.replace("ram warning clear = 0.0005", "ram warning clear = 99")
    a.paths.config_file.write_text(text)
    assert a.cli("reload-health").returncode == 0
    a.wait_for(lambda: ram_status() == "CLEAR", what="RAM to clear after reload")
    log = [t for t in a.get("/api/v1/alarm_log").json() if t["name"] == "ram_in_use"]
    assert [(t["old_status"], t["status"]) for t in log[:2]] == [
        ("WARNING", "CLEAR"),
        ("UNDEFINED", "WARNING"),
    ]


def test_read_and_write_config(start_agent: AgentLauncher) -> None:
    a = start_agent(config={"global": {"update every": "1"}})
    r = a.cli("read-config")
    assert r.returncode == 0 and "[web]" in r.stdout and "default port = 19999" in r.stdout
    a.paths.config_file.unlink()
    w = a.cli("write-config")
    assert w.returncode == 0 and str(a.paths.config_file) in w.stdout
    assert "bind to = 127.0.0.1" in a.paths.config_file.read_text()


def test_unwritable_guid_names_file_and_rights(tmp_path: Path) -> None:
    # The registry directory cannot be created (a file sits where it belongs):
    # the agent must stop and name the GUID file, not fail somewhere later.
    # (Tests run as root, so plain permission bits would not stop the write.)
    lib = tmp_path / "var/lib/tether"
    lib.mkdir(parents=True)
    (lib / "registry").write_text("not a directory\n")
    r = subprocess.run(
        [command("tether-agent"), "-D", "--prefix", str(tmp_path), "--port", "1"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=False,
    )
    assert r.returncode == 18, r.stderr
    guid_file = tmp_path / "var/lib/tether/registry/tether.public.unique.id"
    assert "Failed to write new machine GUID" in r.stderr
    assert f"can write to {guid_file}" in r.stderr
    assert "Failed to write new machine GUID" in (tmp_path / "var/log/tether/error.log").read_text()


def test_unknown_w_subcommand_is_a_usage_error(tmp_path: os.PathLike[str]) -> None:
    r = subprocess.run(
        [command("tether-agent"), "--prefix", str(tmp_path), "-W", "bogus"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
        check=False,
    )
    assert r.returncode == 1 and "unknown -W sub-command" in r.stderr


def test_port_in_use_is_named(shared: RunningAgent, tmp_path: os.PathLike[str]) -> None:
    r = subprocess.run(
        [
            command("tether-agent"),
            "-D",
            "--prefix",
            str(tmp_path),
            "--port",
            str(shared.port),
            "-c",
            str(shared.paths.config_file),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=False,
    )
    assert r.returncode == 1
    assert f"port {shared.port}" in r.stderr and "in use" in r.stderr


def test_second_agent_on_same_prefix_is_refused(shared: RunningAgent) -> None:
    guid = shared.info()["machine_guid"]
    started = shared.log_text().count(" started (pid ")
    # Refused, not left waiting for the first to stop: it exits by itself (the
    # timeout only bounds a hang).
    r = subprocess.run(
        [command("tether-agent"), "-D", "--prefix", str(shared.prefix), "--port", "0"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=False,
    )
    assert r.returncode == 1 and "already running" in r.stderr
    # It never started serving, and the first agent keeps its socket and identity.
    assert shared.log_text().count(" started (pid ") == started
    assert shared.cli("ping").returncode == 0
    assert shared.info()["machine_guid"] == guid


def test_run_as_user_drops_root(start_agent: AgentLauncher) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can switch to another user")
    import shutil
    import tempfile

    import psutil

    prefix = Path(tempfile.mkdtemp(prefix="tether-runas-"))
    try:
        prefix.chmod(0o755)
        a = start_agent(prefix=prefix, config={"global": {"run as user": "nobody"}})
        a.wait_for(
            lambda: psutil.Process(a.proc.pid).uids().effective == 65534,
            what="the agent to drop to nobody",
        )
        assert psutil.Process(a.proc.pid).uids().real == 65534
        assert a.paths.control_socket.stat().st_uid == 65534
        assert a.paths.machine_guid_file.stat().st_uid == 65534
        assert a.cli("ping").stdout.strip() == "pong"
        assert a.info()["agent-claimed"] is False
        assert "running as user nobody" in a.log_text()
        assert a.stop() == 0
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def test_flip_returns_oldest_first(shared: RunningAgent) -> None:
    newest = shared.get("/api/v1/data", chart="system.uptime", after=-3).json()
    flipped = shared.get(
        "/api/v1/data", chart="system.uptime", after=-3, before=newest["before"], options="flip"
    ).json()
    assert flipped["result"]["data"] == newest["result"]["data"][::-1]


def test_bind_to_all_interfaces_is_dual_stack(start_agent: AgentLauncher) -> None:
    import socket

    a = start_agent(config={"web": {"bind to": "*"}})
    assert a.get("/api/v1/info").status_code == 200
    if not socket.has_ipv6:
        return
    try:
        with socket.create_connection(("::1", a.port), timeout=2):
            pass
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    import httpx

    with httpx.Client(trust_env=False, timeout=5) as c:
        assert c.get(f"http://[::1]:{a.port}/api/v1/info").status_code == 200


def test_log_lines_carry_utc_timestamps(shared: RunningAgent) -> None:
    import re

    first = shared.log_text().splitlines()[0]
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ: tether INFO", first), first
