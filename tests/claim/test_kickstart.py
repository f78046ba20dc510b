"""kickstart.sh on this machine, run with bash: its arguments, the attack
values it refuses, the CA pin, the services it writes, and one whole
unprivileged install from a real Cloud's wheelhouse (the container tests in
tests/packaging/test_container_kickstart.py do the root install)."""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether.claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import BIN_DIR, clean_env, free_port, poll
from tests.fixtures.containers import REPO, agent_bundle

SCRIPT = Path(tether.claim.__file__).parent / "kickstart.sh"
NOBODY = 65534
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def kickstart(
    *args: str, path: str = SYSTEM_PATH, as_nobody: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    argv = ["bash", str(SCRIPT), *args]
    if as_nobody:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {k: v for k, v in clean_env(PATH=path).items() if not k.startswith("TETHER_")}
    env["HOME"] = "/nonexistent"
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A scratch directory the unprivileged user owns (pytest's are root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="tether-ks-"))
    os.chown(d, NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unknown_option_exits_1_with_usage(tmp_path: Path) -> None:
    proc = kickstart("--claim-tokn", "x", "--install", str(tmp_path))
    assert proc.returncode == 1
    assert "unknown option '--claim-tokn'" in proc.stderr and "usage:" in proc.stderr


def test_token_without_url_exits_1(tmp_path: Path) -> None:
    proc = kickstart("--claim-token", "t", "--install", str(tmp_path))
    assert proc.returncode == 1 and "--claim-url is needed" in proc.stderr


def test_url_without_token_exits_1(tmp_path: Path) -> None:
    proc = kickstart("--claim-url", "https://127.0.0.1:1", "--install", str(tmp_path))
    assert proc.returncode == 1 and "--claim-token is needed" in proc.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--claim-rooms", "$(touch {marker})"),
        ("--claim-rooms", "r1;touch {marker}"),
        ("--claim-url", "https://127.0.0.1:1/$(touch {marker})"),
        ("--claim-url", "https://`touch {marker}`"),
        ("--claim-proxy", "socks5h://127.0.0.1:1$(touch {marker})"),
        ("--claim-proxy", "http://u:p@h:1\ntouch {marker}"),
        ("--claim-token", "tok'$(touch {marker})'"),
        ("--claim-id", "$(touch {marker})"),
        ("--install", "/tmp/x$(touch {marker})"),
        ("--prefix", "/tmp/x y;touch {marker}"),
        ("--claim-ca-fingerprint", "$(touch {marker})"),
    ],
)
def test_shell_in_a_value_is_refused_and_never_run(tmp_path: Path, option: str, value: str) -> None:
    """Teleport PR 14726's bug class: an installer that evaluates a value it was given."""
    marker = tmp_path / "pwned"
    args = {
        "--claim-token": "tok",
        "--claim-url": "https://127.0.0.1:1",
        "--install": str(tmp_path / "opt"),
    }
    args[option] = value.format(marker=marker)
    flat = [x for k, v in args.items() for x in (k, v)]
    proc = kickstart(*flat)
    assert proc.returncode == 1, proc.stderr
    assert f"{option} is not" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "opt").exists()


def test_unprivileged_without_install_dir_is_the_wrong_user() -> None:
    proc = kickstart("--claim-token=t", "--claim-url=https://127.0.0.1:1", as_nobody=True)
    assert proc.returncode == 6
    assert "run this as root (sudo)" in proc.stderr and "--install DIR" in proc.stderr


