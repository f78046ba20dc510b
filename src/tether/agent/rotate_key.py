"""The agent rotates its key without re-claiming (docs/protocol.md §1a).

`rotate(client)` (from `tether-cli rotate-key`, or `schedule` when the key is
older than `[cloud] key rotation days`):

1. make a new keypair and write it as the pending key (`private.pem.next`,
   atomically, 0600 from its first byte) before the Cloud hears of it;
2. ask for a challenge, decrypt it with the current key (proof of the old
   key), sign the rotation with the new key, POST both and the new public key
   to `/rotate-key` over the link's TLS and proxy settings;
3. on 200 promote the pending key over `private.pem`; on a refusal (4xx)
   drop it; on anything else (network, 5xx: the Cloud may or may not have
   swapped) keep it: the next authentication finds out (`decrypt_challenge`).

One rotation at a time per agent (a lock). The link stays up throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from tether.net.tls import client_ssl_context, proxy_ssl_context
from tether.node import key_files
from tether.paths import AgentPaths
from tether.protocol import auth
from tether.protocol import key_rotation as kr

if TYPE_CHECKING:
    from tether.agent.aclk import AclkClient
    from tether.agent.runtime import Agent

log = logging.getLogger("tether.aclk")

HTTP_TIMEOUT = 15.0
DAY = 86400.0
# How often the schedule looks at the key's age (a stat): soon after a link
# comes up, then hourly; a failed rotation is tried again after RETRY_SECONDS.
CHECK_SECONDS = 5.0
CHECKED_SECONDS = 3600.0
RETRY_SECONDS = 600.0


class RotationFailed(Exception):
    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


_locks: dict[int, asyncio.Lock] = {}


def decrypt_challenge(paths: AgentPaths, private_pem: bytes, sealed: bytes) -> bytes:
    """Decrypt a challenge with the node's key; if only the pending key of an
    interrupted rotation opens it, the Cloud holds that one: promote it."""
    try:
        return auth.decrypt_challenge(private_pem, sealed)
    except auth.AuthError:
        pending = key_files.read_pending(paths)
        if pending is None:
            raise
        try:
            plain = auth.decrypt_challenge(pending, sealed)
        except auth.AuthError:
            raise
        key_files.promote(paths)
        log.warning(
            "ACLK the Cloud holds the key of an interrupted rotation: it is the node's key now"
        )
        return plain


def due(age_seconds: float | None, days: float) -> bool:
    """Whether a key this old is due for rotation (`days` <= 0: never)."""
    return days > 0 and age_seconds is not None and age_seconds >= days * DAY


def rotation_days(raw: str) -> float:
    """`[cloud] key rotation days`: a number of days, 0 (or empty) = never."""
    try:
        value = float(raw.strip() or "0")
    except ValueError:
        raise ValueError(
            f"[cloud] key rotation days = {raw!r} is not a number of days (0 turns it off)"
        ) from None
    if value < 0 or value != value:
        raise ValueError(f"[cloud] key rotation days = {raw!r} must be 0 or more")
    return value


async def rotate(client: AclkClient) -> dict[str, Any]:
    """Rotate the node's key now; what the Cloud registered. Raises RotationFailed."""
    lock = _locks.setdefault(id(client), asyncio.Lock())
    async with lock:
        return await _rotate(client)


