"""The benchmarks' load generator speaks the real protocol: a small fleet
claims, authenticates and links to a real Cloud, which shows every node live
and relays a query to one of them. Keeps `bench/simulator.py` honest."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, poll

SIMULATOR = Path(__file__).resolve().parents[2] / "bench" / "simulator.py"
NODES = 5


def test_simulated_fleet_links_and_answers(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud()
    assert cloud.ca_file
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SIMULATOR),
            "--url",
            cloud.url,
            "--ca",
            cloud.ca_file,
            "--token",
            cloud.claim_token,
            "--rooms",
            cloud.room_ids[-1],
            "-n",
            str(NODES),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        lines, line = [], ""
        for line in proc.stdout:  # JSON lines: keys, claimed, progress..., linked
            lines.append(json.loads(line))
            if '"linked"' in line:
                break
        assert lines and '"linked"' in line, (lines, proc.stderr and proc.stderr.read())
        nodes_url = f"/api/v1/spaces/{cloud.space_id}/nodes"

        def all_live() -> list[dict[str, Any]]:
            listed = cloud.api("GET", nodes_url).json()
            return listed if sum(n["state"] == "live" for n in listed) == NODES else []

        listed = poll(all_live, 30, f"{NODES} simulated nodes live")
        r = cloud.api("GET", f"/api/v2/nodes/{listed[0]['id']}/info")
        assert r.status_code == 200, r.text
    finally:
        if proc.stdin:
            proc.stdin.close()  # end of input: the simulator exits
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
