"""Node key and cloud.d files: modes, reuse, atomic writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tether.claim import keys
from tether.node import cloud_d
from tether.paths import AgentPaths


def test_generated_key_is_rsa2048_saved_0600_and_reloaded(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    pair = keys.generate()
    keys.save(pair, paths.private_key_file, paths.public_key_file)
    assert stat.S_IMODE(paths.private_key_file.stat().st_mode) == 0o600
    assert paths.public_key_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert paths.private_key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(paths.private_key_file.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    again = keys.load(paths.private_key_file)
    assert again is not None and not again.created
    assert again.public_pem == pair.public_pem


def test_missing_key_loads_none(tmp_path: Path) -> None:
    assert keys.load(tmp_path / "private.pem") is None


def test_corrupt_key_names_file_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "private.pem"
    bad.write_text("not a key")
    with pytest.raises(keys.KeyFileError) as info:
        keys.load(bad)
    assert str(bad) in str(info.value) and "Remove cloud.d" in str(info.value)


def test_write_claimed_files_and_token_removed(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    paths.token_file.write_text("tct_secret\n")
    paths.rooms_file.write_text("r1,r2\n")
    cloud_d.write_claimed(paths, "node-1", "https://cloud.example:8443")
    assert paths.claimed_id_file.read_text().strip() == "node-1"
    assert cloud_d.read_cloud_conf(paths) == {
        "enabled": "yes",
        "cloud base url": "https://cloud.example:8443",
    }
    # The pending claim (token and its rooms) is gone: a later claim with
    # another Space's token never carries these rooms.
    assert cloud_d.read_rooms(paths) == []
    assert not paths.token_file.exists()
    assert not [p for p in paths.cloud_dir.iterdir() if p.name.startswith(".")]


def test_token_and_rooms_files_are_read(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    paths.token_file.write_text("  tok \n")
    paths.rooms_file.write_text("a,b\nc\n")
    assert cloud_d.read_token(paths) == "tok"
    assert cloud_d.read_rooms(paths) == ["a", "b", "c"]


def test_kept_settings_in_cloud_conf_and_mode(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    kept = cloud_d.KeptSettings(
        proxy="http://u:p%40ss@proxy:3128", proxy_source="-proxy", insecure=True, secret=True
    )
    cloud_d.write_claimed(paths, "node-1", "https://cloud.example", kept)
    state = cloud_d.load_claim_state(paths)
    assert state.proxy == "http://u:p%40ss@proxy:3128"
    assert state.proxy_source == "-proxy"
    assert state.insecure is True
    # A proxy password in cloud.conf: only the agent's user may read it.
    assert paths.cloud_conf_file.stat().st_mode & 0o777 == 0o600
    cloud_d.write_claimed(paths, "node-1", "https://cloud.example")
    state = cloud_d.load_claim_state(paths)
    assert (state.proxy, state.insecure) == (None, False)
    assert paths.cloud_conf_file.stat().st_mode & 0o777 == 0o640
