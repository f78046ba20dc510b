"""The room overview's composite chart for 100 and 1,000 simulated nodes.

    .venv/bin/python bench/room_overview.py [--requests 20] [--sizes 100,1000]

A real Cloud (`tether-cloud serve`, SQLite) and simulated nodes
(bench/simulator.py: the real protocol, each node answering the Cloud's
QueryRequests with an /api/v1/data-shaped body) in the Space's all-nodes
room. Timed over one keep-alive HTTPS connection with the admin's API token,
after two warm-up requests:

- baseline: one node's data through the relay
  (`GET /api/v2/nodes/{id}/data?chart=system.cpu&after=-300&points=60`),
  the page's per-chart cost before this change;
- composite: `GET /api/v2/rooms/{room}/composite?chart=cpu&after=-300&points=60`,
  the query fanned out to every live node of the room (at most 64 in flight
  per Cloud process, 2 s per node), reduced to one series per node on a
  common grid: what the overview draws, per chart.

Prints p50/p99 of each, the answer's size, how many nodes answered, and the
ratio composite/baseline. The fleet grows from the first size to the next
(more simulated nodes join the same room), so the Cloud is the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import harness
from nodes_page import Client, timed


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=20, help="timed requests per kind (20)")
    ap.add_argument("--sizes", default="100,1000", help="room sizes, growing (100,1000)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    assert sizes == sorted(sizes), "--sizes must grow"
    print(f"machine: {harness.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        cloud = harness.prepare_cloud(Path(tmp) / "cloud", harness.free_port())
        cloud.start()
        fleets: list[harness.Simulator] = []
        try:
            api = Client(cloud, {"Authorization": f"Bearer {cloud.api_token}"})
            room = cloud.room_ids[0]
            have = 0
            for size in sizes:
                sim = harness.Simulator(cloud, size - have)
                fleets.append(sim)
                sim.wait("linked", 600)
                have = size
                live = harness.count_live(cloud).get("live", 0)
                _, body, _ = api.get(f"/api/v1/spaces/{cloud.space_id}/nodes?state=live&per_page=1")
                one = json.loads(body)[0]["id"]
                single = f"/api/v2/nodes/{one}/data?chart=system.cpu&after=-300&points=60"
                comp = f"/api/v2/rooms/{room}/composite?chart=cpu&after=-300&points=60"
                base_t, _, _ = timed(api, single, args.requests)
                comp_t, comp_body, _ = timed(api, comp, args.requests)
                answer = json.loads(comp_body)
                b50, c50 = harness.percentile(base_t, 50), harness.percentile(comp_t, 50)
                print(
                    f"room of {size} simulated nodes ({live} live), {args.requests} requests each:"
                )
                print(
                    f"  baseline: one node's relay      p50 {harness.ms(b50):>10s}  "
                    f"p99 {harness.ms(harness.percentile(base_t, 99)):>10s}"
                )
                print(
                    f"  composite: every node (cpu)     p50 {harness.ms(c50):>10s}  "
                    f"p99 {harness.ms(harness.percentile(comp_t, 99)):>10s}  "
                    f"{len(comp_body) / 1000:7.1f} kB  {answer['answered']} of "
                    f"{answer['asked']} answered, {len(answer['missed'])} missed  "
                    f"composite/baseline {c50 / b50:6.1f}x"
                )
            print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            for sim in fleets:
                sim.stop()
            cloud.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
