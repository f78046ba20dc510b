"""One link cannot hurt the others: a good node's relay latency, idle and while
another node floods the Cloud with frames.

    .venv/bin/python bench/link_flood.py [--seconds 10] [--kind error|alert] [--flooders 1]

Real processes: a Cloud (`tether-cloud serve`), a real `tether-agent` claimed
with the real `tether-claim` (the good node), and a flooder process (this file
with `--flood`): nodes speaking the real protocol that claim themselves, link,
and send frames of `--kind` as fast as the link takes them. Whenever the Cloud
closes one, it comes straight back (authenticate, link) without backing off,
as an attacker would.

The bench relays `GET /api/v1/info` to the good node back to back (1 in
flight, the small keep-alive client of relay_latency.py) for `--seconds` idle,
then for `--seconds` during the flood. Prints p50/p99 of both and their ratio
(target: p99 during the flood within 2x of idle), what the flooders managed
(frames sent, links, refusals) and how much the Cloud's log grew.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import claim_to_live as c2l
import harness
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rawhttp import HttpConnection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tether.protocol import auth
from tether.protocol.frames import AlertTransition, ErrorFrame, Frame, Hello, encode

TARGET_RATIO_P99 = 2.0


# -- the flooder (a child process) ------------------------------------------------


def _frame(kind: str, i: int) -> Frame:
    if kind == "alert":
        return AlertTransition(
            name=f"flood{i}",
            chart="disk_space._",
            old_status="CLEAR",
            new_status="WARNING",
            at=time.time(),
        )
    return ErrorFrame(code="flood", text=f"failure number {i} " + "x" * 60)


async def _one_flooder(a: argparse.Namespace, counts: collections.Counter[str]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    node_id = str(uuid.uuid4())
    ctx = ssl.create_default_context(cafile=a.ca)
    async with httpx.AsyncClient(base_url=a.url, verify=ctx, trust_env=False, timeout=10) as http:
        r = await http.put(
            f"/api/v1/spaces/nodes/{node_id}",
            json={
                "node": {"id": node_id, "hostname": "flooder"},
                "token": a.token,
                "rooms": [a.room],
                "publicKey": public.decode(),
            },
        )
        if r.status_code != 204:
            raise SystemExit(f"flooder claim: HTTP {r.status_code} {r.text[:200]}")
        deadline = time.monotonic() + a.seconds
        i = 0
        while time.monotonic() < deadline:
            r = await http.get(auth.challenge_path(node_id))
            if r.status_code != 200:
                counts[f"challenge HTTP {r.status_code}"] += 1
                await asyncio.sleep(0.01)
                continue
            answer = auth.decrypt_challenge(private, auth.b64decode(r.json()["challenge"]))
            r = await http.post(
                auth.password_path(node_id), json={"response": auth.b64encode(answer)}
            )
            if r.status_code != 200:
                counts[f"password HTTP {r.status_code}"] += 1
                await asyncio.sleep(0.01)
                continue
            reply = r.json()
            try:
                ws = await connect(
                    reply["linkUrl"],
                    ssl=ctx,
                    proxy=None,
                    compression=None,
                    additional_headers={"Authorization": f"Bearer {reply['linkToken']}"},
                    max_size=None,
                    open_timeout=10,
                )
            except InvalidStatus as exc:
                counts[f"link HTTP {exc.response.status_code}"] += 1
                continue
            counts["links"] += 1
            hello = Hello(
                agent_version="flood",
                hostname="flooder",
                os="x",
                machine_guid=node_id,
                machine_id=node_id,
            )
            try:
                await ws.send(encode(hello))
                await ws.recv()  # HelloAck
                while time.monotonic() < deadline:
                    await ws.send(encode(_frame(a.kind, i)))
                    i += 1
                    counts["frames sent"] += 1
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # let the close be read
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                counts[f"closed {code}"] += 1
            finally:
                await ws.close()


async def _flood(a: argparse.Namespace) -> None:
    counts: collections.Counter[str] = collections.Counter()
    await asyncio.gather(*(_one_flooder(a, counts) for _ in range(a.flooders)))
    print(json.dumps(dict(counts)), flush=True)


# -- the bench ----------------------------------------------------------------------


async def relays(cloud: harness.Cloud, node_id: str, seconds: float) -> list[float]:
    """Relay back to back for `seconds`; the latencies."""
    conn = HttpConnection(cloud.url, cloud.ssl_context())
    headers = {"Authorization": f"Bearer {cloud.api_token}"}
    path = f"/api/v2/nodes/{node_id}/api/v1/info"
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        r = await conn.request("GET", path, headers=headers)
        lat.append(time.perf_counter() - t)
        if r.status != 200:
            raise SystemExit(f"relay to the good node: HTTP {r.status} {r.body[:200]!r}")
    await conn.close()
    return lat


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="each phase (default 10)")
    ap.add_argument(
        "--kind",
        choices=["error", "alert"],
        default="error",
        help="frames the flooders send (default error)",
    )
    ap.add_argument("--flooders", type=int, default=1, help="flooding nodes (default 1)")
    ap.add_argument("--flood", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--ca", help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--room", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.flood:
        asyncio.run(_flood(a))
        return 0
    print(f"machine: {harness.machine()}")
    p = harness.percentile
    with tempfile.TemporaryDirectory(prefix="tether-bench-flood-") as tmp:
        cloud = harness.prepare_cloud(Path(tmp) / "cloud")
        cloud.start()
        proc, paths, _ = c2l.start_agent(Path(tmp) / "agent", cloud.ca_file)
        flooder: subprocess.Popen[str] | None = None
        try:
            c2l.wait_agent(paths, proc)
            c2l.time_one(cloud, paths, c2l.Poller(cloud))
            node_id = paths.claimed_id_file.read_text().strip()
            asyncio.run(relays(cloud, node_id, 1.0))  # warm-up
            idle = asyncio.run(relays(cloud, node_id, a.seconds))
            load_idle = _loadavg()
            log_before = cloud.log_file.stat().st_size
            cpu_before = cloud.cpu_seconds()
            flooder = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--flood",
                    "--url",
                    cloud.url,
                    "--ca",
                    cloud.ca_file,
                    "--token",
                    cloud.claim_token,
                    "--room",
                    cloud.room_ids[0],
                    "--seconds",
                    str(a.seconds + 2),
                    "--kind",
                    a.kind,
                    "--flooders",
                    str(a.flooders),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=harness.clean_env(),
            )
            time.sleep(1.5)  # the flooders claim and link first (RSA key generation)
            during = asyncio.run(relays(cloud, node_id, a.seconds))
            load_flood = _loadavg()
            out, _ = flooder.communicate(timeout=60)
            cpu = cloud.cpu_seconds() - cpu_before
            grown = cloud.log_file.stat().st_size - log_before
            stats: dict[str, Any] = json.loads(out.strip().splitlines()[-1]) if out else {}
        finally:
            if flooder is not None and flooder.poll() is None:
                flooder.kill()
            c2l.stop(proc)
            cloud.stop()
    ratio50 = p(during, 50) / p(idle, 50)
    ratio99 = p(during, 99) / p(idle, 99)
    print(
        f"\n{a.flooders} flooder(s) sending {a.kind} frames for {a.seconds:g} s; "
        f"good node: a real agent, relays back to back (1 in flight)\n"
    )
    print("| phase | relays | p50 | p99 | /proc/loadavg |")
    print("|---|---:|---:|---:|---|")
    print(
        f"| idle | {len(idle):,} | {harness.ms(p(idle, 50))} | {harness.ms(p(idle, 99))} | "
        f"{load_idle} |"
    )
    print(
        f"| during the flood | {len(during):,} | {harness.ms(p(during, 50))} | "
        f"{harness.ms(p(during, 99))} | {load_flood} |"
    )
    print(f"\nratio during/idle: p50 {ratio50:.2f}x, p99 {ratio99:.2f}x")
    print(f"flooders: {json.dumps(stats, sort_keys=True)}")
    print(f"Cloud during the flood: log +{grown:,} bytes, CPU {cpu:.2f} s ({os.cpu_count()} cores)")
    verdict = "met" if ratio99 <= TARGET_RATIO_P99 else "MISSED"
    print(
        f"target p99 during the flood within {TARGET_RATIO_P99:g}x idle: {verdict}; "
        "latency depends on the machine's other load: check the load averages above"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
