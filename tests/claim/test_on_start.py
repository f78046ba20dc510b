"""Claim on start from TETHER_CLAIM_* / NETDATA_CLAIM_* (no Cloud needed for these paths)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import free_port
from tether.claim.on_start import claim_on_start
from tether.node.config import load_config
from tether.paths import AgentPaths


def test_nothing_set_does_nothing(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    assert claim_on_start(paths, load_config(paths.config_file), env={}) is False
    assert not paths.cloud_dir.exists()


def test_already_claimed_never_reclaims(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    paths.claimed_id_file.write_text("node-1\n")
    env = {"TETHER_CLAIM_TOKEN": "t", "TETHER_CLAIM_URL": f"https://127.0.0.1:{free_port()}"}
    with caplog.at_level(logging.INFO, logger="tether.claim"):
        assert claim_on_start(paths, load_config(paths.config_file), env=env) is True
    assert "already claimed as node node-1" in caplog.text
    assert not paths.private_key_file.exists()  # nothing was attempted


def test_failure_is_logged_and_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = AgentPaths(tmp_path)
    port = free_port()
    env = {"NETDATA_CLAIM_TOKEN": "secret-tok", "NETDATA_CLAIM_URL": f"https://127.0.0.1:{port}"}
    with caplog.at_level(logging.INFO, logger="tether.claim"):
        assert claim_on_start(paths, load_config(paths.config_file), env=env) is False
    assert "claim on start failed (exit code 4)" in caplog.text
    assert f"127.0.0.1:{port} refused" in caplog.text
    assert "secret-tok" not in caplog.text
    assert not paths.claimed_id_file.exists()


def test_half_set_variables_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = AgentPaths(tmp_path)
    with caplog.at_level(logging.INFO, logger="tether.claim"):
        assert (
            claim_on_start(paths, load_config(paths.config_file), env={"TETHER_CLAIM_TOKEN": "t"})
            is False
        )
    assert "TETHER_CLAIM_URL is not set" in caplog.text


def test_claim_proxy_also_becomes_the_link_proxy(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    paths.claimed_id_file.write_text("node-1\n")
    config = load_config(paths.config_file)
    env = {
        "TETHER_CLAIM_TOKEN": "t",
        "TETHER_CLAIM_URL": "https://c.example",
        "TETHER_CLAIM_PROXY": "socks5h://127.0.0.1:1080",
    }
    claim_on_start(paths, config, env=env)
    assert config.get("cloud", "proxy") == "socks5h://127.0.0.1:1080"


def test_claims_once_into_a_real_cloud_then_never_again(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    assert cloud.ca_file
    paths.cloud_fullchain_file.write_bytes(Path(cloud.ca_file).read_bytes())
    env = {
        "TETHER_CLAIM_TOKEN": cloud.claim_token,
        "TETHER_CLAIM_URL": cloud.url,
        "TETHER_CLAIM_ROOMS": ",".join(cloud.room_ids),
    }
    with caplog.at_level(logging.INFO, logger="tether.claim"):
        assert claim_on_start(paths, load_config(paths.config_file), env=env) is True
        node_id = paths.claimed_id_file.read_text().strip()
        key = paths.private_key_file.read_bytes()
        # A restart with the same environment: nothing new is claimed.
        assert claim_on_start(paths, load_config(paths.config_file), env=env) is True
    assert paths.claimed_id_file.read_text().strip() == node_id
    assert paths.private_key_file.read_bytes() == key
    nodes = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").json()
    assert [n["id"] for n in nodes] == [node_id]
    assert f"node {node_id} claimed" in caplog.text
    assert "already claimed" in caplog.text
    assert cloud.claim_token not in caplog.text
