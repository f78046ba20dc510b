"""Key rotation: `POST /api/v1/auth/node/{claim_id}/rotate-key` (docs/protocol.md §1a).

The node answers a challenge from the usual challenge endpoint (proving the
old key) and sends its new public key with a signature by the new key
(`tether.protocol.key_rotation`). The Cloud then, in one transaction, swaps
the key, records when (`nodes.key_created_at`), keeps the old fingerprint
(`previous_key_sha256`), writes a `rekeyed` event and deletes the node's
outstanding challenges and link tokens (all sealed to, or won with, the old
key); the in-memory store forgets them right after. From then only the new key
authenticates. The node's live link stays up.

Counted against the same per-address budgets as authentication
(`node_auth.AuthLimits`); failures are logged like node_auth's, never the
challenge, the answer or the key.
"""

from __future__ import annotations

import binascii
import logging
from dataclasses import dataclass

import msgspec
from sqlalchemy import delete
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether.cloud import audit, limits
from tether.cloud.body import BadJson, check_depth, read_limited
from tether.cloud.client import client_address
from tether.cloud.db import Database
from tether.cloud.errors import error_response
from tether.cloud.models import LinkToken, Node, NodeChallenge, ResumeToken, utcnow
from tether.cloud.node_auth import AuthLimits
from tether.cloud.secret_store import SecretStore
from tether.cloud.secrets import iso
from tether.cloud.store import nodes as node_store
from tether.protocol import auth
from tether.protocol import key_rotation as kr

log = logging.getLogger("tether.cloud.key_rotation")


@dataclass(frozen=True)
class Rotated:
    sha256: str
    created_at: str


class RotationRefused(Exception):
    def __init__(self, status: int, key: str, message: str) -> None:
        super().__init__(message)
        self.status, self.key, self.message = status, key, message


def db_swap_key(db: Database, node_id: str, public_pem: str, sha256: str, address: str) -> Rotated:
    """Register the new key and drop every secret of the old one, in one
    transaction. Raises RotationRefused (node gone, key unchanged)."""
    now = utcnow()
    with db.session(write_lock=True) as s:
        node = s.get(Node, node_id, with_for_update=True)
        if node is None:
            raise RotationRefused(404, "ErrNodeNotFound", f"No node {node_id[:40]} here.")
        if node.public_key_sha256 == sha256:
            raise RotationRefused(
                409,
                "ErrKeyUnchanged",
                "The new key is the node's current key; make a new keypair and send its "
                "public key.",
            )
        old = node.public_key_sha256
        node.previous_key_sha256 = old
        node.public_key_pem = public_pem
        node.public_key_sha256 = sha256
        node.key_created_at = now
        s.execute(delete(NodeChallenge).where(NodeChallenge.node_id == node_id))
        s.execute(delete(LinkToken).where(LinkToken.node_id == node_id))
        # Resume tokens were won with the old key too: the next link proves the new one.
        s.execute(delete(ResumeToken).where(ResumeToken.node_id == node_id))
        node_store.record_event(
            s,
            node,
            "rekeyed",
            cause=f"key rotated by the node from {address}",
            detail={"old_sha256": old, "new_sha256": sha256, "address": address},
        )
        audit.record(
            s,
            node.space_id,
            f"node:{node.id}",
            "node.rekeyed",
            node.hostname,
            {"node_id": node.id, "old_sha256": old, "new_sha256": sha256, "address": address},
        )
        return Rotated(sha256, iso(now) or "")


def _refuse(limiter: AuthLimits, node_id: str, key: str, exc: RotationRefused) -> Response:
    limiter.failed(node_id, key)
    log.warning("key rotation refused for node %s: %s", node_id[:40], exc.key)
    return error_response(exc.status, exc.key, exc.message)


async def rotate_key(request: Request) -> Response:
    """A node replaces its key: the answer to a challenge (old key) and the new
    key's signature over the rotation (docs/protocol.md §1a)."""
    address = client_address(request)
    key = limits.address_key(address)
    node_id = str(request.path_params["claim_id"]).lower()[:64]
    limiter: AuthLimits = request.app.state.auth_limiter
    refused = limiter.admit(key)
    if refused is not None:
        return error_response(
            refused.status,
            refused.key,
            refused.message,
            {"Retry-After": str(refused.retry_after)} if refused.retry_after else None,
        )
    try:
        raw = await read_limited(request, 16384)
        check_depth(raw)
        req = msgspec.json.decode(raw, type=kr.RotateRequest)
        answer = auth.b64decode(req.response)
        proof = auth.b64decode(req.proof)
        public_pem = req.public_key.encode()
        if len(public_pem) > kr.MAX_PUBLIC_KEY_PEM:
            raise auth.AuthError("publicKey is too long")
    except (msgspec.MsgspecError, auth.AuthError, BadJson, binascii.Error) as exc:
        return _refuse(
            limiter,
            node_id,
            key,
            RotationRefused(
                400,
                "ErrBadRequest",
                'Send JSON {"response": "<base64>", "challengeId": "<id>", '
                f'"publicKey": "<PEM>", "proof": "<base64>"}} ({exc}).',
            ),
        )
    # The challenge is used up first, right or wrong, as by an answer to
    # /password; then the new key and its proof are judged.
    store: SecretStore = request.app.state.secret_store
    db: Database = request.app.state.db
    answered = await store.answer_challenge(node_id, req.challenge_id, answer)
    if answered.outcome != "ok":
        exists = await run_in_threadpool(_exists, db, node_id)
        if not exists:
            why = RotationRefused(404, "ErrNodeNotFound", f"No node {node_id[:40]} here.")
        elif answered.outcome == "wrong":
            why = RotationRefused(
                403,
                "ErrIncorrectResponse",
                "The answer to the challenge is wrong: this is not the node's current key.",
            )
        else:
            why = RotationRefused(
                401, "ErrChallengeExpired", "The challenge expired or was used; ask for a new one."
            )
        return _refuse(limiter, node_id, key, why)
    try:
        sha256 = kr.key_sha256(public_pem)
        valid = kr.proof_valid(public_pem, node_id, answer, proof)
    except auth.AuthError as exc:
        return _refuse(
            limiter, node_id, key, RotationRefused(400, "ErrInvalidPublicKey", f"{exc}.")
        )
    if not valid:
        return _refuse(
            limiter,
            node_id,
            key,
            RotationRefused(
                403,
                "ErrInvalidProof",
                "The proof is not the new key's RSA-PSS signature over this rotation "
                "(see docs/protocol.md, key rotation).",
            ),
        )
    try:
        rotated = await run_in_threadpool(
            db_swap_key, db, node_id, public_pem.decode(), sha256, address
        )
    except RotationRefused as exc:
        return _refuse(limiter, node_id, key, exc)
    # The challenges (and the link token just won) belong to the old key.
    await store.forget_node(node_id)
    limiter.succeeded(node_id, key)
    log.info("node %s rotated its key from %s (now %s)", node_id, address, sha256[:16])
    reply = kr.RotateReply(public_key_sha256=rotated.sha256, key_created_at=rotated.created_at)
    return Response(msgspec.json.encode(reply), media_type="application/json")


def _exists(db: Database, node_id: str) -> bool:
    with db.session() as s:
        return s.get(Node, node_id) is not None


def routes() -> list[Route]:
    return [Route(kr.rotate_path("{claim_id}"), rotate_key, methods=["POST"])]
