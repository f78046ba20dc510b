"""kickstart.sh argument handling, run with bash and the real tether-claim on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import tether.claim
from tests.fixtures.common import BIN_DIR, clean_env, free_port

SCRIPT = Path(tether.claim.__file__).parent / "kickstart.sh"


def kickstart(*args: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(PATH=f"{BIN_DIR}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return subprocess.run(
        ["bash", str(SCRIPT), *args, "--prefix", str(prefix)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_unknown_option_exits_1_with_usage(tmp_path: Path) -> None:
    proc = kickstart("--claim-tokn", "x", prefix=tmp_path)
    assert proc.returncode == 1
    assert "unknown option '--claim-tokn'" in proc.stderr and "usage:" in proc.stderr


def test_token_without_url_exits_1(tmp_path: Path) -> None:
    proc = kickstart("--claim-token", "t", prefix=tmp_path)
    assert proc.returncode == 1 and "--claim-url is needed" in proc.stderr


def test_url_without_token_exits_1(tmp_path: Path) -> None:
    proc = kickstart("--claim-url", "https://127.0.0.1:1", prefix=tmp_path)
    assert proc.returncode == 1 and "--claim-token is needed" in proc.stderr


def test_nothing_to_claim_exits_0(tmp_path: Path) -> None:
    proc = kickstart("--non-interactive", prefix=tmp_path)
    assert proc.returncode == 0 and "not claiming" in proc.stderr


def test_passes_flags_to_tether_claim_and_its_exit_code(tmp_path: Path) -> None:
    port = free_port()
    proxy_port = free_port()
    proc = kickstart(
        "--claim-token=secret-tok",
        f"--claim-url=https://127.0.0.1:{port}",
        "--claim-rooms",
        "r1,r2",
        "--claim-proxy",
        f"socks5h://127.0.0.1:{proxy_port}",
        prefix=tmp_path,
    )
    # The proxy setting reached tether-claim: the failure names the proxy.
    assert proc.returncode == 4, proc.stderr
    assert f"the proxy socks5h://127.0.0.1:{proxy_port}" in proc.stderr
    assert "secret-tok" not in proc.stdout + proc.stderr


def test_without_the_agent_or_a_package_spec_it_installs_nothing(tmp_path: Path) -> None:
    """No default package: a public index's "tether" may be someone else's code."""
    env = clean_env(PATH=f"/usr/bin{os.pathsep}/bin")  # no tether-claim on PATH
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--claim-token=tok",
            "--claim-url=https://127.0.0.1:1",
            "--prefix",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "no --package SPEC was given" in proc.stderr
    assert "installing" not in proc.stderr
