"""The Cloud with the real agent: claim -> live within a second -> current CPU
through the relay -> no metric value in the database or the Cloud's log ->
a frozen agent goes offline within 1.5 keepalive intervals and comes back ->
a killed agent goes offline at once."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, poll

KEEPALIVE = 1.0


def state_of(cloud: Cloud, node_id: str) -> dict[str, Any]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def database_text(cloud: Cloud) -> str:
    """Every row of every table, as text (SQLite or PostgreSQL alike)."""
    engine = sa.create_engine(cloud.database_url)
    out: list[str] = []
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)
                for row in conn.execute(sa.select(reflected)):
                    out.append(repr(tuple(row)))
    finally:
        engine.dispose()
    if cloud.database_url.startswith("sqlite:///"):
        db = Path(cloud.database_url.removeprefix("sqlite:///"))
        for f in (db, db.with_name(db.name + "-wal")):
            if f.exists():
                out.append(f.read_bytes().decode("latin-1"))
    return "\n".join(out)


def test_agent_claims_goes_live_and_is_read_through_the_cloud_with_no_value_stored(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud("--keepalive", f"{KEEPALIVE:g}")
    agent = start_agent()
    cloud_dir = agent.paths.cloud_dir
    cloud_dir.mkdir(parents=True, exist_ok=True)
    assert cloud.ca_file
    shutil.copy(cloud.ca_file, agent.paths.cloud_fullchain_file)
    claim = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(agent.prefix),
            f"-token={cloud.claim_token}",
            f"-rooms={cloud.room_ids[0]}",
            f"-url={cloud.url}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    claimed = time.monotonic()
    assert claim.returncode == 0, claim.stdout + claim.stderr
    node_id = agent.paths.claimed_id_file.read_text().strip()
    poll(lambda: state_of(cloud, node_id)["state"] == "live", 10, "live", every=0.02)
    live_after = time.monotonic() - claimed
    print(f"live {live_after:.3f} s after tether-claim returned")
    # (The target, under 1 s, is measured by bench/, not asserted here.)

    # Current CPU, through the Cloud.
    with cloud.client() as c:
        auth = {"Authorization": f"Bearer {cloud.api_token}"}

        def cpu() -> Any:
            r = c.get(
                f"/api/v2/nodes/{node_id}/data",
                params={"chart": "system.cpu", "after": -5, "points": 5},
                headers=auth,
            )
            assert r.status_code in (200, 404), r.text  # 404 until the first samples
            return r.status_code == 200 and len(r.json()["result"]["data"]) >= 2 and r.json()

        data = poll(cpu, 10, "system.cpu through the Cloud", every=0.25)
        assert data["id"] == "system.cpu" and data["result"]["data"]
        metrics = c.get(f"/api/v2/nodes/{node_id}/allmetrics", headers=auth)
        assert metrics.status_code == 200 and "system" in metrics.text
    direct = agent.get("/api/v1/info").json()
    info = state_of(cloud, node_id)
    assert info["hostname"] == direct["hostname"]
    assert info["agent_version"]

    # No metric value reached the database or the log: look for the distinctive
    # values (6+ significant characters) the Cloud just relayed.
    values = {repr(v) for row in data["result"]["data"] for v in row[1:] if isinstance(v, float)}
    values |= set(re.findall(r"(?<![\w.])(\d+\.\d{4,})(?![\w.])", metrics.text))
    distinctive = {v for v in values if len(v.replace(".", "").lstrip("0")) >= 6}
    assert len(distinctive) >= 3, values
    stored, logged = database_text(cloud), cloud.log_file.read_text()
    for v in distinctive:
        assert v not in stored, f"metric value {v} found in the database"
        assert v not in logged, f"metric value {v} found in the Cloud's log"

    # Frozen agent (no pongs, no FIN): offline within 1.5 keepalive intervals.
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        poll(lambda: state_of(cloud, node_id)["state"] == "offline", 10, "offline", every=0.05)
        offline_after = time.monotonic() - stopped
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    print(f"offline {offline_after:.3f} s after the agent froze (keepalive {KEEPALIVE:g} s)")
    assert offline_after < 1.5 * KEEPALIVE + 0.5
    node = state_of(cloud, node_id)
    assert "link lost" in node["state_cause"]
    # Thawed, it reconnects (through its backoff) and is live again.
    poll(lambda: state_of(cloud, node_id)["state"] == "live", 15, "live again", every=0.1)

    # Killed: the kernel closes the socket, the node is offline at once.
    agent.proc.kill()
    agent.proc.wait(5)
    killed = time.monotonic()
    poll(lambda: state_of(cloud, node_id)["state"] == "offline", 5, "offline", every=0.02)
    print(f"offline {time.monotonic() - killed:.3f} s after SIGKILL")
    events = [(e["kind"], e["state"]) for e in state_of(cloud, node_id)["events"]]
    assert events.count(("state", "live")) >= 2 and events.count(("state", "offline")) >= 2
