"""Key rotation without re-claiming (issue 13, item 3), with a real Cloud and
real agents: `tether-cli rotate-key`, automatic rotation by age, the two
crash points of a rotation, and the attacks the endpoint must refuse."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import Linked, cloud_args, link_agent
from tests.fixtures.peer import FAST, Peer
from tether.node import key_files
from tether.protocol import auth
from tether.protocol import key_rotation as kr


def _peer_of(linked: Linked, private_pem: bytes) -> Peer:
    return Peer(linked.cloud, node_id=linked.node_id, private_pem=private_pem)


def _rotate_by_hand(
    peer: Peer, new_private: bytes, new_public: bytes, **overrides: Any
) -> httpx.Response:
    """The rotation as an independent client does it (docs/protocol.md §1a)."""
    with peer.cloud.client() as http:
        r = peer.challenge(http)
        answer = peer.answer_of(r)
        body = {
            "response": auth.b64encode(answer),
            "challengeId": r.json()["challengeId"],
            "publicKey": new_public.decode(),
            "proof": auth.b64encode(kr.sign_proof(new_private, peer.node_id, answer)),
        }
        body.update(overrides)
        return http.post(kr.rotate_path(peer.node_id), json=body)


def test_rotate_key_refuses_the_old_key_and_the_node_stays_live(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    linked = link_agent(start_cloud(*cloud_args()), start_agent)
    paths = linked.agent.paths
    before = linked.node()
    old_private = paths.private_key_file.read_bytes()
    old = _peer_of(linked, old_private)
    # An attacker with a copy of the old key holds a challenge it already decrypted.
    with linked.cloud.client() as http:
        held = old.challenge(http)
        held_answer = old.answer_of(held)

    proc = linked.agent.cli("rotate-key")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "key rotated" in proc.stdout

    after = linked.node()
    assert after["state"] == "live" and after["session_id"] == before["session_id"]
    assert after["public_key_sha256"] != before["public_key_sha256"]
    assert after["previous_key_sha256"] == before["public_key_sha256"]
    assert after["key_created_at"] > before["key_created_at"]
    assert after["key_age_seconds"] <= before["key_age_seconds"] + 1
    rekeyed = [e for e in after["events"] if e["kind"] == "rekeyed"]
    assert len(rekeyed) == 1 and rekeyed[0]["detail"]["new_sha256"] == after["public_key_sha256"]
    # On the node: the new key in place, 0600, nothing pending.
    new_private = paths.private_key_file.read_bytes()
    assert new_private != old_private
    assert stat.S_IMODE(paths.private_key_file.stat().st_mode) == 0o600
    assert not key_files.pending_private(paths).exists()
    assert kr.key_sha256(paths.public_key_file.read_bytes()) == after["public_key_sha256"]

    # The old key file cannot authenticate: the Cloud's challenges are sealed
    # to the new key, and the challenge it answered before is forgotten.
    with linked.cloud.client() as http:
        with pytest.raises(auth.AuthError):  # so it cannot rotate to a key of its own either
            old.answer_of(old.challenge(http))
        r = old.password(http, held_answer, held.json()["challengeId"])
        assert r.status_code == 401 and r.json()["errorMsgKey"] == "ErrChallengeExpired"
    # The new key does, and the agent links with it after a restart.
    assert _peer_of(linked, new_private).authenticate().link_token
    assert linked.node()["state"] == "live"
    linked.agent.stop()
    linked.agent = start_agent(prefix=linked.agent.prefix)
    poll(lambda: linked.node()["session_id"] not in (None, before["session_id"]), 30, "relinked")
    assert linked.node()["public_key_sha256"] == after["public_key_sha256"]


def test_a_key_older_than_key_rotation_days_is_rotated_automatically(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    linked = link_agent(start_cloud(*cloud_args()), start_agent)
    sha = linked.node()["public_key_sha256"]
    linked.agent.stop()
    key = linked.agent.paths.private_key_file
    three_days_ago = time.time() - 3 * 86400
    os.utime(key, (three_days_ago, three_days_ago))
    linked.agent = start_agent(
        prefix=linked.agent.prefix, config={"cloud": {"key rotation days": "2"}}
    )
    poll(lambda: linked.node()["public_key_sha256"] != sha, 60, "the key rotated")
    node = linked.node()
    assert node["state"] == "live" and node["previous_key_sha256"] == sha
    assert key.stat().st_mtime > three_days_ago + 86400
    assert "rotating it" in linked.agent.log_text()


def test_a_crash_after_the_cloud_swapped_keys_leaves_the_node_able_to_link(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    """The agent wrote its pending key and the Cloud registered it, but the
    agent died before renaming it over private.pem."""
    linked = link_agent(start_cloud(*cloud_args()), start_agent)
    paths = linked.agent.paths
    linked.agent.stop()
    poll(lambda: linked.state() == "offline", 20, "offline")
    new_private, new_public = key_files.generate_pair()
    key_files.write_pending(paths, new_private, new_public)
    r = _rotate_by_hand(
        _peer_of(linked, paths.private_key_file.read_bytes()), new_private, new_public
    )
    assert r.status_code == 200, r.text
    assert r.json()["publicKeySha256"] == kr.key_sha256(new_public)
    linked.agent = start_agent(prefix=linked.agent.prefix)
    linked.wait_state("live", 30)
    assert paths.private_key_file.read_bytes() == new_private  # promoted on first contact
    assert not key_files.pending_private(paths).exists()
    assert "interrupted rotation" in linked.agent.log_text()


def test_a_crash_before_the_cloud_heard_of_the_new_key_keeps_the_old_one(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    linked = link_agent(start_cloud(*cloud_args()), start_agent)
    paths = linked.agent.paths
    old_private = paths.private_key_file.read_bytes()
    linked.agent.stop()
    stale_private, stale_public = key_files.generate_pair()
    key_files.write_pending(paths, stale_private, stale_public)  # never sent
    linked.agent = start_agent(prefix=linked.agent.prefix)
    linked.wait_state("live", 30)
    assert paths.private_key_file.read_bytes() == old_private
    # A later rotation settles it: the stale pending key is replaced, not used.
    proc = linked.agent.cli("rotate-key")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    now = paths.private_key_file.read_bytes()
    assert now not in (old_private, stale_private)
    assert linked.node()["public_key_sha256"] == kr.key_sha256(paths.public_key_file.read_bytes())


def test_the_rotation_endpoint_refuses_bad_proofs_wrong_answers_and_junk(
    start_cloud: Callable[..., Cloud],
) -> None:
    # Every refusal counts as an auth failure: allow more than this test makes.
    cloud = start_cloud(*FAST, "--auth-failures-per-minute", "100")
    peer = Peer(cloud).claim()
    sha = peer.node()["public_key_sha256"]
    new_private, new_public = key_files.generate_pair()
    other_private, _ = key_files.generate_pair()

    # A proof by another key than the one registered: refused, nothing changes.
    with cloud.client() as http:
        r = peer.challenge(http)
        answer = peer.answer_of(r)
        body = {
            "response": auth.b64encode(answer),
            "challengeId": r.json()["challengeId"],
            "publicKey": new_public.decode(),
            "proof": auth.b64encode(kr.sign_proof(other_private, peer.node_id, answer)),
        }
        r = http.post(kr.rotate_path(peer.node_id), json=body)
        assert r.status_code == 403 and r.json()["errorMsgKey"] == "ErrInvalidProof"
        # A wrong answer to a live challenge (someone without the old key).
        r = peer.challenge(http)
        wrong = b"\x00" * 32
        body = {
            "response": auth.b64encode(wrong),
            "challengeId": r.json()["challengeId"],
            "publicKey": new_public.decode(),
            "proof": auth.b64encode(kr.sign_proof(new_private, peer.node_id, wrong)),
        }
        r = http.post(kr.rotate_path(peer.node_id), json=body)
        assert r.status_code == 403 and r.json()["errorMsgKey"] == "ErrIncorrectResponse"
        for junk in (b"{", b"[]", b'{"response": 1}'):
            r = http.post(
                kr.rotate_path(peer.node_id),
                content=junk,
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 400 and r.json()["errorMsgKey"] == "ErrBadRequest", r.text
    assert peer.node()["public_key_sha256"] == sha
    # Not a key, the same key, an unknown node.
    r = _rotate_by_hand(peer, new_private, new_public, publicKey="-----BEGIN nonsense")
    assert r.status_code == 400 and r.json()["errorMsgKey"] == "ErrInvalidPublicKey"
    r = _rotate_by_hand(peer, peer.private_pem, peer.public_pem)
    assert r.status_code == 409 and r.json()["errorMsgKey"] == "ErrKeyUnchanged"
    ghost = Peer(cloud, private_pem=new_private, public_pem=new_public)
    with cloud.client() as http:
        r = http.post(
            kr.rotate_path(ghost.node_id),
            json={"response": "AA==", "publicKey": new_public.decode(), "proof": "AA=="},
        )
    assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNodeNotFound", r.text
    assert peer.node()["public_key_sha256"] == sha
    # And the right rotation works from an independent client.
    r = _rotate_by_hand(peer, new_private, new_public)
    assert r.status_code == 200, r.text
    assert peer.node()["public_key_sha256"] == kr.key_sha256(new_public)
