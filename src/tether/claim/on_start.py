"""Claim automatically, at start and on `tether-cli reload-claiming-state`:

1. the environment: `TETHER_CLAIM_TOKEN` and `TETHER_CLAIM_URL` (or the
   `NETDATA_CLAIM_*` names), with `_ROOMS`, `_PROXY`, `_INSECURE` and
   `TETHER_EXTRA_CLAIM_OPTS` / `NETDATA_EXTRA_CLAIM_OPTS` (tether-claim flags,
   e.g. `-insecure`);
2. else `claim.conf` in the config directory (`tether.node.claim_conf`).

Idempotent: a node that has a `claimed_id` is left alone, so restarting a
container never piles up duplicate nodes. A failure is logged and the agent
keeps running unclaimed.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping

from tether.claim.cli import UsageError, parse_args
from tether.claim.flow import ClaimOptions, claim
from tether.node.claim_conf import ClaimConfError, load_claim_conf
from tether.node.cloud_d import ClaimDirError, read_claimed_id, split_rooms
from tether.node.config import AgentConfig, parse_bool
from tether.paths import AgentPaths

PREFIXES = ("TETHER_CLAIM_", "NETDATA_CLAIM_")
EXTRA_OPTS = ("TETHER_EXTRA_CLAIM_OPTS", "NETDATA_EXTRA_CLAIM_OPTS")
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


def _from_environment(
    env: Mapping[str, str], config: AgentConfig, log: logging.Logger
) -> tuple[ClaimOptions, str] | None:
    token = _get(env, "TOKEN")
    url = _get(env, "URL")
    if not token or not url:
        if token or url:
            missing = "TETHER_CLAIM_URL" if token else "TETHER_CLAIM_TOKEN"
            log.error("claim on start skipped: %s is not set (both are needed)", missing)
        return None
    opts = ClaimOptions()
    for name in EXTRA_OPTS:
        extra = env.get(name, "").strip()
        if extra:
            try:
                opts = parse_args(shlex.split(extra)).options
            except (UsageError, ValueError) as exc:
                log.error("claim on start: %s is not valid (%s); ignoring it", name, exc)
            break
    opts.token, opts.url = token, url
    rooms = _get(env, "ROOMS")
    if rooms:
        opts.rooms = split_rooms(rooms)
    proxy_var = _get_named(env, "PROXY")
    if proxy_var:
        opts.proxy, opts.proxy_source = proxy_var[1], f"environment variable {proxy_var[0]}"
        # As in the reference: the claim proxy also carries the link, for this
        # run too (a restarted container with a new proxy uses the new one).
        config.set("cloud", "proxy", proxy_var[1], origin=opts.proxy_source)
    insecure = _get(env, "INSECURE")
    if insecure is not None:
        opts.insecure = opts.insecure or parse_bool(insecure, False)
    return opts, "the TETHER_CLAIM_* variables"


def _from_claim_conf(paths: AgentPaths, log: logging.Logger) -> tuple[ClaimOptions, str] | None:
    try:
        conf = load_claim_conf(paths.claim_conf_file)
    except ClaimConfError as exc:
        log.error("claim on start skipped: %s", exc)
        return None
    if conf is None:
        return None
    if not conf.token or not conf.url:
        log.error("claim on start skipped: %s needs both url and token in [global]", conf.path)
        return None
    if conf.group_or_world_readable:
        log.warning(
            "%s holds a claiming token but others can read it: chmod 600 %s", conf.path, conf.path
        )
    opts = ClaimOptions(
        token=conf.token,
        url=conf.url,
        rooms=conf.rooms if conf.rooms is not None else [],
        insecure=conf.insecure,
    )
    if conf.proxy:
        opts.proxy, opts.proxy_source = conf.proxy, f"proxy in {conf.path}"
    return opts, str(conf.path)


def claim_on_start(
    paths: AgentPaths,
    config: AgentConfig,
    env: Mapping[str, str] = os.environ,
    log: logging.Logger = LOG,
) -> bool:
    """Claim when asked (environment, then claim.conf) and not claimed yet.

    Returns True when the node is claimed after this call (now or before)."""
    found = _from_environment(env, config, log) or _from_claim_conf(paths, log)
    if found is None:
        return False
    opts, where = found
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
    opts.noreload = True  # we run inside the agent, which reloads itself
    result = claim(opts, paths, config=config, env=env)
    for warning in result.warnings:
        log.warning("claim on start: %s", warning)
    if result.claimed:
        log.info(
            "claim on start: node %s claimed into %s (from %s)",
            result.claimed_id,
            result.url,
            where,
        )
        return True
    log.error(
        "claim on start failed (exit code %d): %s. The agent keeps running unclaimed; "
        "fix %s and restart (or run tether-cli reload-claiming-state), or run tether-claim.",
        int(result.exit_code),
        result.message.rstrip("."),
        where,
    )
    return False
