"""Install to live: the Linux command in a fresh Debian container, from a real
Cloud's /downloads/, with pip's index at a closed port.

    .venv/bin/python bench/install.py [--rounds 3]

Per round: a new container from the plain Debian base (tests/fixtures/
containers.py makes and caches it with mmdebstrap), then the command Connect
Nodes shows, timed from its start. Prints, per round and as medians: the
install (download and checksum of the wheelhouse, venv, pip install --no-index,
up to kickstart's "installed tether" line), the command's start to the node
live (kickstart prints its URL only once the Cloud has it live), and the part
after the install (service start, claim, link). Needs podman, runc, mmdebstrap.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import harness

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the container helpers are shared with the tests

from tests.fixtures.containers import (  # noqa: E402
    RUNC,
    Containers,
    base_image,
    linux_command,
    podman_env,
)

from tether.cloud.tls import cert_sha256  # noqa: E402


def one_round(cloud: harness.Cloud, c: Containers, ca_sha256: str) -> tuple[float, float]:
    node = c.fresh_node(harness.free_port())
    command = linux_command(cloud.url, cloud.claim_token, [cloud.room_ids[1]], ca_sha256)
    t0 = time.monotonic()
    installed = live = None
    proc = subprocess.Popen(
        ["podman", "--runtime", RUNC, "exec", node, "bash", "-c", command + " 2>&1"],
        stdout=subprocess.PIPE,
        text=True,
        env=podman_env(),
    )
    assert proc.stdout is not None
    out = []
    for line in proc.stdout:
        out.append(line)
        if "kickstart: installed tether" in line:
            installed = time.monotonic() - t0
        if line.startswith("Node ") and " is live: " in line:
            live = time.monotonic() - t0
    if proc.wait() != 0 or installed is None or live is None:
        raise SystemExit("the command failed:\n" + "".join(out))
    return installed, live


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    base_image()
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        cloud = harness.prepare_cloud(Path(tmp))
        cloud.start()
        c = Containers(f"bench-install-{harness.free_port()}")
        try:
            ca_sha256 = cert_sha256(Path(cloud.ca_file))
            # The Cloud makes its bundle at first need (from the index, once): not timed.
            ctx = cloud.ssl_context()
            urllib.request.urlopen(f"{cloud.url}/downloads/", context=ctx, timeout=600).read()  # noqa: S310
            rows = []
            for i in range(a.rounds):
                installed, live = one_round(cloud, c, ca_sha256)
                rows.append((installed, live))
                print(
                    f"round {i + 1}: install {installed:.1f} s, start to live {live:.1f} s, "
                    f"install to live {live - installed:.1f} s",
                    flush=True,
                )
            inst = statistics.median(r[0] for r in rows)
            whole = statistics.median(r[1] for r in rows)
            after = statistics.median(r[1] - r[0] for r in rows)
            print(
                f"median of {a.rounds}: install {inst:.1f} s, command start to live {whole:.1f} s, "
                f"after the install {after:.1f} s ({harness.machine()})"
            )
        finally:
            c.cleanup()
            cloud.stop()


if __name__ == "__main__":
    main()
