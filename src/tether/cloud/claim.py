"""The claim endpoint: `PUT /api/v1/spaces/nodes/{id}` (wire format in docs/cloud-api.md,
"Claiming a node").

A node presents a claiming token (the Space's default one or a named one,
tether.cloud.store.claim_tokens), its id, hostname, rooms and RSA public key;
the Cloud answers 204 or a JSON error whose `errorMsgKey` the claim client
maps to an exit code. A new node takes one of the token's uses (atomically)
and gets the token's rooms and labels; a re-claim of a node already in the
Space takes no use. Every attempt is audited; failures are rate limited per
source address (IPv6 per /64).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether.cloud import audit, limits, node_metadata, room_rules
from tether.cloud.body import BadJson, parse_json, read_limited
from tether.cloud.client import client_address
from tether.cloud.db import Database
from tether.cloud.errors import ApiError, error_response
from tether.cloud.limits import Limiter, address_key
from tether.cloud.models import ClaimAudit, ClaimToken, Node, Room, utcnow
from tether.cloud.outage import DATABASE_ERRORS
from tether.cloud.secrets import CLAIM_KIND, aware, same_hash, token_prefix
from tether.cloud.store import claim_tokens as token_store
from tether.cloud.store import labels as label_store
from tether.cloud.store import nodes as node_store
from tether.cloud.store import spaces as space_store
from tether.protocol.states import NodeState

log = logging.getLogger("tether.cloud.claim")

MAX_BODY = 64 * 1024
MAX_HOSTNAME = node_metadata.MAX_HOSTNAME
MIN_RSA_BITS = 2048
MAX_ROOMS = 100


class ClaimError(Exception):
    STATUS = {
        "ErrInvalidNodeID": 400,
        "ErrInvalidNodeName": 400,
        "ErrInvalidRoomID": 400,
        "ErrInvalidPublicKey": 400,
        "ErrBadRequest": 400,
        "ErrForbidden": 403,
        "ErrAlreadyClaimed": 409,
        "ErrRequestTooLarge": 413,
        "ErrInternalServerError": 500,
    }

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.status = self.STATUS[key]


@dataclass
class ClaimRequest:
    node_id: str
    hostname: str
    token: str
    rooms: list[str]
    public_key_pem: str
    public_key_sha256: str
    machine_guid: str | None


def parse_claim(path_id: str, raw: bytes) -> ClaimRequest:
    """Check the request's shape and every field that needs no database."""
    try:
        body = parse_json(raw)
    except BadJson as exc:
        raise ClaimError("ErrBadRequest", str(exc)) from None
    if not isinstance(body, dict):
        raise ClaimError("ErrBadRequest", "The request body must be a JSON object.")

    node_id = path_id.strip().lower()
    try:
        canonical = str(uuid.UUID(node_id))
    except ValueError:
        canonical = ""
    if canonical != node_id:
        raise ClaimError(
            "ErrInvalidNodeID",
            f"The node id {path_id[:80]!r} is not a UUID. Use the id in cloud.d/claimed_id, "
            "or claim with -id=$(uuidgen).",
        )
    node = body.get("node")
    if not isinstance(node, dict):
        raise ClaimError(
            "ErrBadRequest", 'The body needs a "node" object with "id" and "hostname".'
        )
    body_id = node.get("id")
    if body_id is not None and str(body_id).strip().lower() != node_id:
        raise ClaimError(
            "ErrInvalidNodeID", "The node id in the body differs from the one in the URL."
        )

    hostname = node.get("hostname")
    # The one rule for node metadata, also applied (by sanitizing) on the link.
    why = node_metadata.problem(hostname, MAX_HOSTNAME)
    if why is not None or not isinstance(hostname, str):
        raise ClaimError(
            "ErrInvalidNodeName",
            f"The hostname {why}: it must be 1 to {MAX_HOSTNAME} printable characters, "
            "without control characters, escapes or bidi overrides; set a valid one with "
            "-hostname=NAME.",
        )

    rooms = body.get("rooms", [])
    if rooms is None:
        rooms = []
    if isinstance(rooms, str):
        rooms = [r for r in rooms.split(",") if r.strip()]
    if (
        not isinstance(rooms, list)
        or len(rooms) > MAX_ROOMS
        or not all(isinstance(r, str) and 0 < len(r) <= 200 for r in rooms)
    ):
        raise ClaimError(
            "ErrInvalidRoomID", f'"rooms" must be a list of up to {MAX_ROOMS} War Room ids.'
        )

    pem = body.get("publicKey")
    key_bad = ClaimError(
        "ErrInvalidPublicKey",
        f"The public key must be a PEM-encoded RSA public key of at least {MIN_RSA_BITS} bits. "
        "Remove cloud.d/private.pem and cloud.d/public.pem on the node and claim again to "
        "make a new key pair.",
    )
    if not isinstance(pem, str) or len(pem) > 16_384:
        raise key_bad
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise key_bad from None
    if not isinstance(key, rsa.RSAPublicKey) or not MIN_RSA_BITS <= key.key_size <= 16384:
        raise key_bad
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    normalized_pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    token = body.get("token")
    if not isinstance(token, str):
        token = ""
    guid = body.get("mGUID")
    if guid is not None and node_metadata.problem(guid, node_metadata.MAX_ID, False):
        raise ClaimError(
            "ErrBadRequest",
            f'"mGUID" must be the machine GUID string: {node_metadata.MAX_ID} printable '
            "characters at most.",
        )

    return ClaimRequest(
        node_id=node_id,
        hostname=hostname.strip(),
        token=token.strip(),
        rooms=[r.strip() for r in rooms],
        public_key_pem=normalized_pem,
        public_key_sha256=hashlib.sha256(der).hexdigest(),
        machine_guid=guid or None,
    )


