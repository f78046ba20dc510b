"""tether-claim's command line: single-dash flags, usage errors, local checks (no Cloud)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import traceback
from pathlib import Path

import pytest

from tether.agent.main import run_subcommand
from tether.claim.cli import parse_args, run
from tether.paths import AgentPaths


def test_single_and_double_dash_flags() -> None:
    p = parse_args(
        [
            "-token=T",
            "-rooms=a, b,,c",
            "--url=https://c:1",
            "-id",
            "X",
            "-hostname=h",
            "-proxy=none",
            "-noproxy",
            "-insecure",
            "-noreload",
            "-verbose",
            "-user=nobody",
            "--prefix",
            "/tmp/p",
            "--json",
        ]
    )
    o = p.options
    assert (o.token, o.rooms, o.url, o.node_id, o.hostname, o.proxy, o.user) == (
        "T",
        ["a", "b", "c"],
        "https://c:1",
        "X",
        "h",
        "none",
        "nobody",
    )
    assert o.noproxy and o.insecure and o.noreload and o.verbose
    assert p.prefix == "/tmp/p" and p.json


def test_value_containing_equals_sign_is_kept() -> None:
    assert parse_args(["-token=ab==cd"]).options.token == "ab==cd"


@pytest.mark.parametrize(
    "argv", [["-tokn=X"], ["claim"], ["-insecure=yes"], ["-token"], ["--bogus"]]
)
def test_unknown_or_malformed_argument_exits_1_with_usage(argv: list[str], tmp_path: Path) -> None:
    err = io.StringIO()
    code = run(argv, AgentPaths(tmp_path), out=io.StringIO(), err=err)
    assert code == 1
    assert "usage: tether-claim" in err.getvalue()


def test_help_exits_0(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run(["-h"], AgentPaths(tmp_path), out=out) == 0
    assert "-token=TOKEN" in out.getvalue()


def test_missing_url_exits_1_and_says_give_url(tmp_path: Path) -> None:
    err = io.StringIO()
    code = run(["-token=secret-token-value"], AgentPaths(tmp_path), out=io.StringIO(), err=err)
    assert code == 1
    assert "-url=" in err.getvalue()
    assert "secret-token-value" not in err.getvalue()
    assert not (tmp_path / "var/lib/tether/cloud.d/claimed_id").exists()


def test_missing_token_exits_1(tmp_path: Path) -> None:
    err = io.StringIO()
    assert run(["-url=https://cloud.example"], AgentPaths(tmp_path), err=err) == 1
    assert "no claiming token" in err.getvalue()


def test_http_url_rejected(tmp_path: Path) -> None:
    err = io.StringIO()
    assert run(["-token=t", "-url=http://cloud.example"], AgentPaths(tmp_path), err=err) == 1
    assert "not an https URL" in err.getvalue()


def test_bad_proxy_setting_exits_1_naming_it(tmp_path: Path) -> None:
    err = io.StringIO()
    code = run(
        ["-token=t", "-url=https://127.0.0.1:1", "-proxy=ftp://x:1"], AgentPaths(tmp_path), err=err
    )
    assert code == 1
    assert "ftp" in err.getvalue() and "socks5h://" in err.getvalue()


def test_cloud_disabled_exits_3(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    paths.cloud_conf_file.write_text("[global]\n    enabled = no\n")
    err = io.StringIO()
    assert run(["-token=t", "-url=https://127.0.0.1:1"], paths, err=err) == 3
    assert "enabled = yes" in err.getvalue()


def test_cloud_d_not_a_directory_exits_2(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.lib_dir.mkdir(parents=True)
    paths.cloud_dir.write_text("oops")
    err = io.StringIO()
    assert run(["-token=t", "-url=https://127.0.0.1:1"], paths, err=err) == 2
    assert "cloud.d" in err.getvalue() and "not a directory" in err.getvalue()


def test_unreadable_machine_guid_exits_18(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.machine_guid_file.mkdir(parents=True)  # a directory where the file should be
    err = io.StringIO()
    assert run(["-token=t", "-url=https://127.0.0.1:1"], paths, err=err) == 18
    assert "machine GUID" in err.getvalue()


def test_unknown_agent_user_exits_6(tmp_path: Path) -> None:
    err = io.StringIO()
    code = run(
        ["-token=t", "-url=https://127.0.0.1:1", "-user=no-such-user-xyz"],
        AgentPaths(tmp_path),
        err=err,
    )
    assert code == 6
    assert "no-such-user-xyz" in err.getvalue()


def test_wrong_user_exits_6_with_the_fix(request: pytest.FixtureRequest) -> None:
    """Run as a non-root user (nobody) whose name is not the agent's user.

    The interpreter lives under /root here, so instead of a new process the
    check runs in a forked child that dropped its privileges."""
    # pytest's tmp_path sits under a 0700 directory nobody cannot enter.
    prefix = Path(tempfile.mkdtemp(prefix="tether-claim-user-"))
    prefix.chmod(0o777)
    paths = AgentPaths(prefix)
    request.addfinalizer(lambda: shutil.rmtree(prefix, ignore_errors=True))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            err = io.StringIO()
            code = run(
                ["-token=t", "-url=https://127.0.0.1:1", "-user=root"],
                paths,
                out=io.StringIO(),
                err=err,
            )
            os.write(write_fd, err.getvalue().encode())
        except BaseException:
            os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        message = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 6, message
    assert "wrong user" in message and "'nobody'" in message and "sudo" in message
    assert not paths.cloud_dir.exists()


def test_refused_port_exits_4_naming_host_and_port(tmp_path: Path) -> None:
    from tests.fixtures.common import free_port

    port = free_port()
    err = io.StringIO()
    out = io.StringIO()
    code = run(
        ["-token=t", f"-url=https://127.0.0.1:{port}", "--json"],
        AgentPaths(tmp_path),
        out=out,
        err=err,
    )
    assert code == 4
    result = json.loads(out.getvalue())
    assert result["exit_code"] == 4 and not result["claimed"]
    assert f"127.0.0.1:{port} refused" in result["message"]
    cloud_d = AgentPaths(tmp_path).cloud_dir
    assert not (cloud_d / "claimed_id").exists() and not (cloud_d / "cloud.conf").exists()
    assert not [p for p in cloud_d.iterdir() if p.name.endswith(".tmp")]


def test_agent_w_claim_uses_the_same_flags(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run_subcommand("claim -tokn=x", AgentPaths(tmp_path)) == 1
    assert run_subcommand("bogus", AgentPaths(tmp_path)) == 1
    assert run_subcommand("claim -token=t -rooms=a,b", AgentPaths(tmp_path)) == 1  # no URL
    assert "-url=" in capfd.readouterr().err