async def _rotate(client: AclkClient) -> dict[str, Any]:
    paths, claim = client.paths, client.claim
    node_id, base = claim.claimed_id, (claim.cloud_base_url or "").rstrip("/")
    if not node_id or not base:
        raise RotationFailed("the node is not claimed", "claim it first (tether-claim)")
    try:
        current = paths.private_key_file.read_bytes()
    except OSError as exc:
        raise RotationFailed(
            f"cannot read {paths.private_key_file}: {exc.strerror or exc}", auth.REMOVED_FIX
        ) from None
    new_private, new_public = await asyncio.to_thread(key_files.generate_pair)
    proxy = client.effective_proxy()
    insecure = client.insecure or claim.insecure
    ctx = client_ssl_context(paths, insecure, claim.ca_fingerprint)
    proxy_ssl = proxy_ssl_context(paths) if proxy.kind == "https" else None
    async with httpx.AsyncClient(
        verify=ctx, proxy=proxy.for_httpx(proxy_ssl), trust_env=False, timeout=HTTP_TIMEOUT
    ) as http:
        try:
            r = await http.get(base + auth.challenge_path(node_id))
            _check(r, paths)
            challenge = msgspec.json.decode(r.content, type=auth.ChallengeReply)
            # Also settles an earlier interrupted rotation before its pending
            # key is overwritten (the Cloud may hold that one).
            answer = decrypt_challenge(paths, current, auth.b64decode(challenge.challenge))
            # On disk (0600) before the Cloud hears of it: a crash after the
            # Cloud swapped keys must not lose the only key it accepts.
            await asyncio.to_thread(key_files.write_pending, paths, new_private, new_public)
            proof = kr.sign_proof(new_private, node_id, answer)
            body = kr.RotateRequest(
                response=auth.b64encode(answer),
                challenge_id=challenge.challenge_id or None,
                public_key=new_public.decode(),
                proof=auth.b64encode(proof),
            )
            r = await http.post(
                base + kr.rotate_path(node_id),
                content=msgspec.json.encode(body),
                headers={"Content-Type": "application/json"},
            )
            _check(r, paths)
            reply = msgspec.json.decode(r.content, type=kr.RotateReply)
        except httpx.HTTPError as exc:
            raise RotationFailed(
                f"the Cloud could not be reached ({type(exc).__name__}: {exc}); the new key is "
                "kept until the next authentication shows which key the Cloud holds",
                "try tether-cli rotate-key again later",
            ) from None
        except (auth.AuthError, msgspec.MsgspecError) as exc:
            key_files.drop_pending(paths)
            raise RotationFailed(f"key rotation failed: {exc}", auth.REMOVED_FIX) from None
    await asyncio.to_thread(key_files.promote, paths)
    log.info("ACLK rotated the node's key (now %s)", reply.public_key_sha256[:16])
    return {"public_key_sha256": reply.public_key_sha256, "key_created_at": reply.key_created_at}


def _check(r: httpx.Response, paths: AgentPaths) -> None:
    if r.status_code == 200:
        return
    key: str | None = None
    message = ""
    with contextlib.suppress(msgspec.MsgspecError):
        err = msgspec.json.decode(r.content, type=auth.ErrorReply)
        key, message = err.error_msg_key, err.error_message
    if 400 <= r.status_code < 500:  # refused: the Cloud kept the old key
        key_files.drop_pending(paths)
    kind = auth.classify_auth_error(r.status_code, key)
    raise RotationFailed(
        f"the Cloud refused the key rotation: {key or 'HTTP'} (HTTP {r.status_code}): "
        f"{message or kind.meaning}",
        kind.fix,
    )


async def schedule(
    agent: Agent, client: AclkClient, clock: Callable[[], float] = time.time
) -> None:
    """Rotate the key whenever it is older than `[cloud] key rotation days`
    and the link is up; runs for the agent's lifetime."""
    try:
        days = rotation_days(agent.config.get("cloud", "key rotation days", "0"))
    except ValueError as exc:
        log.error("ACLK %s; automatic key rotation is off", exc)
        return
    if days <= 0:
        return
    while True:
        wait = CHECK_SECONDS
        if client.is_connected and not client.terminal:
            wait = CHECKED_SECONDS
            age = key_files.key_age_seconds(client.paths, clock())
            if due(age, days):
                log.info("ACLK the node's key is %.1f days old: rotating it", (age or 0) / DAY)
                try:
                    await rotate(client)
                except RotationFailed as exc:
                    log.warning("ACLK automatic key rotation failed: %s. %s", exc, exc.fix)
                    wait = RETRY_SECONDS
        await asyncio.sleep(wait)
