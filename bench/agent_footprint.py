"""Run the real tether-agent for a while and print what it costs.

    .venv/bin/python bench/agent_footprint.py [--seconds 60]

Prints the agent's CPU (% of one core, measured from the process's own CPU
times over the run, after a warm-up), its RSS, the number of metrics
(dimensions), the time one collection cycle takes (the agent's own
measurement, chart `tether.collection_time`), and memory per metric: both
computed from the buffers' sizes and measured as the RSS difference between an
agent keeping one hour and one keeping one minute of per-second history.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from tether.agent.storage import MINUTE_SLOTS

BIN = Path(sys.executable).parent
WARMUP = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout: float = 5.0) -> dict:  # type: ignore[type-arg]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def start_agent(
    prefix: Path, conf: str, timeout: float = 20.0
) -> tuple[subprocess.Popen[bytes], int]:
    """A real `tether-agent` under `prefix` with tether.conf `conf`; (process, API port)."""
    path = prefix / "etc/tether/tether.conf"
    path.parent.mkdir(parents=True)
    path.write_text(conf)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(
        [str(BIN / "tether-agent"), "-D", "--prefix", str(prefix), "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get(port, "/api/v1/info")
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the agent did not start; run it by hand to see why")


def start(prefix: Path, history: int) -> tuple[subprocess.Popen[bytes], int]:
    conf = f"[global]\n    history seconds = {history}\n[web]\n    bind to = 127.0.0.1\n"
    return start_agent(prefix, conf)


def cpu_and_rss(proc: psutil.Process, seconds: float) -> tuple[float, int]:
    """The process's CPU (% of one core, from its own CPU times) over the next
    `seconds`, and its RSS at the end."""
    c0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = proc.cpu_times(), time.monotonic()
    cpu = 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)
    return cpu, proc.memory_info().rss


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement time (default 60)")
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        full, full_port = start(Path(tmp) / "hour", 3600)
        small, _ = start(Path(tmp) / "minute", 60)
        try:
            time.sleep(WARMUP)
            p = psutil.Process(full.pid)
            cpu, rss = cpu_and_rss(p, ns.seconds)
            rss_small = psutil.Process(small.pid).memory_info().rss
            info = get(full_port, "/api/v1/info")
            window = int(ns.seconds)
            cyc = get(
                full_port, f"/api/v1/data?chart=tether.collection_time&after=-{window}&points=1"
            )
            cyc_max = get(
                full_port,
                f"/api/v1/data?chart=tether.collection_time&after=-{window}&points=1&group=max",
            )
        finally:
            stop(full)
            stop(small)
    metrics = int(info["metrics-count"])
    computed = 3600 * 8 + 3 * MINUTE_SLOTS * 4
    measured = (rss - rss_small) / metrics / (3600 - 60) * 3600 if metrics else 0.0
    print(f"seconds measured:        {ns.seconds:.0f}")
    print(f"agent CPU:               {cpu:.2f} % of one core (target < 1 %)")
    print(f"agent RSS:               {rss / 2**20:.1f} MiB (target < 60 MiB)")
    print(f"metrics (dimensions):    {metrics} in {info['charts-count']} charts")
    print(
        f"collection cycle:        {cyc['result']['data'][0][1]:.2f} ms average, "
        f"{cyc_max['result']['data'][0][1]:.2f} ms max"
    )
    print(
        f"memory per metric:       {computed / 1024:.1f} KiB computed (1 h x 1 s float64 + 24 h x "
        f"1 min min/max/avg float32), {measured / 1024:.1f} KiB measured (RSS difference, "
        f"1 h vs 1 min history, scaled to 1 h)"
    )
    print(f"RSS with 1 min history:  {rss_small / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
