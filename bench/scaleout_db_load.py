"""PostgreSQL load per link: scale-out mode (PostgreSQL + NATS) against one
process on PostgreSQL (the baseline), in the same run.

For each mode: a fresh database, `tether-cloud quickstart --no-serve`, then
`tether-cloud serve` (with `--nats-url` in scale-out mode), N simulated nodes
(bench/simulator.py) claimed first; then, from PostgreSQL's own counters
(`pg_stat_database`): transactions and rows written while all N link (the
storm), and per second while they sit idle (the steady state), and the
Cloud's connections. Prints per-link figures, the ratio to the baseline and
the load average. These feed the sizing table in docs/operations.md.

    .venv/bin/python bench/scaleout_db_load.py [-n 300] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from harness import BIN, Cloud, Simulator, clean_env, prepare_cloud, raise_nofile
from sqlalchemy.engine import make_url

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/test"
NATS = "nats://127.0.0.1:4222"
COUNTERS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")


def stats(admin: str, name: str) -> dict[str, int]:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            f"SELECT {', '.join(COUNTERS)}, numbackends FROM pg_stat_database "  # noqa: S608
            "WHERE datname = %s",
            (name,),
        ).fetchone()
    assert row is not None
    return dict(zip((*COUNTERS, "numbackends"), (int(v) for v in row), strict=True))


def wait_ready(cloud: Cloud, timeout: float = 180.0) -> None:
    """Until the Cloud answers GET /api/ready with 200 (it serves and has NATS)."""
    deadline = time.monotonic() + timeout
    ctx = cloud.ssl_context()
    while time.monotonic() < deadline:
        assert cloud.proc is not None
        if cloud.proc.poll() is not None:
            raise SystemExit(f"tether-cloud serve exited:\n{cloud.log_tail()}")
        try:
            with (
                socket.create_connection(("127.0.0.1", cloud.port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"GET /api/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if tls.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"tether-cloud serve was not ready in {timeout:.0f} s")


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in COUNTERS}


def run_mode(base: Any, admin: str, nodes: int, idle: float, scale_out: bool) -> dict[str, Any]:
    name = f"tether_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    top = Path(tempfile.mkdtemp(prefix="tether-dbload-"))
    proc: subprocess.Popen[bytes] | None = None
    sim: Simulator | None = None
    try:
        cloud: Cloud = prepare_cloud(top, database_url=url)
        extra = ["--nats-url", NATS, "--nats-subject-prefix", "b" + name[-8:]] if scale_out else []
        with open(cloud.log_file, "ab") as log:
            proc = subprocess.Popen(
                [
                    str(BIN / "tether-cloud"), "serve", "--host", "127.0.0.1",
                    "--port", str(cloud.port), "--data-dir", str(top),
                    "--database-url", url, *extra,
                ],
                stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
            )  # fmt: skip
        cloud.proc = proc
        wait_ready(cloud)
        sim = Simulator(cloud, nodes, "--wait-go")
        sim.wait("claimed", 600)
        time.sleep(3)  # the claims' writes settle before the storm is counted
        before = stats(admin, name)
        t0 = time.monotonic()
        sim.send("go")
        linked = sim.wait("linked", 900)
        storm_s = time.monotonic() - t0
        time.sleep(2)
        after_storm = stats(admin, name)
        time.sleep(idle)
        after_idle = stats(admin, name)
        return {
            "mode": "scale-out (PostgreSQL + NATS)" if scale_out else "one process (PostgreSQL)",
            "linked": linked["n"],
            "storm_s": storm_s,
            "storm": delta(after_storm, before),
            "idle": delta(after_idle, after_storm),
            "idle_s": idle,
            "connections": after_idle["numbackends"],
        }
    finally:
        if sim is not None:
            sim.stop()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default=os.environ.get("TETHER_TEST_PG", DEFAULT_PG))
    ap.add_argument("-n", "--nodes", type=int, default=300)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    a = ap.parse_args()
    raise_nofile()
    base = make_url(a.database_url)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    results = [run_mode(base, admin, a.nodes, a.idle_seconds, s) for s in (False, True)]
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores")
    baseline = results[0]
    for r in results:
        n = max(1, r["linked"])
        per_link = {k: v / n for k, v in r["storm"].items()}
        idle_rate = {k: v / r["idle_s"] for k, v in r["idle"].items()}
        ratio = r["storm"]["xact_commit"] / max(1, baseline["storm"]["xact_commit"])
        print(
            f"{r['mode']}: {r['linked']} linked in {r['storm_s']:.1f} s; per link: "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_link.items())
            + f" (transactions {ratio:.2f}x the baseline); idle per second: "
            + ", ".join(f"{k} {v:.2f}" for k, v in idle_rate.items())
            + f"; connections {r['connections']}"
        )


if __name__ == "__main__":
    main()
