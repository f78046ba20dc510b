"""What a streaming parent costs per child, and what reading a child through it
costs: a real parent agent, simulated children speaking the real stream protocol.

    .venv/bin/python bench/stream_parent.py [--children 200] [--metrics 1000]
        [--baseline 10] [--seconds 20] [--latency-seconds 15] [--history 600]

Starts a real `tether-agent` as a parent (plain TCP on loopback) and measures
its CPU and RSS for `--baseline` seconds with no child (the baseline, same
run). Then connects `--children` simulated children from this process, each
defining `--metrics` metrics (charts of 20 dimensions) and sending one
`samples` frame per second (their seconds staggered, as independent nodes'
are), waits until the parent holds them all, and measures again for
`--seconds`. Last, for `--latency-seconds`, one request in flight on one
keep-alive connection to the parent's API, alternating the parent's own
`/api/v1/data` and a random child's `/host/CHILD/api/v1/data` (same window and
points), while the children keep streaming: p50/p99 of each.

The children run in this process (its CPU is not counted: only the parent's).
About 65 s in all with the defaults. The sampling is bench/agent_footprint.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
from agent_footprint import cpu_and_rss, get, start_agent, stop
from harness import free_port, percentile

from tether.protocol import stream as sp

KEY = "bench-key-" + uuid.uuid4().hex
DIMS_PER_CHART = 20
OWN_CHART = "system.cpu"
WINDOW = "after=-60&points=60"


def parent_conf(stream_port: int, history: int) -> str:
    return (
        f"[global]\n    history seconds = {history}\n[web]\n    bind to = 127.0.0.1\n"
        f"[stream]\n    enabled = yes\n    api keys = {KEY}\n"
        f"    bind = 127.0.0.1:{stream_port}\n    tls = no\n"
    )


def charts_for(metrics: int) -> list[sp.ChartDef]:
    out = []
    for c in range(0, metrics, DIMS_PER_CHART):
        dims = [(f"d{i}", f"d{i}") for i in range(min(DIMS_PER_CHART, metrics - c))]
        out.append(sp.ChartDef(id=f"sim.chart{c // DIMS_PER_CHART}", dimensions=dims))
    return out


async def child(
    n: int, of: int, port: int, charts: list[sp.ChartDef], stop_event: asyncio.Event
) -> None:
    """One simulated child: Hello, its charts, then one Samples frame a second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = sp.StreamConnection(sp.Role.CHILD)
    writer.write(
        conn.send(sp.Hello(api_key=KEY, machine_guid=str(uuid.uuid4()), hostname=f"sim-{n}"))
    )
    events: list[sp.Event] = []
    while not events:
        events = conn.receive_data(await reader.read(65536))
    assert isinstance(events[0], sp.FrameReceived) and isinstance(events[0].frame, sp.Welcome)
    for c in charts:
        writer.write(conn.send(c))
    phase = n / of  # independent nodes do not all send on the same instant
    while not stop_event.is_set():
        t = int(time.time())
        values = {
            c.id: [float((t + n + i) % 100) for i in range(len(c.dimensions))] for c in charts
        }
        writer.write(conn.send(sp.Samples(at=t, values=values)))
        await writer.drain()
        await asyncio.sleep(max(0.0, t + 1 + phase - time.time()))
    writer.close()


def latencies(port: int, children: int, seconds: float) -> tuple[list[float], list[float]]:
    """(own, child) request times in seconds, alternating, one in flight."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    own: list[float] = []
    kid: list[float] = []
    rng = random.Random(17)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for out, path in (
            (own, f"/api/v1/data?chart={OWN_CHART}&{WINDOW}"),
            (kid, f"/host/sim-{rng.randrange(children)}/api/v1/data?chart=sim.chart0&{WINDOW}"),
        ):
            t0 = time.perf_counter()
            conn.request("GET", path)
            reply = conn.getresponse()
            body = reply.read()
            out.append(time.perf_counter() - t0)
            if reply.status != 200:
                raise SystemExit(f"{path}: {reply.status} {body[:200]!r}")
    conn.close()
    return own, kid


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--children", type=int, default=200)
    ap.add_argument("--metrics", type=int, default=1000, help="metrics per child")
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds with no child")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds with the children")
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument("--history", type=int, default=600, help="[global] history seconds")
    ns = ap.parse_args()
    stream_port = free_port()
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        parent, port = start_agent(Path(tmp), parent_conf(stream_port, ns.history), 30)
        p = psutil.Process(parent.pid)
        try:
            time.sleep(3)
            base_cpu, base_rss = cpu_and_rss(p, ns.baseline)
            # The children's own event loop, on a thread: the main thread
            # samples and probes with blocking calls meanwhile.
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()
            stop_event = asyncio.Event()
            charts = charts_for(ns.metrics)
            began = time.monotonic()
            futures = [
                asyncio.run_coroutine_threadsafe(
                    child(n, ns.children, stream_port, charts, stop_event), loop
                )
                for n in range(ns.children)
            ]
            deadline = began + 120
            while True:
                kids = (get(port, "/api/v1/info", 30)["stream"] or {}).get("children", [])
                if len(kids) == ns.children and all(
                    k["metrics"] == ns.metrics and k["samples"] > 0 for k in kids
                ):
                    break
                failed = [f for f in futures if f.done() and f.exception()]
                if failed or time.monotonic() > deadline:
                    raise SystemExit(f"children not all held: {failed[:1] or 'timeout'}")
                time.sleep(1)
            settled = time.monotonic() - began
            time.sleep(3)
            cpu, rss = cpu_and_rss(p, ns.seconds)
            own, kid = latencies(port, ns.children, ns.latency_seconds)
            load = os.getloadavg()
            loop.call_soon_threadsafe(stop_event.set)
            for f in futures:
                f.exception(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        finally:
            stop(parent)
    per_child_cpu = (cpu - base_cpu) / ns.children
    per_child_rss = (rss - base_rss) / ns.children
    print(f"load average:            {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"children x metrics:      {ns.children} x {ns.metrics} at 1 s, history {ns.history} s")
    print(f"all children in after:   {settled:.1f} s")
    print(f"parent CPU, no child:    {base_cpu:.2f} % of one core (baseline)")
    print(f"parent CPU, children:    {cpu:.2f} % of one core")
    print(f"CPU per child:           {per_child_cpu:.3f} % of one core")
    print(f"parent RSS, no child:    {base_rss / 2**20:.1f} MiB (baseline)")
    print(f"parent RSS, children:    {rss / 2**20:.1f} MiB")
    print(
        f"RSS per child:           {per_child_rss / 2**20:.2f} MiB "
        f"({per_child_rss / ns.metrics / 1024:.1f} KiB per metric)"
    )
    for name, xs in ((f"own {OWN_CHART}", own), ("child sim.chart0", kid)):
        print(
            f"/api/v1/data {name:17} {len(xs)} requests, p50 {percentile(xs, 50) * 1000:.2f} ms, "
            f"p99 {percentile(xs, 99) * 1000:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