def test_without_python_it_prints_the_one_command_and_stops(tmp_path: Path) -> None:
    """A PATH with everything of /usr/bin but Python: the distribution's command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith("python"):
            (bin_dir / tool.name).symlink_to(tool)
    proc = kickstart(
        "--claim-token=t",
        "--claim-url=https://127.0.0.1:1",
        "--install",
        str(tmp_path / "opt"),
        path=str(bin_dir),
    )
    assert proc.returncode == 1
    distro = Path("/etc/os-release").read_text()
    if "debian" in distro.lower():
        assert proc.stderr.strip().endswith("apt-get install -y python3 python3-venv")
    assert "needs Python 3.11 or newer" in proc.stderr
    assert not (tmp_path / "opt").exists()


def test_a_ca_that_does_not_match_the_fingerprint_installs_nothing(
    cloud: Cloud, tmp_path: Path
) -> None:
    wrong = "sha256:" + "ab" * 32
    proc = kickstart(
        "--claim-ca-fingerprint",
        wrong,
        "--claim-token",
        cloud.claim_token,
        "--claim-url",
        cloud.url,
        "--install",
        str(tmp_path / "opt"),
    )
    assert proc.returncode == 4, proc.stderr
    assert f"not the {'ab' * 32} this command carries" in proc.stderr
    assert "Nothing was installed" in proc.stderr
    assert not (tmp_path / "opt").exists()


def test_without_a_pinned_ca_a_private_cloud_is_not_trusted(cloud: Cloud, tmp_path: Path) -> None:
    proc = kickstart(
        "--claim-token", cloud.claim_token, "--claim-url", cloud.url, "--install", str(tmp_path)
    )
    assert proc.returncode == 4
    assert "give --claim-ca-fingerprint" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_the_packaged_systemd_unit_is_what_kickstart_installs_and_verifies(
    tmp_path: Path,
) -> None:
    shipped = (REPO / "packaging/systemd/tether-agent.service").read_text()
    rendered = kickstart("--print-service", "systemd")
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == shipped
    for line in (
        "Type=simple",
        "User=tether",
        "StateDirectory=tether",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Environment=TETHER_PREFIX=/",
        "ExecStart=/opt/tether/venv/bin/tether-agent -D",
    ):
        assert line in shipped.splitlines(), line
    # systemd-analyze checks the commands exist: render it for a real venv.
    (tmp_path / "venv").symlink_to(BIN_DIR.parent)
    unit = kickstart("--print-service", "systemd", "--install", str(tmp_path)).stdout
    assert f"ReadWritePaths={tmp_path}/var/lib/tether" in unit
    unit_file = tmp_path / "tether-agent.service"
    unit_file.write_text(unit)
    if shutil.which("systemd-analyze") is None and not os.environ.get("CI"):
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and "tether-agent.service" not in r.stderr, r.stderr


def test_the_launchd_plist_is_a_valid_property_list() -> None:
    proc = kickstart("--print-service", "launchd", "--install", "/usr/local/tether")
    assert proc.returncode == 0, proc.stderr
    ET.fromstring(proc.stdout.split("\n", 2)[2])  # noqa: S314 (well-formed, after the prolog)
    plist = plistlib.loads(proc.stdout.encode())
    assert plist["Label"] == "io.tether.agent"
    assert plist["ProgramArguments"] == ["/usr/local/tether/venv/bin/tether-agent", "-D"]
    assert plist["EnvironmentVariables"] == {"TETHER_PREFIX": "/usr/local/tether"}
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True


def test_unprivileged_install_claims_upgrades_and_uninstalls(
    start_cloud: Callable[..., Cloud], nobody_dir: Path
) -> None:
    """The whole job as an ordinary user, into --install DIR, from the Cloud's
    wheelhouse only (pip's index at a closed port)."""
    cloud = start_cloud("--agent-bundle", str(agent_bundle().path))
    assert cloud.ca_sha256 and cloud.ca_file
    prefix = nobody_dir / "tether"
    # The agent shares this machine with other tests: its own port.
    (prefix / "etc" / "tether").mkdir(parents=True)
    (prefix / "etc" / "tether" / "tether.conf").write_text(
        f"[web]\n    default port = {free_port()}\n    bind to = 127.0.0.1\n"
    )
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(nobody_dir)], check=True)
    claim = [
        "--claim-ca-fingerprint",
        cloud.ca_sha256,
        "--claim-token",
        cloud.claim_token,
        "--claim-rooms",
        cloud.room_ids[1],
        "--claim-url",
        cloud.url,
        "--install",
        str(prefix),
    ]
    closed = free_port()
    path = SYSTEM_PATH
    env_pip = f"PIP_INDEX_URL=http://127.0.0.1:{closed}/simple"
    try:
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "env",
                "-i",
                f"PATH={path}",
                "HOME=/nonexistent",
                env_pip,
                "bash",
                str(SCRIPT),
                *claim,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Agent was successfully claimed." in proc.stdout
        assert "started the agent with nohup" in proc.stderr
        m = re.search(r"^Node ([0-9a-f-]{36}) is live: (\S+)$", proc.stdout, re.M)
        assert m, proc.stdout
        node_id = m.group(1)
        assert m.group(2) == f"{cloud.url}/nodes/{node_id}"
        node = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}").json()
        assert node["state"] == "live" and cloud.room_ids[1] in node["rooms"]
        assert (prefix / "var/lib/tether/cloud.d/cloud_fullchain.pem").read_bytes() == Path(
            cloud.ca_file
        ).read_bytes()

        again = kickstart(*claim, as_nobody=True)
        assert again.returncode == 0, again.stderr
        assert f"already claimed as node {node_id}" in again.stderr
        assert "nothing changed" in again.stderr
        assert len(cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").json()) == 1

        upgrade = kickstart("--install", str(prefix), as_nobody=True)
        assert upgrade.returncode == 0, upgrade.stderr
        assert "the agent is at version" in upgrade.stderr
        assert "not claiming" in upgrade.stderr
    finally:
        gone = kickstart("--uninstall", "--install", str(prefix), as_nobody=True)
    assert gone.returncode == 0, gone.stderr
    assert "the Tether agent is uninstalled" in gone.stderr
    assert not (prefix / "venv").exists() and not (prefix / "var/lib/tether").exists()
    poll(
        lambda: (
            cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}").json()["state"]
            == "offline"
        ),
        20,
        "the node offline after --uninstall",
    )
