"""Failover at scale: kill -9 one of two Cloud processes behind HAProxy while
they hold N simulated links (default 5,000), and print the figures.

    .venv/bin/python bench/failover_scale.py [--nodes 5000]

The scenario is tests/link/test_failover_scale.py's (its own PostgreSQL,
NATS and HAProxy, two Cloud processes, bench/simulator.py's fleet linked
through the balancer; its assertions hold here too), run at a size that
takes longer than a test should on 2 shared cores. Printed: the time to
link the fleet, the split before the kill, the seconds until every node was
live on the survivor, the survivor's /api/ready checks during the storm
(count, slowest), the test's verdict and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("nodes linked", "before the kill", "after kill -9", "/api/ready", "passed", "failed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5000)
    a = ap.parse_args()
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    t0 = time.monotonic()
    run = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "pytest"),
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "--timeout",
            "0",  # minutes, not the tests' bound
            str(ROOT / "tests" / "link" / "test_failover_scale.py"),
        ],
        cwd=ROOT,
        env={**os.environ, "TETHER_FAILOVER_NODES": str(a.nodes)},
        capture_output=True,
        text=True,
        check=False,
    )
    for line in run.stdout.splitlines():
        if any(f in line for f in FIGURES) and "INFO" not in line:
            print(line.strip())
    if run.returncode != 0:
        print("\n".join(run.stdout.splitlines()[-40:]), file=sys.stderr)
    print(f"whole run {time.monotonic() - t0:.0f} s")
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
