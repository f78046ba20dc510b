"""Reconnect storm: restart the Cloud under N linked agents, 3 times; time until all are live again.

    .venv/bin/python bench/reconnect_storm.py [--nodes 1000] [--runs 3]

A real Cloud (`tether-cloud serve`) and N simulated nodes (bench/simulator.py:
real claim, real challenge/answer, resume tokens, real TLS WebSocket, and the
agent's own jittered backoff from `tether.protocol.backoff`).

The baseline, measured in the same run on the same machine: a bare WebSocket
server (bench/bare_ws.py: uvicorn, uvloop, websockets-sansio, the Cloud's TLS
certificate; no database, no auth) taking N links from a client like the
simulator's. It runs before the fleet's first link-up and before each storm
(with the fleet linked and idle, as during the storm's start).

First the fleet links for the first time (claimed nodes coming up: challenge,
answer, WebSocket). Then, `--runs` times: SIGTERM to the Cloud (a graceful
stop: it closes the links itself, with its reconnect spread and a resume
token each), `tether-cloud serve` again on the same port and data, and wait
until every node is linked again and the Cloud's node API says all N are
`live`. Printed for the first link-up and each storm: the stop time, the
time to all live (from SIGTERM) and its ratio to the bare server's time to
link N, the connect-rate curve (links per second), cut answers, refused and
failed attempts, how links were authenticated (resume token or challenge),
Cloud CPU per link set up and its ratio to the bare server's, the shortest
backoff chosen, and the Cloud's peak RSS during the storm against its steady
state with N idle links.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import psutil

HERE = Path(__file__).resolve().parent


@dataclass
class Bare:
    seconds: float
    cpu_per_link: float  # server CPU seconds per link
    errors: int


def bare_baseline(cloud: harness.Cloud, n: int) -> Bare:
    """A bare WebSocket server with the Cloud's certificate takes n links."""
    port = harness.free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "bare_ws.py"),
            "serve",
            "--port",
            str(port),
            "--cert",
            str(cloud.data_dir / "server.pem"),
            "--key",
            str(cloud.data_dir / "server-key.pem"),
        ],
        env=harness.clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the bare WebSocket server did not start") from None
                time.sleep(0.05)
        cpu0 = _cpu(server.pid)
        client = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "bare_ws.py"),
                "connect",
                "--url",
                f"wss://127.0.0.1:{port}/",
                "--ca",
                cloud.ca_file,
                "-n",
                str(n),
            ],
            env=harness.clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert client.stdout is not None
        line = client.stdout.readline()
        if not line:
            raise SystemExit("the bare WebSocket client exited early")
        got = json.loads(line)
        cpu = _cpu(server.pid) - cpu0
        return Bare(float(got["seconds"]), cpu / max(1, got["n"]), int(got["errors"]))
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait(10)


@dataclass
class Storm:
    label: str
    stop: float | None  # SIGTERM to exit
    start: float | None  # serve to first answer
    all_linked: float  # from SIGTERM (or from `go` for the first link-up)
    all_live: float  # ... until the node API says all are live
    bare: Bare
    cpu_per_link: float
    peak_rss: int
    steady_rss: int
    report: dict[str, Any]
    curve: list[int]
    timeline: list[tuple[float, int, float, float]]


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


def _follow(
    cloud: harness.Cloud,
    sim: harness.Simulator,
    n: int,
    t0: float,
    timeout: float,
    rss: list[int],
) -> tuple[float, dict[str, Any], list[tuple[float, int, float, float]]]:
    """Poll the simulator until every node is linked; (wall time, report, timeline)."""
    report: dict[str, Any] = {}
    timeline: list[tuple[float, int, float, float]] = []
    while time.time() - t0 < timeout:
        sim.send("report")
        report = sim.wait("report", 30)
        rss.append(cloud.rss())
        timeline.append((time.time() - t0, report["linked"], cloud.cpu_seconds(), _cpu(sim.pid)))
        if report["linked"] + report["stopped"] == n:
            return time.time(), report, timeline
        time.sleep(0.25)
    raise SystemExit(
        f"only {report.get('linked')}/{n} nodes were linked after {timeout:.0f} s; "
        f"errors: {report.get('errors')}"
    )


