"""Idle links held by ONE Cloud process: memory per link, idle CPU, time to connect.

    .venv/bin/python bench/link_idle.py [--links 1000 5000] [--idle-seconds 30]

For each fleet size N: a fresh Cloud (`tether-cloud serve`, SQLite, the
design's uvicorn settings), N simulated nodes (bench/simulator.py, a separate
process) claimed, then linked. Prints the Cloud's RSS before the links (after
the claims) and with N idle links, the difference per link, the Cloud's CPU
over `--idle-seconds` of idleness (pings both ways every keepalive, as real
agents do), and the time from the first to the N-th HelloAck. 10,000 links
work too (`--links 10000`); the open-files hard limit here (20,000) caps one
process near that.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import harness

FLOOR_KB_PER_LINK = 50.0  # design.md: 527 MB at 10k links
FLOOR_CPU_PER_10K = 7.6  # % of a core at 10k idle links


def run_one(n: int, idle_seconds: float, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-idle-") as tmp:
        cloud = harness.prepare_cloud(Path(tmp))
        cloud.start()
        sim = harness.Simulator(cloud, n, "--wait-go", "--concurrency", str(concurrency))
        try:
            keys = sim.wait("keys", 1800)
            if keys["generated"]:
                print(
                    f"  (generated and cached {keys['generated']} RSA keys "
                    f"in {keys['seconds']:.0f} s)"
                )
            claimed = sim.wait("claimed", 600)
            print(
                f"  claimed {n} nodes in {claimed['seconds']:.1f} s "
                f"({n / claimed['seconds']:.0f} claims/s)"
            )
            time.sleep(3)
            base_rss = cloud.rss()
            setup_cpu0, sim_setup0 = cloud.cpu_seconds(), _cpu(sim.pid)
            sim.send("go")
            linked = sim.wait(
                "linked",
                900,
                on=lambda m: print(
                    f"    {m['linked']} linked after {m['seconds']:.0f} s", flush=True
                ),
            )
            setup_cpu = cloud.cpu_seconds() - setup_cpu0
            sim_setup = _cpu(sim.pid) - sim_setup0
            time.sleep(5)  # let handshake buffers go back to the allocator
            states = harness.count_live(cloud)
            rss = cloud.rss()
            cpu0, sim_cpu0, t0 = cloud.cpu_seconds(), _cpu(sim.pid), time.monotonic()
            time.sleep(idle_seconds)
            elapsed = time.monotonic() - t0
            cpu = (cloud.cpu_seconds() - cpu0) / elapsed * 100
            sim_cpu = (_cpu(sim.pid) - sim_cpu0) / elapsed * 100
            sim.send("report")
            report = sim.wait("report", 30)
        finally:
            sim.stop()
            cloud.stop()
    held = report["linked"]
    per_link = (rss - base_rss) / max(1, held)
    if linked["stopped"]:
        print(
            f"  !! {linked['stopped']} of {n} nodes were told to stop for good while linking "
            f"(close codes seen: {linked['closes']}): the Cloud closed live links as removed"
        )
    print(
        f"  Cloud says: {states}; links still up after the idle period: "
        f"{held}/{n}; drops: {len(report['drops'])}"
    )
    print(
        f"  time until all {n} were linked (or stopped): {linked['seconds']:.1f} s "
        f"({n / linked['seconds']:.0f} links/s, {concurrency} connecting at once); Cloud CPU "
        f"per link set up (challenge, answer, WSS, Hello): {setup_cpu / n * 1000:.1f} ms "
        f"(design floor for 2 TLS connections: about 2.2 ms); the simulator's CPU per link "
        f"(RSA decrypt, 2 TLS client handshakes): {sim_setup / n * 1000:.1f} ms"
    )
    print(
        f"  Cloud RSS: {harness.mb(base_rss)} before links, {harness.mb(rss)} with {held} "
        f"links: {per_link / 1e3:.1f} KB per link (design floor {FLOOR_KB_PER_LINK:.0f} KB, "
        f"ratio {per_link / 1e3 / FLOOR_KB_PER_LINK:.2f})"
    )
    floor_cpu = FLOOR_CPU_PER_10K * n / 10_000
    print(
        f"  Cloud idle CPU over {elapsed:.0f} s: {cpu:.2f} % of a core "
        f"(design floor scaled to {n} links: {floor_cpu:.2f} %); simulator: {sim_cpu:.2f} %"
    )
    return {
        "n": n,
        "rss": rss,
        "base": base_rss,
        "per_link": per_link,
        "cpu": cpu,
        "link_seconds": linked["seconds"],
        "live": states.get("live", 0),
        "stopped": linked["stopped"],
        "setup_ms": setup_cpu / n * 1000,
        "sim_setup_ms": sim_setup / n * 1000,
    }


def _cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--links",
        type=int,
        nargs="+",
        default=[1000, 5000],
        help="fleet sizes, one fresh Cloud each (default 1000 5000)",
    )
    ap.add_argument(
        "--idle-seconds", type=float, default=30.0, help="idle CPU measurement window (default 30)"
    )
    ap.add_argument(
        "--concurrency", type=int, default=50, help="links the simulator opens at once (default 50)"
    )
    a = ap.parse_args()
    harness.raise_nofile()
    print(f"machine: {harness.machine()}")
    rows = []
    for n in a.links:
        print(f"== {n} idle links", flush=True)
        rows.append(run_one(n, a.idle_seconds, a.concurrency))
    print(
        "\n| links | live | stopped (4003) | Cloud RSS | per link | idle CPU | time to link "
        "| Cloud CPU per link setup | simulator CPU per link setup |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['live']:,} | {r['stopped']:,} | {harness.mb(r['rss'])} | "
            f"{r['per_link'] / 1e3:.1f} KB | {r['cpu']:.2f} % | {r['link_seconds']:.1f} s | "
            f"{r['setup_ms']:.1f} ms | {r['sim_setup_ms']:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
