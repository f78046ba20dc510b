"""Reconnect storm: restart the Cloud under N linked agents; time until all are live again.

    .venv/bin/python bench/reconnect_storm.py [--nodes 1000]

A real Cloud (`tether-cloud serve`) and N simulated nodes (bench/simulator.py:
real claim, real challenge/answer, real TLS WebSocket, and the agent's own
jittered backoff from `tether.protocol.backoff`). Once all N are live, the
Cloud is stopped with SIGTERM (a graceful stop: it closes the links itself)
and started again on the same port and data. Prints: how long the stop and
start took; the time until every node is linked again and until the Cloud's
node API says all N are `live`; the spread of the reconnects (per-second
histogram from the moment the Cloud was back); the backoff delays the nodes
chose (the shortest proves nobody reconnects at 0 s); and the close codes
the nodes saw.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import harness
import psutil


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    ap.add_argument("--timeout", type=float, default=300, help="give up after (default 300 s)")
    ap.add_argument("--keep-log", metavar="FILE", help="copy the Cloud's log here at the end")
    a = ap.parse_args()
    harness.raise_nofile()
    print(f"machine: {harness.machine()}")
    n = a.nodes
    with tempfile.TemporaryDirectory(prefix="tether-bench-storm-") as tmp:
        cloud = harness.prepare_cloud(Path(tmp))
        cloud.start()
        sim = harness.Simulator(cloud, n, "--concurrency", "100")
        try:
            sim.wait("keys", 1800)
            claimed = sim.wait("claimed", 600)
            print(f"claimed {n} nodes in {claimed['seconds']:.1f} s")
            linked = sim.wait(
                "linked",
                900,
                on=lambda m: print(
                    f"  {m['linked']} linked after {m['seconds']:.0f} s", flush=True
                ),
            )
            print(f"all {n} linked in {linked['seconds']:.1f} s")
            if linked["stopped"]:
                print(
                    f"  !! {linked['stopped']} nodes were told to stop for good while linking "
                    f"(close codes {linked['closes']}); they stay out of the test"
                )
            expect = n - linked["stopped"]
            _wait_api_live(cloud, expect, 60)
            sim.send("mark")
            sim.wait("marked", 30)

            t_stop = time.time()
            stop_took = cloud.stop()
            t_down = time.time()
            start_took = cloud.start()
            t_up = time.time()
            print(
                f"Cloud restarted: SIGTERM to exit {stop_took:.2f} s, start to first answer "
                f"{start_took:.2f} s"
            )

            report: dict = {}  # type: ignore[type-arg]
            t_all_linked = None
            # (seconds since up, linked, Cloud CPU s, simulator CPU s)
            timeline: list[tuple[float, int, float, float]] = []
            while time.time() - t_stop < a.timeout:
                sim.send("report")
                report = sim.wait("report", 30)
                timeline.append(
                    (time.time() - t_up, report["linked"], cloud.cpu_seconds(), _cpu(sim.pid))
                )
                if report["linked"] + report["stopped"] == n:
                    t_all_linked = time.time()
                    break
                time.sleep(0.25)
            if t_all_linked is None:
                raise SystemExit(
                    f"only {report.get('linked')}/{n} nodes were back after "
                    f"{a.timeout:.0f} s; errors: {report.get('errors')}"
                )
            t_all_live = _wait_api_live(cloud, n - report["stopped"], 120)
        finally:
            sim.stop()
            cloud.stop()
            if a.keep_log:
                shutil.copy(cloud.log_file, a.keep_log)

    connects = sorted(report["connects"])
    delays = report["delays"]
    print(f"\n{n} nodes, Cloud restart (SIGTERM, then serve again):")
    print(
        f"  all linked again (simulator): {t_all_linked - t_stop:.2f} s after SIGTERM, "
        f"{t_all_linked - t_up:.2f} s after the Cloud answered again"
    )
    print(f"  all `live` in the Cloud's node API: {t_all_live - t_stop:.2f} s after SIGTERM")
    if report["stopped"]:
        print(f"  !! {report['stopped']} nodes stopped for good (terminal close), not back")
    print(f"  link closes seen by the nodes (code: count): {report['closes']}")
    print(f"  connection errors while the Cloud was away: {report['errors']}")
    print(
        f"  backoff delays chosen: {len(delays)}, shortest {min(delays):.3f} s, "
        f"p50 {harness.percentile(delays, 50):.2f} s, longest {max(delays):.2f} s"
    )
    print("  timeline after the Cloud was back (every ~5 s): nodes linked, CPU % of a core")
    last = timeline[0]
    for row in timeline[1:]:
        t, k, cpu, sim_cpu = row
        if t - last[0] >= 5 or k == n - report["stopped"]:
            dt = max(1e-6, t - last[0])
            print(
                f"    {t:7.1f} s {k:>7} linked   Cloud {(cpu - last[2]) / dt * 100:4.0f} %   "
                f"simulator {(sim_cpu - last[3]) / dt * 100:4.0f} %"
            )
            last = row
    early = sum(1 for t in connects if t - t_down < 0.1)
    print(f"  reconnects within 100 ms of the Cloud going down: {early}")
    if connects:
        rel = [t - t_up for t in connects]
        print(
            f"  reconnects after the Cloud was back: first {rel[0]:.2f} s, "
            f"p50 {harness.percentile(rel, 50):.2f} s, p99 {harness.percentile(rel, 99):.2f} s, "
            f"last {rel[-1]:.2f} s"
        )
        print("  reconnects per second after the Cloud was back:")
        buckets: dict[int, int] = {}
        for r in rel:
            buckets[int(r // 1)] = buckets.get(int(r // 1), 0) + 1
        for sec in range(min(buckets), max(buckets) + 1):
            c = buckets.get(sec, 0)
            print(f"    {sec:>4}-{sec + 1:<4} s {c:>6}  {'#' * max(0, round(c * 60 / n))}")
    return 0


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _wait_api_live(cloud: harness.Cloud, n: int, timeout: float) -> float:
    deadline = time.time() + timeout
    states: dict[str, int] = {}
    while time.time() < deadline:
        states = harness.count_live(cloud)
        if states.get("live", 0) == n:
            return time.time()
        time.sleep(0.2)
    raise SystemExit(f"the Cloud's node API shows {states} after {timeout:.0f} s, not {n} live")


if __name__ == "__main__":
    raise SystemExit(main())
