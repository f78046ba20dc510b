"""The node's files: one boolean parser for tether.conf and cloud.conf, and the
agent and the claim reading `cloud.d` the same way."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.common import clean_env, command
from tether.claim.cli import run
from tether.claim.exit_codes import Exit
from tether.node.cloud_d import load_claim_state
from tether.node.config import parse_bool
from tether.paths import AgentPaths

ON = ["yes", "true", "on", "1", "auto", "enabled", "YES", " On ", "True"]
OFF = ["no", "false", "off", "0", "disabled", "NO", " Off ", "Disabled"]


@pytest.mark.parametrize("word", ON)
def test_on_words(word: str) -> None:
    assert parse_bool(word, False) is True


@pytest.mark.parametrize("word", OFF)
def test_off_words(word: str) -> None:
    assert parse_bool(word, True) is False


@pytest.mark.parametrize("word", ["", None, "maybe", "y", "n", "2", "on demand"])
def test_any_other_word_keeps_the_default(word: str | None) -> None:
    assert parse_bool(word, True) is True
    assert parse_bool(word, False) is False


def _cloud_conf(paths: AgentPaths, enabled: str) -> None:
    paths.cloud_dir.mkdir(parents=True, exist_ok=True)
    paths.claimed_id_file.write_text("0e0b7a2c-5d4e-4f6a-9b8c-1d2e3f405162\n")
    paths.cloud_conf_file.write_text(
        f"[global]\n    enabled = {enabled}\n    cloud base url = https://127.0.0.1:1\n"
    )


@pytest.mark.parametrize(("word", "enabled"), [("disabled", False), ("off", False), ("yes", True)])
def test_agent_and_claim_agree_on_cloud_enabled(tmp_path: Path, word: str, enabled: bool) -> None:
    paths = AgentPaths(tmp_path)
    _cloud_conf(paths, word)
    assert load_claim_state(paths).enabled is enabled
    err = io.StringIO()
    # Port 1 refuses: an enabled Cloud gets as far as connecting (exit 4).
    code = run(["-token=t", "-noreload", "-url=https://127.0.0.1:1"], paths, err=err)
    assert code == (Exit.CANNOT_CONNECT if enabled else Exit.CLOUD_DISABLED), err.getvalue()
    if not enabled:
        assert f"enabled = {word}" in err.getvalue()


def test_enabled_disabled_stops_the_running_agent_and_the_claim(
    start_agent: AgentLauncher, tmp_path: Path
) -> None:
    """`enabled = disabled`: the agent's link and tether-claim both say disabled."""
    a = start_agent()
    _cloud_conf(a.paths, "disabled")
    assert a.cli("reload-claiming-state").returncode == 0
    assert a.info()["cloud-enabled"] is False
    state = json.loads(a.cli("aclk-state", "json").stdout)
    assert state["state"] == "cloud disabled in cloud.d/cloud.conf"
    claim = subprocess.run(
        [command("tether-claim"), "--prefix", str(a.prefix), "-token=t", "-noreload"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert claim.returncode == Exit.CLOUD_DISABLED, claim.stderr
    assert "enabled = disabled" in claim.stderr


def test_tether_conf_switches_take_the_same_words(start_agent: AgentLauncher) -> None:
    a = start_agent(
        config={
            "plugins": {"cpu": "off"},
            "health": {"enabled": "disabled"},
            "debug": {"failing collector": "on"},
        }
    )
    a.wait_for(lambda: "failing" in a.info()["collector_errors"], what="the failing collector")
    assert a.get("/api/v1/chart", chart="system.cpu").status_code == 404
    assert a.get("/api/v1/chart", chart="system.load").status_code == 200
    assert a.get("/api/v1/alarms").json()["status"] is False