def _forbidden() -> ClaimError:
    return ClaimError(
        "ErrForbidden",
        "The claiming token is not valid: it is wrong, expired or was rotated. Ask a Space "
        "admin for the Space's current claiming token.",
    )


def _unusable(tok: ClaimToken, now: dt.datetime) -> ClaimError:
    """Why a token whose secret matched cannot claim (the caller holds the
    secret, so naming the token tells nothing new)."""
    what = f"The claiming token {tok.name!r} (prefix {tok.prefix})"
    why = token_store.state(tok, now)
    if why == "revoked":
        text = f"{what} was revoked" + (" (rotated)" if tok.revoked_by == "rotation" else "")
    elif why == "expired":
        text = f"{what} expired at {aware(tok.expires_at).isoformat() if tok.expires_at else ''}"
    else:
        text = f"{what} is used up: all {tok.max_uses} of its uses are taken"
    return ClaimError(
        "ErrForbidden", f"{text}. Ask a Space admin for a new claiming token, then claim again."
    )


def _resolve_rooms(
    s: Session, space_id: str, wanted: list[str], token_rooms: list[str] | None = None
) -> list[Room]:
    space_rooms = space_store.rooms(s, space_id)
    by_id = {r.id: r for r in space_rooms}
    by_name = {r.name: r for r in space_rooms}
    out = [r for r in space_rooms if r.is_all_nodes]
    # The token's rooms; one deleted since the token was made is skipped.
    out += [by_id[r] for r in token_rooms or [] if r in by_id and by_id[r] not in out]
    for ref in wanted:
        room = by_id.get(ref.lower()) or by_name.get(ref)
        if room is None:
            raise ClaimError(
                "ErrInvalidRoomID",
                f"War Room {ref[:80]!r} is not in the Space this claiming token belongs to. "
                "Copy the room ids from the Cloud's Connect Nodes page.",
            )
        if room not in out:
            out.append(room)
    return out


def apply_claim(
    db: Database, req: ClaimRequest, address: str, now: dt.datetime | None = None
) -> tuple[str, str]:
    """Claim in one write-locked transaction. Returns (result, space_id).
    `now` is the clock's reading (tests pass one to decide expiry)."""
    now = now or utcnow()
    prefix = token_prefix(req.token, CLAIM_KIND)
    if prefix is None:
        raise _forbidden()
    with db.session(write_lock=True) as s:
        # FOR UPDATE orders this claim with a rotation on PostgreSQL; on SQLite
        # the BEGIN IMMEDIATE write lock does.
        tok = s.scalar(select(ClaimToken).where(ClaimToken.prefix == prefix).with_for_update())
        if tok is None or not same_hash(req.token, tok.token_hash):
            raise _forbidden()
        if token_store.state(tok, now) in ("revoked", "expired"):
            raise _unusable(tok, now)
        rooms = _resolve_rooms(s, tok.space_id, req.rooms, token_store.room_ids(tok))
        node = s.get(Node, req.node_id)
        if node is not None:
            if node.space_id != tok.space_id:
                raise ClaimError(
                    "ErrAlreadyClaimed",
                    "This node id is already claimed into another Space. To claim this "
                    "node as a new node, run the claim again with -id=$(uuidgen).",
                )
            if node.public_key_sha256 != req.public_key_sha256:
                raise ClaimError(
                    "ErrAlreadyClaimed",
                    "This node id is already claimed with a different key. To claim this "
                    "node as a new node, run the claim again with -id=$(uuidgen).",
                )
            changed = node.hostname != req.hostname
            node.hostname = req.hostname
            node.machine_guid = req.machine_guid or node.machine_guid
            node.last_address = address
            have = {r.id for r in node.rooms}
            for room in rooms:
                if room.id not in have:
                    node_store.add_to_room(s, node, room)
            node_store.record_event(
                s,
                node,
                "reclaimed",
                detail={"address": address, "token_prefix": prefix, "hostname_changed": changed},
            )
            result = "reclaimed"
        else:
            # The one conditional UPDATE that takes a use: of racing claims on
            # a token with one use left exactly one gets a row.
            if not token_store.take_use(s, tok.id, now):
                s.refresh(tok)
                raise _unusable(tok, now)
            node = Node(
                id=req.node_id,
                space_id=tok.space_id,
                hostname=req.hostname,
                machine_guid=req.machine_guid,
                public_key_pem=req.public_key_pem,
                public_key_sha256=req.public_key_sha256,
                claimed_at=now,
                state=NodeState.UNSEEN,
                state_since=now,
                state_cause="claimed, not connected yet",
                last_address=address,
                # Removed after this long not live (tether.cloud.stale_nodes).
                ephemeral_ttl_seconds=tok.ephemeral_ttl_seconds if tok.ephemeral else None,
            )
            s.add(node)
            s.flush()
            for room in rooms:
                node_store.add_to_room(s, node, room)
            node_store.record_event(
                s, node, "claimed", detail={"address": address, "token_prefix": prefix}
            )
            result = "claimed"
        token_labels = token_store.labels_of(tok)
        if token_labels:
            label_store.set_source(s, node.id, "token", token_labels)
        room_rules.apply_to_node(s, node.id, tok.space_id)
        token_store.record_use(s, tok, node.id, address, result)
        actor = f"token:{tok.name}"
        used = {"prefix": prefix, "node_id": node.id, "address": address, "result": result}
        audit.record(s, tok.space_id, actor, "token.used", tok.name, used)
        audit.record(
            s,
            tok.space_id,
            actor,
            f"node.{result}",
            node.id,
            {"hostname": node.hostname, "token": tok.name, "prefix": prefix, "address": address},
        )
        s.add(
            ClaimAudit(
                token_prefix=prefix,
                node_id=req.node_id,
                space_id=tok.space_id,
                address=address,
                result=result,
            )
        )
        return result, tok.space_id


