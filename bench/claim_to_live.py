"""Claim to live: from starting `tether-claim` to the Cloud showing the node `live`.

    .venv/bin/python bench/claim_to_live.py [--claims 50] [--batch 5]

Everything real: one Cloud (`tether-cloud serve`), and per claim one real
`tether-agent` process in its own prefix (started beforehand, in batches, and
not timed), trusting the Cloud's CA through `cloud.d/cloud_fullchain.pem`.
Timed, one claim at a time: launching the real `tether-claim` process (Python
start-up, RSA-2048 key generation, the claim request, telling the running
agent to reload), then the agent's challenge/answer and link, until the
Cloud's node API (`GET /api/v1/spaces/{space}/nodes/{id}`, polled every
10 ms on one keep-alive connection) says `live`. Prints p50/p99 of the whole
and of its two parts (the claim process, then exit to live).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import harness

from tether.paths import AgentPaths

TARGET_P99 = 1.0
POLL = 0.01


class Poller:
    """One keep-alive HTTPS connection to the Cloud's node API."""

    def __init__(self, cloud: harness.Cloud) -> None:
        self.cloud = cloud
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.cloud.port, context=self.cloud.ssl_context(), timeout=10
        )

    def state(self, node_id: str) -> str | None:
        try:
            return self._state(node_id)
        except (http.client.HTTPException, OSError):
            # The server closes idle keep-alive connections after 5 s: reconnect once.
            self.conn.close()
            self.conn = self._connect()
            return self._state(node_id)

    def _state(self, node_id: str) -> str | None:
        self.conn.request(
            "GET",
            f"/api/v1/spaces/{self.cloud.space_id}/nodes/{node_id}",
            headers={"Authorization": f"Bearer {self.cloud.api_token}"},
        )
        r = self.conn.getresponse()
        body = r.read()
        return str(json.loads(body)["state"]) if r.status == 200 else None


def start_agent(prefix: Path, ca_file: str) -> tuple[subprocess.Popen[bytes], AgentPaths, int]:
    """A real tether-agent in `prefix`, trusting the Cloud's CA; (process, paths, API port)."""
    paths = AgentPaths.from_prefix(prefix)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text("[web]\n    bind to = 127.0.0.1\n")
    paths.cloud_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca_file, paths.cloud_fullchain_file)
    port = harness.free_port()
    proc = subprocess.Popen(
        [str(harness.BIN / "tether-agent"), "-D", "--prefix", str(prefix), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=harness.clean_env(),
    )
    return proc, paths, port


def wait_agent(paths: AgentPaths, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """The agent is up once its control socket exists (tether-claim talks to it there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tether-agent exited with {proc.returncode}")
        if paths.control_socket.exists():
            return
        time.sleep(0.05)
    raise SystemExit("tether-agent did not create its control socket in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--claims", type=int, default=50, help="claims to time (default 50)")
    ap.add_argument(
        "--batch",
        type=int,
        default=5,
        help="agents started together before their claims (default 5)",
    )
    a = ap.parse_args()
    harness.raise_nofile()
    print(f"machine: {harness.machine()}")
    totals: list[float] = []
    claims: list[float] = []
    links: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-c2l-") as tmp:
        cloud = harness.prepare_cloud(Path(tmp) / "cloud")
        cloud.start()
        poller = Poller(cloud)
        try:
            done = 0
            while done < a.claims:
                batch = []
                for k in range(min(a.batch, a.claims - done)):
                    batch.append(start_agent(Path(tmp) / f"agent-{done + k}", cloud.ca_file))
                try:
                    for proc, paths, _port in batch:
                        wait_agent(paths, proc)
                    time.sleep(1.0)  # let the agents' start-up CPU settle
                    for _proc, paths, _port in batch:
                        total, claim = time_one(cloud, paths, poller)
                        totals.append(total)
                        claims.append(claim)
                        links.append(total - claim)
                        done += 1
                finally:
                    for proc, _paths, _port in batch:
                        stop(proc)
                print(f"  {done}/{a.claims} claims timed", flush=True)
        finally:
            cloud.stop()

    def line(name: str, v: list[float]) -> str:
        return (
            f"  {name:<36} p50 {harness.ms(harness.percentile(v, 50)):>11}   "
            f"p99 {harness.ms(harness.percentile(v, 99)):>11}   max {harness.ms(max(v))}"
        )

    print(f"\nclaim to live over {len(totals)} claims (real tether-claim, real agents):")
    print(line("tether-claim start -> live", totals))
    print(line("  tether-claim process (start->exit)", claims))
    print(line("  tether-claim exit -> live", links))
    p99 = harness.percentile(totals, 99)
    verdict = "met" if p99 < TARGET_P99 else "MISSED"
    print(f"target live < {TARGET_P99:.0f} s p99: {verdict} ({p99:.3f} s)")
    return 0


def time_one(cloud: harness.Cloud, paths: AgentPaths, poller: Poller) -> tuple[float, float]:
    """(start -> live, start -> tether-claim exit) in seconds."""
    t0 = time.monotonic()
    out = subprocess.run(
        [
            str(harness.BIN / "tether-claim"),
            "--prefix",
            str(paths.prefix),
            f"-token={cloud.claim_token}",
            f"-rooms={cloud.room_ids[1]}",
            f"-url={cloud.url}",
        ],
        capture_output=True,
        text=True,
        env=harness.clean_env(),
        timeout=60,
        check=False,
    )
    t_claim = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"tether-claim exited {out.returncode}:\n{out.stdout}{out.stderr}")
    node_id = paths.claimed_id_file.read_text().strip()
    while time.monotonic() - t0 < 30:
        if poller.state(node_id) == "live":
            return time.monotonic() - t0, t_claim
        time.sleep(POLL)
    try:
        tail = "\n".join(paths.error_log.read_text(errors="replace").splitlines()[-15:])
    except OSError:
        tail = "<no agent log>"
    raise SystemExit(f"node {node_id} was not live 30 s after its claim; the agent's log:\n{tail}")


if __name__ == "__main__":
    raise SystemExit(main())
