"""What a streaming parent costs per child: a real parent agent, simulated
children speaking the real stream protocol.

    .venv/bin/python bench/stream_parent.py [--children 20] [--metrics 1000]
        [--seconds 30] [--history 3600]

Starts a real `tether-agent` as a parent (plain TCP on loopback), measures
its CPU and RSS for `--seconds` with no child (the baseline, same run), then
connects `--children` simulated children from this process, each defining
`--metrics` metrics (charts of 20 dimensions) and sending one `samples`
frame per second, waits until the parent holds them all, and measures again.
Prints both, the difference per child, and the ratio to the baseline. The
children run in this process (its CPU is not counted: only the parent's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

from tether.protocol import stream as sp

BIN = Path(sys.executable).parent
KEY = "bench-key-" + uuid.uuid4().hex
DIMS_PER_CHART = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> dict:  # type: ignore[type-arg]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def start_parent(
    prefix: Path, stream_port: int, history: int
) -> tuple[subprocess.Popen[bytes], int]:
    conf = prefix / "etc/tether/tether.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        f"[global]\n    history seconds = {history}\n[web]\n    bind to = 127.0.0.1\n"
        f"[stream]\n    enabled = yes\n    api keys = {KEY}\n"
        f"    bind = 127.0.0.1:{stream_port}\n    tls = no\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(
        [str(BIN / "tether-agent"), "-D", "--prefix", str(prefix), "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            get(port, "/api/v1/info")
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the parent did not start; run it by hand to see why")


def charts_for(metrics: int) -> list[sp.ChartDef]:
    out = []
    for c in range(0, metrics, DIMS_PER_CHART):
        dims = [(f"d{i}", f"d{i}") for i in range(min(DIMS_PER_CHART, metrics - c))]
        out.append(sp.ChartDef(id=f"sim.chart{c // DIMS_PER_CHART}", dimensions=dims))
    return out


async def child(n: int, port: int, charts: list[sp.ChartDef], stop: asyncio.Event) -> None:
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
    while not stop.is_set():
        t = int(time.time())
        values = {
            c.id: [float((t + n + i) % 100) for i in range(len(c.dimensions))] for c in charts
        }
        writer.write(conn.send(sp.Samples(at=t, values=values)))
        await writer.drain()
        await asyncio.sleep(t + 1 - time.time())
    writer.close()


def measure(proc: psutil.Process, seconds: float) -> tuple[float, int]:
    c0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = proc.cpu_times(), time.monotonic()
    cpu = 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)
    return cpu, proc.memory_info().rss


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--children", type=int, default=20)
    ap.add_argument("--metrics", type=int, default=1000, help="metrics per child")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--history", type=int, default=3600, help="[global] history seconds")
    ns = ap.parse_args()
    stream_port = free_port()
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        parent, port = start_parent(Path(tmp), stream_port, ns.history)
        p = psutil.Process(parent.pid)
        try:
            time.sleep(5)
            base_cpu, base_rss = measure(p, ns.seconds)
            stop = asyncio.Event()
            loop = asyncio.new_event_loop()
            charts = charts_for(ns.metrics)
            tasks = [
                loop.create_task(child(n, stream_port, charts, stop)) for n in range(ns.children)
            ]
            began = time.monotonic()

            def all_in() -> bool:
                kids = (get(port, "/api/v1/info")["stream"] or {}).get("children", [])
                return len(kids) == ns.children and all(
                    k["metrics"] == ns.metrics and k["samples"] > 0 for k in kids
                )

            # The children run in this loop; step it while polling the parent.
            while not all_in():
                loop.run_until_complete(asyncio.sleep(1))
            settled = time.monotonic() - began
            loop.run_until_complete(asyncio.sleep(5))
            measured: list[tuple[float, int]] = []

            async def sample() -> None:
                measured.append(await asyncio.to_thread(measure, p, ns.seconds))

            loop.run_until_complete(sample())
            cpu, rss = measured[0]
            stop.set()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()
        finally:
            parent.terminate()
            try:
                parent.wait(10)
            except subprocess.TimeoutExpired:
                parent.kill()
    per_child_cpu = (cpu - base_cpu) / ns.children
    per_child_rss = (rss - base_rss) / ns.children
    load = os.getloadavg()
    print(f"load average:            {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"children x metrics:      {ns.children} x {ns.metrics} at 1 s, history {ns.history} s")
    print(f"all children in after:   {settled:.1f} s")
    print(f"parent CPU, no child:    {base_cpu:.2f} % of one core (baseline)")
    print(
        f"parent CPU, children:    {cpu:.2f} % ({cpu / base_cpu:.1f}x baseline)"
        if base_cpu
        else f"parent CPU, children:    {cpu:.2f} %"
    )
    print(f"CPU per child:           {per_child_cpu:.3f} % of one core")
    print(f"parent RSS, no child:    {base_rss / 2**20:.1f} MiB (baseline)")
    print(f"parent RSS, children:    {rss / 2**20:.1f} MiB ({rss / base_rss:.1f}x baseline)")
    print(
        f"RSS per child:           {per_child_rss / 2**20:.2f} MiB "
        f"({per_child_rss / ns.metrics / 1024:.1f} KiB per metric)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
