"""Claim on start, for containers and images: `TETHER_CLAIM_TOKEN` and
`TETHER_CLAIM_URL` (or the `NETDATA_CLAIM_*` names) claim the node once.

Idempotent: a node that has a `claimed_id` is left alone, so restarting a
container never piles up duplicate nodes. A failure is logged and the agent
keeps running unclaimed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from tether.claim.flow import ClaimOptions, claim
from tether.node.cloud_d import ClaimDirError, read_claimed_id, split_rooms
from tether.node.config import AgentConfig
from tether.paths import AgentPaths

PREFIXES = ("TETHER_CLAIM_", "NETDATA_CLAIM_")
LOG = logging.getLogger("tether.claim")


def _get(env: Mapping[str, str], name: str) -> str | None:
    found = _get_named(env, name)
    return found[1] if found else None


def _get_named(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(variable name, value) of the first of TETHER_CLAIM_/NETDATA_CLAIM_ set."""
    for prefix in PREFIXES:
        value = env.get(prefix + name, "").strip()
        if value:
            return prefix + name, value
    return None


def claim_on_start(
    paths: AgentPaths,
    config: AgentConfig,
    env: Mapping[str, str] = os.environ,
    log: logging.Logger = LOG,
) -> bool:
    """Claim when asked through the environment and not claimed yet.

    Returns True when the node is claimed after this call (now or before)."""
    token = _get(env, "TOKEN")
    url = _get(env, "URL")
    if not token or not url:
        if token or url:
            missing = "TETHER_CLAIM_URL" if token else "TETHER_CLAIM_TOKEN"
            log.error("claim on start skipped: %s is not set (both are needed)", missing)
        return False
    proxy_var = _get_named(env, "PROXY")
    proxy = proxy_var[1] if proxy_var else None
    if proxy_var:
        # As in the reference: the claim proxy also carries the link, so the
        # agent's in-memory config uses it for this run.
        config.set("cloud", "proxy", proxy_var[1], origin=f"environment variable {proxy_var[0]}")
    try:
        claimed_id = read_claimed_id(paths)
    except ClaimDirError as exc:
        log.error("claim on start skipped: %s", exc)
        return False
    if claimed_id:
        log.info(
            "claim on start: already claimed as node %s; not claiming again "
            "(remove %s to claim anew)",
            claimed_id,
            paths.cloud_dir,
        )
        return True
    rooms = _get(env, "ROOMS")
    opts = ClaimOptions(
        token=token,
        url=url,
        rooms=split_rooms(rooms) if rooms else None,
        proxy=proxy,
        noreload=True,  # we run inside the agent, before it serves
    )
    result = claim(opts, paths, config=config, env=env)
    if result.claimed:
        log.info("claim on start: node %s claimed into %s", result.claimed_id, result.url)
        return True
    log.error(
        "claim on start failed (exit code %d): %s. The agent keeps running unclaimed; "
        "fix the TETHER_CLAIM_* variables and restart, or run tether-claim.",
        int(result.exit_code),
        result.message.rstrip("."),
    )
    return False
