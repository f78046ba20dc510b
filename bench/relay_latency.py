"""Relay round trip through the Cloud next to a direct call to the agent.

    .venv/bin/python bench/relay_latency.py [--requests 2000] [--path /api/v1/info]

Real processes: a Cloud (`tether-cloud serve`), one real `tether-agent`
claimed into it with the real `tether-claim`, linked. Then, in the same run
and with the same small keep-alive HTTP/1.1 client (not httpx: design.md), the
same agent API request two ways:

- direct: HTTP to the agent's local API (127.0.0.1, plain HTTP, as a browser
  on the node would);
- Cloud API: HTTPS to `GET /api/v1/me` with the same token (TLS, routing,
  the token check, and one query of its own in a threadpool hop: the user's
  Spaces);
- relay: HTTPS to the Cloud's relay (`/api/v2/nodes/{id}/...`, authorised by
  an API token), a frame down the link, the agent answers from its local API,
  back up the link and out.

At 1 request in flight (one connection) and at 32 (32 connections). Prints
p50/p99, requests/s, the relay's overhead and ratio over direct, and whether
the relay meets design.md's floor at 32 in flight. The relay's credential and
access checks are cached for 5 s (tether.cloud.auth), so most relays here do
no database work, as for a dashboard polling a node.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import claim_to_live as c2l
import harness
import psutil
from rawhttp import HttpConnection

TARGET_OVERHEAD_P50 = 0.005
# design.md's floor for a bare Starlette relay at 32 in flight.
FLOOR_RPS_32 = 4000
FLOOR_P99_32 = 0.016


def relay_path(node_id: str, api_path: str) -> str:
    """The Cloud's relay URL path for `api_path` on node `node_id`."""
    return f"/api/v2/nodes/{node_id}{api_path}"


async def load(
    make: Callable[[], HttpConnection],
    path: str,
    headers: dict[str, str],
    inflight: int,
    total: int,
) -> tuple[list[float], float]:
    """`total` requests over `inflight` connections; (latencies, requests/s)."""
    conns = [make() for _ in range(inflight)]
    for c in conns:
        await c.connect()
        r = await c.request("GET", path, headers=headers)  # warm-up, and a sanity check
        if r.status != 200:
            raise SystemExit(f"GET {path}: HTTP {r.status} {r.body[:300]!r}")
    per_conn = max(1, total // inflight)
    lat: list[float] = []

    async def worker(c: HttpConnection) -> None:
        for _ in range(per_conn):
            t = time.perf_counter()
            r = await c.request("GET", path, headers=headers)
            lat.append(time.perf_counter() - t)
            if r.status != 200:
                raise SystemExit(f"GET {path}: HTTP {r.status} {r.body[:300]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    return lat, len(lat) / elapsed


def _factory(base: str, ctx: ssl.SSLContext) -> Callable[[], HttpConnection]:
    return lambda: HttpConnection(base, ctx)


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def measure(
    cloud: harness.Cloud, agent_url: str, agent_pid: int, node_id: str, api_path: str, total: int
) -> list[tuple[int, str, list[float], float, float]]:
    ctx = cloud.ssl_context()
    auth = {"Authorization": f"Bearer {cloud.api_token}"}
    rows = []
    for inflight in (1, 32):
        n = total if inflight == 1 else total * 4
        for name, base, path, headers in (
            ("direct", agent_url, api_path, {}),
            ("cloud", cloud.url, "/api/v1/me", auth),
            ("relay", cloud.url, relay_path(node_id, api_path), auth),
        ):
            cpu0 = _cpu(cloud.pid) + _cpu(agent_pid)
            lat, rps = await load(_factory(base, ctx), path, headers, inflight, n)
            # CPU per request of the Cloud and the agent together: unlike latency, it
            # does not depend on what else this machine is running.
            cpu = (_cpu(cloud.pid) + _cpu(agent_pid) - cpu0) / len(lat)
            rows.append((inflight, name, lat, rps, cpu))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="requests at 1 in flight (4x that at 32 in flight; default 2000)",
    )
    ap.add_argument(
        "--path",
        default="/api/v1/info",
        help="agent API path (and query) to request (default /api/v1/info)",
    )
    a = ap.parse_args()
    harness.raise_nofile()
    print(f"machine: {harness.machine()}")
    with tempfile.TemporaryDirectory(prefix="tether-bench-relay-") as tmp:
        cloud = harness.prepare_cloud(Path(tmp) / "cloud")
        cloud.start()
        proc, paths, port = c2l.start_agent(Path(tmp) / "agent", cloud.ca_file)
        try:
            c2l.wait_agent(paths, proc)
            c2l.time_one(cloud, paths, c2l.Poller(cloud))
            node_id = paths.claimed_id_file.read_text().strip()
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            with runner:
                rows = runner.run(
                    measure(
                        cloud, f"http://127.0.0.1:{port}", proc.pid, node_id, a.path, a.requests
                    )
                )
        finally:
            c2l.stop(proc)
            cloud.stop()
    p = harness.percentile
    label = {
        "direct": f"direct: agent API GET {a.path}",
        "cloud": "Cloud API GET /api/v1/me (HTTPS + token check + its query, no link)",
        "relay": f"relay: GET /api/v2/nodes/ID{a.path}",
    }
    print(
        "\n| in flight | request | p50 | p99 | req/s | p50 over direct | CPU per request "
        "(Cloud + agent) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    direct: dict[int, float] = {}
    relay: dict[int, float] = {}
    relay32: tuple[float, float] = (0.0, 0.0)
    for inflight, name, lat, rps, cpu in rows:
        if name == "relay" and inflight == 32:
            relay32 = (rps, p(lat, 99))
        if name == "direct":
            direct[inflight] = p(lat, 50)
        if name == "relay":
            relay[inflight] = p(lat, 50)
        over = p(lat, 50) - direct[inflight]
        ratio = p(lat, 50) / direct[inflight]
        extra = "" if name == "direct" else f"+{harness.ms(over)} ({ratio:.1f}x)"
        print(
            f"| {inflight} | {label[name]} | {harness.ms(p(lat, 50))} | "
            f"{harness.ms(p(lat, 99))} | {rps:,.0f} | {extra} | {harness.ms(cpu)} |"
        )
    over1 = relay[1] - direct[1]
    verdict = "met" if over1 < TARGET_OVERHEAD_P50 else "MISSED"
    print(f"target relay overhead < 5 ms p50 at 1 in flight: {verdict} ({harness.ms(over1)})")
    rps32, p99_32 = relay32
    verdict = "met" if rps32 >= FLOOR_RPS_32 and p99_32 <= FLOOR_P99_32 else "MISSED"
    print(
        f"floor at 32 in flight (>= {FLOOR_RPS_32:,} relays/s, p99 <= "
        f"{harness.ms(FLOOR_P99_32)}): {verdict} ({rps32:,.0f}/s, p99 {harness.ms(p99_32)}); "
        "latency depends on the machine's other load: check the load average above"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