def _curve(connects: list[float], t0: float) -> list[int]:
    buckets: dict[int, int] = {}
    for t in connects:
        buckets[int((t - t0) // 1)] = buckets.get(int((t - t0) // 1), 0) + 1
    if not buckets:
        return []
    return [buckets.get(s, 0) for s in range(0, max(buckets) + 1)]


def print_storm(s: Storm, n: int) -> None:
    r = s.report
    print(f"\n== {s.label} ({n} nodes; load average {_load()})")
    if s.stop is not None:
        print(
            f"  Cloud stop (SIGTERM to exit): {s.stop:.2f} s; start to first answer {s.start:.2f} s"
        )
    print(
        f"  all linked: {s.all_linked:.2f} s; all `live` in the node API: {s.all_live:.2f} s"
        + (" (from SIGTERM)" if s.stop is not None else "")
    )
    print(
        f"  bare WebSocket server, same run: {n} links in {s.bare.seconds:.2f} s "
        f"({s.bare.errors} failed attempts); ratio {s.all_live / s.bare.seconds:.2f}x"
    )
    print(
        f"  Cloud CPU per link set up: {harness.ms(s.cpu_per_link)} (bare "
        f"{harness.ms(s.bare.cpu_per_link)}; ratio {s.cpu_per_link / s.bare.cpu_per_link:.2f}x)"
    )
    print(
        f"  links by resume token {r['resumed']}, by challenge {r['challenged']}; resume "
        f"tokens refused {r['resume_refused']}; cut answers {r['cut_answers']}"
    )
    print(f"  upgrades refused (HTTP status: count): {r['refused'] or 0}")
    print(f"  failed attempts (kind: count): {r['errors'] or 0}")
    print(f"  link closes seen by the nodes (code: count): {r['closes'] or 0}")
    delays = r["delays"]
    if delays:
        print(
            f"  backoff delays chosen: {len(delays)}, shortest {min(delays):.3f} s, "
            f"p50 {harness.percentile(delays, 50):.2f} s, longest {max(delays):.2f} s"
        )
    print(
        f"  Cloud RSS: peak {harness.mb(s.peak_rss)} during, steady state "
        f"{harness.mb(s.steady_rss)} with {n} idle links; ratio {s.peak_rss / s.steady_rss:.2f}x"
    )
    print("  links per second (connect-rate curve):")
    print("    " + " ".join(str(c) for c in s.curve))
    last = s.timeline[0]
    print("  timeline (every ~5 s): nodes linked, CPU % of a core")
    for row in s.timeline[1:]:
        t, k, cpu, sim_cpu = row
        if t - last[0] >= 5 or row is s.timeline[-1]:
            dt = max(1e-6, t - last[0])
            print(
                f"    {t:7.1f} s {k:>7} linked   Cloud {(cpu - last[2]) / dt * 100:4.0f} %   "
                f"simulator {(sim_cpu - last[3]) / dt * 100:4.0f} %"
            )
            last = row


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    ap.add_argument("--runs", type=int, default=3, help="storms, back to back (default 3)")
    ap.add_argument("--timeout", type=float, default=300, help="give up after (default 300 s)")
    ap.add_argument("--keep-log", metavar="FILE", help="copy the Cloud's log here at the end")
    ap.add_argument(
        "--no-resume", action="store_true", help="nodes without resume tokens (older agents)"
    )
    ap.add_argument(
        "--reuse-keys",
        action="store_true",
        help="fewer cached RSA keys than nodes: register each for several nodes (simulator.py)",
    )
    a = ap.parse_args()
    harness.raise_nofile()
    print(f"machine: {harness.machine()}")
    n = a.nodes
    storms: list[Storm] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-storm-") as tmp:
        cloud = harness.prepare_cloud(Path(tmp))
        cloud.start()
        extra = ["--concurrency", "100", "--wait-go"]
        extra += ["--no-resume"] if a.no_resume else []
        extra += ["--reuse-keys"] if a.reuse_keys else []
        sim = harness.Simulator(cloud, n, *extra)
        try:
            sim.wait("keys", 3600)
            claimed = sim.wait("claimed", 900)
            print(f"claimed {n} nodes in {claimed['seconds']:.1f} s")
            bare = bare_baseline(cloud, n)
            print(f"bare WebSocket server: {n} links in {bare.seconds:.2f} s")

            # The first link-up: claimed nodes coming up for the first time.
            rss: list[int] = []
            cpu0 = cloud.cpu_seconds()
            t0 = time.time()
            sim.send("go")
            t_linked, report, timeline = _follow(cloud, sim, n, t0, a.timeout * 3, rss)
            t_live = _wait_api_live(cloud, n - report["stopped"], 120)
            cpu = cloud.cpu_seconds() - cpu0
            time.sleep(3)
            steady = cloud.rss()
            storms.append(
                Storm(
                    "first link-up",
                    None,
                    None,
                    t_linked - t0,
                    t_live - t0,
                    bare,
                    cpu / n,
                    max(rss),
                    steady,
                    report,
                    _curve(report["connects"], t0),
                    timeline,
                )
            )
            print_storm(storms[-1], n)
            for run in range(1, a.runs + 1):
                # Links up 60 s reset the nodes' backoff (as the agent's): each
                # storm then starts from the same state, as after a long uptime.
                time.sleep(62)
                bare = bare_baseline(cloud, n)
                steady = cloud.rss()
                sim.send("mark")
                sim.wait("marked", 30)
                t_stop = time.time()
                stop_took = cloud.stop()
                start_took = cloud.start()
                cpu0 = cloud.cpu_seconds()
                rss = []
                t_linked, report, timeline = _follow(cloud, sim, n, t_stop, a.timeout, rss)
                t_live = _wait_api_live(cloud, n - report["stopped"], 120)
                cpu = cloud.cpu_seconds() - cpu0
                storms.append(
                    Storm(
                        f"storm {run}",
                        stop_took,
                        start_took,
                        t_linked - t_stop,
                        t_live - t_stop,
                        bare,
                        cpu / n,
                        max(rss),
                        steady,
                        report,
                        _curve(report["connects"], t_stop),
                        timeline,
                    )
                )
                print_storm(storms[-1], n)
        finally:
            sim.stop()
            cloud.stop()
            if a.keep_log:
                shutil.copy(cloud.log_file, a.keep_log)

    print(f"\nsummary, {n} nodes (load average now {_load()}):")
    print(
        "  run            stop    all live  bare     ratio  CPU/link  bare CPU  ratio  "
        "cut  refused  resumed  peak/steady RSS"
    )
    for s in storms:
        r = s.report
        refused = sum(r["refused"].values()) if r["refused"] else 0
        print(
            f"  {s.label:<13} {'' if s.stop is None else f'{s.stop:5.2f} s':>7} "
            f"{s.all_live:7.2f} s {s.bare.seconds:6.2f} s {s.all_live / s.bare.seconds:5.2f}x "
            f"{s.cpu_per_link * 1000:6.2f} ms {s.bare.cpu_per_link * 1000:6.2f} ms "
            f"{s.cpu_per_link / s.bare.cpu_per_link:5.2f}x {r['cut_answers']:>4} {refused:>8} "
            f"{r['resumed']:>8}  {s.peak_rss / s.steady_rss:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
