"""A real agent claiming into a real Cloud over TLS (the Cloud's private CA as
cloud_fullchain.pem), through tether-claim as a user runs it."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fixtures.agent import RunningAgent
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command
from tether.paths import AgentPaths


def trust_cloud(prefix: Path, cloud: Cloud) -> AgentPaths:
    paths = AgentPaths(prefix)
    paths.cloud_dir.mkdir(parents=True, exist_ok=True)
    assert cloud.ca_file
    shutil.copy(cloud.ca_file, paths.cloud_fullchain_file)
    return paths


def claim(
    prefix: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("tether-claim"), "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=60,
        check=False,
    )


def claim_json(prefix: Path, *args: str) -> tuple[int, dict[str, object]]:
    proc = claim(prefix, "--json", "-noreload", *args)
    return proc.returncode, json.loads(proc.stdout)


def nodes_of(cloud: Cloud, space_id: str, token: str | None = None) -> dict[str, dict[str, object]]:
    r = cloud.api("GET", f"/api/v1/spaces/{space_id}/nodes", token=token)
    assert r.status_code == 200, r.text
    return {n["id"]: n for n in r.json()}


def second_space(cloud: Cloud) -> tuple[str, str]:
    r = cloud.api("POST", "/api/v1/spaces", json={"name": f"other-{uuid.uuid4().hex[:6]}"})
    assert r.status_code in (200, 201), r.text
    space_id = r.json()["id"]
    t = cloud.api("GET", f"/api/v1/spaces/{space_id}/claim-token")
    assert t.status_code == 200, t.text
    return space_id, t.json()["token"]


def test_claim_running_agent_then_reclaim_reuses_key(cloud: Cloud, agent: RunningAgent) -> None:
    assert agent.info()["agent-claimed"] is False
    paths = trust_cloud(agent.prefix, cloud)
    proc = claim(
        agent.prefix,
        f"-token={cloud.claim_token}",
        f"-rooms={','.join(cloud.room_ids)}",
        f"-url={cloud.url}",
        "-verbose",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Agent was successfully claimed." in proc.stdout
    assert cloud.claim_token not in proc.stdout + proc.stderr
    # The running agent was told: claimed at once.
    assert agent.info()["agent-claimed"] is True
    node_id = paths.claimed_id_file.read_text().strip()
    assert node_id == paths.machine_guid_file.read_text().strip()
    assert stat.S_IMODE(paths.private_key_file.stat().st_mode) == 0o600
    assert paths.public_key_file.exists()
    conf = paths.cloud_conf_file.read_text()
    assert f"cloud base url = {cloud.url}" in conf and "enabled = yes" in conf
    node = nodes_of(cloud, cloud.space_id)[node_id]
    assert set(cloud.room_ids) <= set(node["rooms"])  # type: ignore[arg-type]
    key_before = paths.private_key_file.read_bytes()

    # Claiming again is harmless and keeps the same key.
    again = claim(agent.prefix, f"-token={cloud.claim_token}", f"-url={cloud.url}")
    assert again.returncode == 0, again.stderr
    assert paths.private_key_file.read_bytes() == key_before
    assert list(nodes_of(cloud, cloud.space_id)) == [node_id]


def test_agent_binary_w_claim(cloud: Cloud, agent: RunningAgent) -> None:
    trust_cloud(agent.prefix, cloud)
    proc = subprocess.run(
        [
            command("tether-agent"),
            "--prefix",
            str(agent.prefix),
            "-W",
            f"claim -token={cloud.claim_token} -rooms={cloud.room_ids[0]} -url={cloud.url}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Agent was successfully claimed." in proc.stdout
    assert agent.info()["agent-claimed"] is True


def test_defaults_from_cloud_d_files_and_no_agent_exit_5(cloud: Cloud, tmp_path: Path) -> None:
    paths = trust_cloud(tmp_path, cloud)
    paths.token_file.write_text(cloud.claim_token + "\n")
    paths.rooms_file.write_text(",".join(cloud.room_ids) + "\n")
    proc = claim(tmp_path, f"-url={cloud.url}")
    # Claimed, but no agent runs: exit 5 and how to fix it.
    assert proc.returncode == 5, proc.stderr
    assert "Agent was successfully claimed." in proc.stdout
    assert "could not be told" in proc.stderr
    assert "tether-cli reload-claiming-state" in proc.stderr
    assert paths.claimed_id_file.exists()
    assert not paths.token_file.exists()  # the stored token is removed after use
    # The URL is now remembered in cloud.conf: a later claim needs no -url=.
    code, out = claim_json(tmp_path, f"-token={cloud.claim_token}", "-user=nobody")
    assert code == 0, out
    # Claimed as root for an agent that runs as nobody: cloud.d is handed over.
    assert paths.cloud_dir.stat().st_uid == 65534
    assert paths.private_key_file.stat().st_uid == 65534
    assert stat.S_IMODE(paths.private_key_file.stat().st_mode) == 0o600


def test_cloud_refusals_map_to_exit_codes(
    cloud: Cloud, tmp_path: Path, start_cloud: Callable[..., Cloud]
) -> None:
    trust_cloud(tmp_path, cloud)
    tok, url = f"-token={cloud.claim_token}", f"-url={cloud.url}"
    cases: list[tuple[list[str], int, str]] = [
        (["-token=tct_wrongwrongwrong", url], 12, "ErrForbidden"),
        ([tok, url, "-rooms=no-such-room"], 10, "ErrInvalidRoomID"),
        ([tok, url, "-id=not-a-uuid"], 8, "ErrInvalidNodeID"),
        ([tok, url, "-hostname="], 9, "ErrInvalidNodeName"),
        ([tok, f"-url={cloud.url}/nope"], 7, ""),
    ]
    paths = AgentPaths(tmp_path)
    for args, code, key in cases:
        got, out = claim_json(tmp_path, *args)
        assert got == code, (args, out)
        assert out["claimed"] is False
        if key:
            assert out["error_key"] == key and key in str(out["message"])
        assert not paths.claimed_id_file.exists() and not paths.cloud_conf_file.exists()
        assert not [p for p in paths.cloud_dir.iterdir() if p.name.endswith(".tmp")]

    # A key the Cloud refuses (RSA-1024) gives 11.
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    paths.private_key_file.write_bytes(
        weak.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    got, out = claim_json(tmp_path, tok, url)
    assert got == 11 and out["error_key"] == "ErrInvalidPublicKey", out
    paths.private_key_file.unlink()

    # Claimed in one Space, the same id cannot join another: 13, with the -id fix.
    assert claim_json(tmp_path, tok, url)[0] == 0
    _, other_token = second_space(cloud)
    got, out = claim_json(tmp_path, f"-token={other_token}", url)
    assert got == 13 and "uuidgen" in str(out["message"]), out


def test_tls_unknown_issuer_named_then_fullchain_or_insecure(cloud: Cloud, tmp_path: Path) -> None:
    tok, url = f"-token={cloud.claim_token}", f"-url={cloud.url}"
    proc = claim(tmp_path, tok, url, "-noreload")
    assert proc.returncode == 4, proc.stderr
    assert "TLS:" in proc.stderr and "issued by 'Tether Cloud CA" in proc.stderr
    assert "cloud_fullchain.pem" in proc.stderr
    assert not AgentPaths(tmp_path).claimed_id_file.exists()

    insecure = claim(tmp_path, tok, url, "-noreload", "-insecure")
    assert insecure.returncode == 0, insecure.stderr
    assert "WARNING: -insecure" in insecure.stderr and "verification is OFF" in insecure.stderr


def test_new_identity_into_another_space_and_failed_attempt_keeps_old(
    cloud: Cloud, tmp_path: Path
) -> None:
    paths = trust_cloud(tmp_path, cloud)
    url = f"-url={cloud.url}"
    assert claim_json(tmp_path, f"-token={cloud.claim_token}", url)[0] == 0
    old_id = paths.claimed_id_file.read_text().strip()
    old_key = paths.private_key_file.read_bytes()
    other_space, other_token = second_space(cloud)

    # A failed new-identity claim leaves the old identity whole.
    new_id = str(uuid.uuid4())
    code, _ = claim_json(tmp_path, "-token=tct_wrongwrongwrong", url, f"-id={new_id}")
    assert code == 12
    assert paths.claimed_id_file.read_text().strip() == old_id
    assert paths.private_key_file.read_bytes() == old_key

    # Upper-case UUIDs (as some uuidgen builds print) are stored in one spelling.
    code, out = claim_json(tmp_path, f"-token={other_token}", url, f"-id={new_id.upper()}")
    assert code == 0, out
    assert paths.claimed_id_file.read_text().strip() == new_id
    assert paths.private_key_file.read_bytes() != old_key
    assert stat.S_IMODE(paths.private_key_file.stat().st_mode) == 0o600
    assert new_id in nodes_of(cloud, other_space)
    assert old_id in nodes_of(cloud, cloud.space_id)  # the old node stays, unreachable


def test_remove_cloud_d_then_reload_unclaims(cloud: Cloud, agent: RunningAgent) -> None:
    paths = trust_cloud(agent.prefix, cloud)
    proc = claim(agent.prefix, f"-token={cloud.claim_token}", f"-url={cloud.url}")
    assert proc.returncode == 0, proc.stderr
    node_id = paths.claimed_id_file.read_text().strip()
    assert agent.info()["agent-claimed"] is True
    shutil.rmtree(paths.cloud_dir)
    reload = agent.cli("reload-claiming-state")
    assert reload.returncode == 0, reload.stderr
    assert agent.info()["agent-claimed"] is False
    node = nodes_of(cloud, cloud.space_id)[node_id]
    assert node["state"] in ("unseen", "offline")


def test_unwritable_key_location_exit_2(cloud: Cloud, tmp_path: Path) -> None:
    paths = trust_cloud(tmp_path, cloud)
    paths.private_key_file.mkdir()  # a directory where the key should be
    proc = claim(tmp_path, f"-token={cloud.claim_token}", f"-url={cloud.url}", "-noreload")
    assert proc.returncode == 2, proc.stderr
    assert "private.pem" in proc.stderr
