"""What the entrypoint does before the agent starts: variable names, the Cloud's
CA, the persistent-storage warning, secrets kept out of its output. A command
that is not an option (here `sh -c ...` or `true`) is exec'd after the same
preparation, so these run in milliseconds without an agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.packaging import run_entrypoint
from tether.paths import AgentPaths

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----"
ANON = "0123456789abcdef" * 4


def _mountinfo(tmp_path: Path, lib_dir: Path, fstype: str, root: str) -> Path:
    """A /proc/self/mountinfo as a container sees it: overlay root, one mount on lib_dir."""
    f = tmp_path / "mountinfo"
    f.write_text(
        "22 1 0:21 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u\n"
        "23 22 0:22 / /proc rw,nosuid - proc proc rw\n"
        f"30 22 8:1 {root} {lib_dir} rw,relatime - {fstype} /dev/sda1 rw\n"
    )
    return f


def test_tether_names_win_over_netdata_names(tmp_path: Path) -> None:
    env = {
        "TETHER_CLAIM_URL": "https://tether.example",
        "NETDATA_CLAIM_URL": "https://netdata.example",
        "NETDATA_CLAIM_ROOMS": "r1,r2",
    }
    r = run_entrypoint(
        tmp_path,
        env,
        "sh",
        "-c",
        'echo "$TETHER_CLAIM_URL|$TETHER_CLAIM_ROOMS|${NETDATA_CLAIM_URL-gone}"',
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "https://tether.example|r1,r2|gone"
    assert "both TETHER_CLAIM_URL and NETDATA_CLAIM_URL are set; using TETHER_CLAIM_URL" in (
        r.stderr
    )


def test_ca_from_pem_text_and_from_a_path(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path / "a")
    r = run_entrypoint(paths.prefix, {"TETHER_CLAIM_CA": PEM}, "true")
    assert r.returncode == 0, r.stderr
    assert paths.cloud_fullchain_file.read_text() == PEM + "\n"
    assert paths.cloud_fullchain_file.stat().st_mode & 0o777 == 0o644

    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(PEM.replace("fake", "other") + "\n")
    other = AgentPaths(tmp_path / "b")
    r = run_entrypoint(other.prefix, {"NETDATA_CLAIM_CA": str(ca_file)}, "true")
    assert r.returncode == 0, r.stderr
    assert other.cloud_fullchain_file.read_text() == ca_file.read_text()
    assert "installed the Cloud's CA" in r.stderr
    # Same CA on the next start: nothing rewritten, nothing said.
    r = run_entrypoint(other.prefix, {"TETHER_CLAIM_CA": str(ca_file)}, "true")
    assert "installed the Cloud's CA" not in r.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/does/not/exist.pem", "neither PEM text"),
        ("not a certificate", "neither PEM text"),
    ],
)
def test_unusable_ca_is_reported_and_the_start_goes_on(
    tmp_path: Path, value: str, expected: str
) -> None:
    paths = AgentPaths(tmp_path)
    r = run_entrypoint(tmp_path, {"TETHER_CLAIM_CA": value}, "true")
    assert r.returncode == 0
    assert expected in r.stderr and "was not installed" in r.stderr
    assert not paths.cloud_fullchain_file.exists()


def test_ca_file_without_a_certificate_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    r = run_entrypoint(tmp_path / "p", {"TETHER_CLAIM_CA": str(bad)}, "true")
    assert f"TETHER_CLAIM_CA names {bad}, which holds no PEM certificate" in r.stderr
    assert not AgentPaths(tmp_path / "p").cloud_fullchain_file.exists()


def test_warns_when_the_library_is_not_a_mounted_volume(tmp_path: Path) -> None:
    # The temporary prefix sits on this machine's root filesystem: no volume.
    r = run_entrypoint(tmp_path, {}, "true")
    lib = AgentPaths(tmp_path).lib_dir
    assert f"{lib} is not a mounted volume" in r.stderr


def test_no_warning_on_a_named_volume(tmp_path: Path) -> None:
    lib = AgentPaths(tmp_path).lib_dir
    mi = _mountinfo(tmp_path, lib, "ext4", "/var/lib/docker/volumes/tetherlib/_data")
    r = run_entrypoint(tmp_path, {"TETHER_MOUNTINFO": str(mi)}, "true")
    assert r.returncode == 0
    assert "warning" not in r.stderr


def test_warns_on_an_anonymous_volume(tmp_path: Path) -> None:
    lib = AgentPaths(tmp_path).lib_dir
    mi = _mountinfo(tmp_path, lib, "ext4", f"/var/lib/docker/volumes/{ANON}/_data")
    r = run_entrypoint(tmp_path, {"TETHER_MOUNTINFO": str(mi)}, "true")
    assert "is an anonymous volume" in r.stderr
    assert "-v tetherlib:/var/lib/tether" in r.stderr


def test_warns_on_a_kubernetes_empty_dir(tmp_path: Path) -> None:
    lib = AgentPaths(tmp_path).lib_dir
    root = "/var/lib/kubelet/pods/5f0c/volumes/kubernetes.io~empty-dir/tetherlib"
    mi = _mountinfo(tmp_path, lib, "ext4", root)
    r = run_entrypoint(tmp_path, {"TETHER_MOUNTINFO": str(mi)}, "true")
    assert "is an emptyDir volume, which is deleted with the pod" in r.stderr


def test_warns_on_tmpfs(tmp_path: Path) -> None:
    lib = AgentPaths(tmp_path).lib_dir
    mi = _mountinfo(tmp_path, lib, "tmpfs", "/")
    r = run_entrypoint(tmp_path, {"TETHER_MOUNTINFO": str(mi)}, "true")
    assert f"{lib} is on tmpfs (mounted at {lib})" in r.stderr


def test_warns_when_only_the_container_layer_holds_it(tmp_path: Path) -> None:
    # Mounted somewhere else, but not above the library: it is on the overlay root.
    mi = _mountinfo(tmp_path, tmp_path / "elsewhere", "ext4", "/x")
    r = run_entrypoint(tmp_path, {"TETHER_MOUNTINFO": str(mi)}, "true")
    assert "is on overlay (mounted at /)" in r.stderr


def test_secrets_never_printed_while_starting(tmp_path: Path) -> None:
    token = "tcl_super-secret-token-value"
    env = {
        "NETDATA_CLAIM_TOKEN": token,
        "TETHER_CLAIM_URL": "https://127.0.0.1:9",
        "TETHER_CLAIM_PROXY": "http://alice:p%40ssw0rd@127.0.0.1:3128",
    }
    # --version: the real agent start path (describe, then exec tether-agent -D).
    r = run_entrypoint(tmp_path, env, "--version")
    assert r.returncode == 0, r.stderr
    assert "tether-agent" in r.stdout
    assert "token set (hidden)" in r.stderr
    assert "proxy http://alice:***@127.0.0.1:3128" in r.stderr
    assert token not in r.stdout + r.stderr
    assert "p%40ssw0rd" not in r.stdout + r.stderr


def test_already_claimed_says_so_and_ignores_the_variables(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    paths.claimed_id_file.write_text("node-42\n")
    env = {"TETHER_CLAIM_TOKEN": "tok", "TETHER_CLAIM_URL": "https://127.0.0.1:9"}
    r = run_entrypoint(tmp_path, env, "--version")
    assert "already claimed as node node-42" in r.stderr
    assert "claim on start: url" not in r.stderr


def test_other_commands_run_in_place_of_the_agent(tmp_path: Path) -> None:
    r = run_entrypoint(tmp_path, {}, "tether-claim", "-h")
    assert r.returncode == 0, r.stderr
    assert "-token" in r.stdout + r.stderr
