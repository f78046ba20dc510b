"""Relay latency to a child through its parent against a directly linked node,
both through the Cloud, in the same run.

    .venv/bin/python bench/child_relay.py [--children 20] [--metrics 200] [--seconds 20]

A real Cloud (`tether-cloud serve`, SQLite), a real parent agent claimed into
it (its stream port plain TCP on loopback) and `--children` simulated
children speaking the real stream protocol to the parent (bench/stream_parent.py's).
Once the Cloud lists every child live "via" the parent, for `--seconds`, one
request in flight on one keep-alive HTTPS connection to the Cloud's relay
API, alternating:
- the baseline: `/api/v2/nodes/PARENT/data` for the parent's own chart (a
  directly linked node: Cloud, link, the agent's API);
- `/api/v2/nodes/CHILD/data` for a random child's chart (Cloud, the parent's
  link, the parent's `/host/CHILD/` API over the child's streamed data);
with the same window and points. Prints p50 and p99 of each and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent_footprint import start_agent, stop
from harness import BIN, clean_env, free_port, percentile, prepare_cloud
from stream_parent import charts_for, child, parent_conf

WINDOW = "after=-60&points=60"


def claim(prefix: Path, cloud: Any) -> str:
    cloud_d = prefix / "var/lib/tether/cloud.d"
    cloud_d.mkdir(parents=True, exist_ok=True)
    shutil.copy(cloud.ca_file, cloud_d / "cloud_fullchain.pem")
    out = subprocess.run(
        [
            str(BIN / "tether-claim"),
            "--prefix",
            str(prefix),
            f"-token={cloud.claim_token}",
            f"-rooms={','.join(cloud.room_ids)}",
            f"-url={cloud.url}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"tether-claim failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return (prefix / "var/lib/tether/cloud.d/claimed_id").read_text().strip()


def api(conn: http.client.HTTPSConnection, token: str, path: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    reply = conn.getresponse()
    return reply.status, reply.read()


def nodes(conn: http.client.HTTPSConnection, cloud: Any) -> list[dict[str, Any]]:
    status, body = api(conn, cloud.api_token, f"/api/v1/spaces/{cloud.space_id}/nodes")
    if status != 200:
        raise SystemExit(f"nodes list: {status} {body[:200]!r}")
    return list(json.loads(body))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--children", type=int, default=20)
    ap.add_argument("--metrics", type=int, default=200, help="metrics per child")
    ap.add_argument("--seconds", type=float, default=20.0)
    ns = ap.parse_args()
    stream_port = free_port()
    with tempfile.TemporaryDirectory(prefix="tether-bench-child-relay-") as tmp:
        cloud = prepare_cloud(Path(tmp) / "cloud")
        cloud.start()
        prefix = Path(tmp) / "parent"
        parent = None
        futures: list[Any] = []
        loop = asyncio.new_event_loop()
        stop_event = asyncio.Event()
        try:
            parent, _ = start_agent(prefix, parent_conf(stream_port, 600), 30)
            parent_id = claim(prefix, cloud)  # the running agent links at once
            threading.Thread(target=loop.run_forever, daemon=True).start()
            charts = charts_for(ns.metrics)
            futures = [
                asyncio.run_coroutine_threadsafe(
                    child(n, ns.children, stream_port, charts, stop_event), loop
                )
                for n in range(ns.children)
            ]
            conn = http.client.HTTPSConnection(
                "127.0.0.1", cloud.port, context=cloud.ssl_context(), timeout=30
            )
            deadline = time.monotonic() + 120
            while True:
                listed = nodes(conn, cloud)
                kids = [n["id"] for n in listed if n.get("parent_id") == parent_id]
                live = [
                    n for n in listed if n.get("parent_id") == parent_id and n["state"] == "live"
                ]
                if len(live) == ns.children:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{len(live)} of {ns.children} children live in the Cloud")
                time.sleep(1)
            direct: list[float] = []
            via: list[float] = []
            rng = random.Random(17)
            end = time.monotonic() + ns.seconds
            while time.monotonic() < end:
                for out, path in (
                    (direct, f"/api/v2/nodes/{parent_id}/data?chart=system.cpu&{WINDOW}"),
                    (via, f"/api/v2/nodes/{rng.choice(kids)}/data?chart=sim.chart0&{WINDOW}"),
                ):
                    t0 = time.perf_counter()
                    status, body = api(conn, cloud.api_token, path)
                    out.append(time.perf_counter() - t0)
                    if status != 200:
                        raise SystemExit(f"{path}: {status} {body[:200]!r}")
            conn.close()
            load = os.getloadavg()
        finally:
            loop.call_soon_threadsafe(stop_event.set)
            for f in futures:
                f.exception(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            if parent is not None:
                stop(parent)
            cloud.stop()
    print(f"load average:   {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"children:       {ns.children} x {ns.metrics} metrics at 1 s, one parent")
    rows = (("direct node (parent's own chart)", direct), ("child via the parent", via))
    for name, xs in rows:
        print(
            f"relay {name:33} {len(xs)} requests, p50 {percentile(xs, 50) * 1000:.2f} ms, "
            f"p99 {percentile(xs, 99) * 1000:.2f} ms"
        )
    p50 = percentile(via, 50) / percentile(direct, 50)
    p99 = percentile(via, 99) / percentile(direct, 99)
    print(f"ratio child/direct: p50 {p50:.2f}x, p99 {p99:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