def audit_failure(db: Database, token: str | None, node_id: str, address: str, key: str) -> None:
    prefix = token_prefix(token, CLAIM_KIND) if token else None
    space_id = None
    try:
        with db.session(write_lock=True) as s:
            if prefix:
                space_id = s.scalar(select(ClaimToken.space_id).where(ClaimToken.prefix == prefix))
            s.add(
                ClaimAudit(
                    token_prefix=prefix,
                    node_id=node_id[:64],
                    space_id=space_id,
                    address=address,
                    result=key,
                )
            )
    except Exception:
        log.exception("could not record a failed claim in the audit table")


def _token_of(raw: bytes) -> str | None:
    """The token field, if any, so even a malformed claim is audited by prefix."""
    try:
        body = parse_json(raw)
    except BadJson:
        return None
    token = body.get("token") if isinstance(body, dict) else None
    return token.strip() if isinstance(token, str) else None


async def claim_node(request: Request) -> Response:
    """Claim a node into the Space of the claiming token (204 on success)."""
    db: Database = request.app.state.db
    limiter: Limiter = request.app.state.claim_limiter  # failures per address (IPv6 per /64)
    address = client_address(request)
    path_id = str(request.path_params["node_id"])

    # Shared by every process in scale-out: asked in a worker thread then.
    wait = await limits.run(limiter.blocking, limiter.retry_after, address_key(address))
    if wait:
        return error_response(
            429,
            "ErrTooManyRequests",
            f"Too many failed claims from {address}; try again in {wait} seconds.",
            headers={"Retry-After": str(wait)},
        )
    token: str | None = None
    try:
        try:
            raw = await read_limited(request, MAX_BODY)
        except ApiError as exc:  # 413: refused, audited and counted like any bad claim
            raise ClaimError(exc.key, exc.message) from None
        token = _token_of(raw)
        req = parse_claim(path_id, raw)
        token = req.token
        try:
            result, space_id = await run_in_threadpool(
                apply_claim, request.app.state.db, req, address
            )
        except IntegrityError:
            # Two first claims of one id at once: the loser retries and sees the node.
            result, space_id = await run_in_threadpool(
                apply_claim, request.app.state.db, req, address
            )
    except ClaimError as exc:
        if exc.key != "ErrInternalServerError":
            await limits.run(limiter.blocking, limiter.add, address_key(address))
        prefix = token_prefix(token, CLAIM_KIND) if token else None
        log.info(
            "claim of node %s from %s refused: %s (token prefix %s)",
            node_metadata.for_log(path_id, 40),
            address,
            exc.key,
            prefix,
        )
        await run_in_threadpool(audit_failure, db, token, path_id, address, exc.key)
        return error_response(exc.status, exc.key, exc.message)
    except DATABASE_ERRORS:
        raise  # 503 ErrDatabaseUnavailable (tether.cloud.outage)
    except Exception:
        log.exception(
            "claim of node %s from %s failed", node_metadata.for_log(path_id, 40), address
        )
        return error_response(
            500,
            "ErrInternalServerError",
            "The Cloud could not process the claim; try again later. The Cloud's log has details.",
        )
    log.info(
        "node %s %s into space %s from %s (token prefix %s)",
        req.node_id,
        result,
        space_id,
        address,
        token_prefix(req.token, CLAIM_KIND),
    )
    return Response(status_code=204)


def routes() -> list[Route]:
    return [Route("/api/v1/spaces/nodes/{node_id}", claim_node, methods=["PUT"])]
