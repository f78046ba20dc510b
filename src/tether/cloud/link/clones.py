"""Clones: one node identity presented by two hosts, refused instead of flapping.

When a link's Hello comes while the node is live on a link held by a Cloud
process that is still beating, the two hosts are compared by machine-id:

- the same machine-id (a restart: new boot id, or the same boot): the new
  link replaces the old one at once (4009 to the old), as before;
- either machine-id unknown (an agent that does not send it): replaced too,
  since the Cloud cannot tell;
- different machine-ids: the current link stays and the newcomer is closed
  with 4010 (`CLOSE_CLONE`, terminal for the agent, which shows the fix: claim
  the copy as a new node with -id=$(uuidgen)). The conflict (both hosts) is
  kept on the node (`nodes.clone_conflict`) and shown by the API and the node
  page, with one `clone_refused` event per new conflict.

An admin resolves it (`resolve`): `keep` the current host (the notice goes;
the copy stays refused), or `takeover`: the newcomer's machine-id replaces the
current link on its next link (after its agent restarts or reloads), once.

`check` runs inside presence.db_connect's transaction, under the node's row
lock, so two Cloud processes decide one link at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any, Final

from sqlalchemy.orm import Session
from starlette.websockets import WebSocket

from tether.cloud import node_lifecycle
from tether.cloud import node_metadata as meta
from tether.cloud.link import processes
from tether.cloud.models import Node
from tether.cloud.routing import NodeNotConnected
from tether.cloud.secrets import iso
from tether.cloud.store import nodes as node_store
from tether.protocol.frames import Hello, QueryRequest
from tether.protocol.link import CLOSE_CLONE, LinkState
from tether.protocol.states import NodeState

log = logging.getLogger("tether.cloud.link")

ACTIONS: Final = ("keep", "takeover")
# How long the live link has to answer before another host replaces it.
PROBE_SECONDS: Final = 3.0


class NoConflict(ValueError):
    """The node has no clone conflict to resolve."""


def _host(
    address: str | None, machine_id: str | None, boot_id: str | None, hostname: str | None
) -> dict[str, Any]:
    return {
        "address": address,
        "machine_id": machine_id or None,
        "boot_id": boot_id or None,
        "hostname": hostname,
    }


load = node_lifecycle.clone_conflict


def check(
    s: Session,
    node: Node,
    session_id: str,
    hello: Hello,
    address: str,
    now: dt.datetime,
    grace_seconds: float,
    current_unresponsive: bool = False,
) -> dict[str, Any] | None:
    """The conflict if this link must be refused (its identity is live on
    another host); None if it may go ahead (and replace a live link).
    `current_unresponsive`: the live link failed its probe (a dead link whose
    keepalive has not run out yet), so the newcomer replaces it."""
    if not (
        node.state == NodeState.LIVE
        and node.connected_session_id not in (None, session_id)
        and processes.process_alive(s, node.link_process, now, grace_seconds)
    ):
        return None
    mine, theirs = hello.machine_id or "", node.machine_id or ""
    if not mine or not theirs or mine == theirs:
        return None  # a restart of the same host, or the Cloud cannot tell
    if node.clone_takeover_machine_id and node.clone_takeover_machine_id == mine:
        node_store.record_event(
            s,
            node,
            "clone_takeover",
            cause=f"the host {address} (machine-id {mine[:12]}) took this identity over, "
            "as an admin allowed",
            detail={"machine_id": mine, "replaced_machine_id": theirs},
        )
        node.clone_takeover_machine_id = None
        node.clone_conflict = None
        node.clone_conflict_at = None
        return None
    if current_unresponsive:
        return None  # the host moved (the old link is dead): replaced, recorded as a duplicate
    current = _host(node.last_address, theirs, node.boot_id, node.hostname)
    newcomer = _host(address, mine, hello.boot_id, hello.hostname)
    old = load(node)
    same = old is not None and (old.get("newcomer") or {}).get("machine_id") == mine
    conflict = {
        "current": current,
        "newcomer": newcomer,
        "first_refused_at": (old or {}).get("first_refused_at") if same else iso(now),
        "last_refused_at": iso(now),
        "refused": int((old or {}).get("refused", 0)) + 1 if same else 1,
        "decision": (old or {}).get("decision") if same else None,
    }
    node.clone_conflict = json.dumps(conflict)
    node.clone_conflict_at = now
    if not same:  # one event per conflict, not per retry of an older agent
        node_store.record_event(
            s,
            node,
            "clone_refused",
            cause=f"a second host {address} (machine-id {mine[:12]}) presented this identity, "
            f"live on {node.last_address} (machine-id {theirs[:12]}): refused it (4010)",
            detail=conflict,
        )
    return conflict


async def probe(current: Any, hello: Hello, within: float = PROBE_SECONDS) -> bool:
    """Whether the live link `current` (a LiveLink held by this process, or
    None) of another host fails to answer a query `within` seconds: a dead
    link whose keepalive has not run out yet must not keep out a host that
    took the identity over (a moved VM). A link held by another Cloud process
    is not probed (the newcomer is refused; the dead link goes within 1.5
    keepalives and the refused agent links after `reload-claiming-state`)."""
    if current is None or current.closed or current.conn.state is not LinkState.READY:
        return False
    mine, theirs = hello.machine_id or "", current.hello.machine_id or ""
    if not mine or not theirs or mine == theirs:
        return False
    request = QueryRequest(id=0, path="/api/v1/info", timeout_ms=int(within * 1000))
    try:
        await asyncio.wait_for(current.query(request), within)
    except (TimeoutError, NodeNotConnected):
        log.warning(
            "ACLK node %s: the live link from %s did not answer within %g s; a new host "
            "takes the identity over",
            current.node_id,
            current.address,
            within,
        )
        return True
    return False


def close_reason(hostname: str, conflict: dict[str, Any]) -> str:
    mid = str((conflict.get("current") or {}).get("machine_id") or "?")[:12]
    return f"copy of {meta.clean(hostname, 60)}: its identity is live on machine-id {mid}"


async def refuse(ws: WebSocket, node_id: str, hostname: str, conflict: dict[str, Any]) -> None:
    """Close the newcomer's link with 4010; the live one is left alone."""
    newcomer = conflict.get("newcomer") or {}
    log.warning(
        "ACLK node %s: CLONE refused: %s (machine-id %s) presented the identity live on %s "
        "(machine-id %s); closing with %d",
        node_id,
        newcomer.get("address"),
        meta.for_log(str(newcomer.get("machine_id") or "?")),
        (conflict.get("current") or {}).get("address"),
        meta.for_log(str((conflict.get("current") or {}).get("machine_id") or "?")),
        CLOSE_CLONE,
    )
    await ws.close(
        CLOSE_CLONE, close_reason(hostname, conflict).encode()[:123].decode("utf-8", "ignore")
    )


def resolve(s: Session, node: Node, action: str, by: str) -> dict[str, Any]:
    """An admin's decision on the node's conflict: the conflict as it now is."""
    if action not in ACTIONS:
        raise ValueError(f'"action" must be one of {", ".join(ACTIONS)}.')
    conflict = load(node)
    if conflict is None:
        raise NoConflict("This node has no clone conflict to resolve.")
    newcomer = conflict.get("newcomer") or {}
    if action == "keep":
        node.clone_conflict = None
        node.clone_conflict_at = None
        node.clone_takeover_machine_id = None
        cause = f"{by} kept the current host; the copy at {newcomer.get('address')} stays refused"
        result: dict[str, Any] = {"resolved": "keep", "conflict": None}
    else:
        machine_id = newcomer.get("machine_id")
        if not machine_id:
            raise ValueError("The newcomer sent no machine-id; it cannot be told apart.")
        node.clone_takeover_machine_id = str(machine_id)[:64]
        conflict["decision"] = "takeover"
        node.clone_conflict = json.dumps(conflict)
        cause = (
            f"{by} let the host at {newcomer.get('address')} take this identity over on its "
            "next link"
        )
        result = {"resolved": "takeover", "conflict": conflict}
    node_store.record_event(s, node, "clone_resolved", cause=cause, detail={"action": action})
    return result


def text(node: Node) -> str:
    """The node page's notice ("" without a conflict)."""
    conflict = load(node)
    if conflict is None:
        return ""

    def host(side: dict[str, Any]) -> str:
        mid = str(side.get("machine_id") or "unknown")[:12]
        return f"{side.get('hostname') or '?'} at {side.get('address') or '?'} (machine-id {mid})"

    cur, new = conflict.get("current") or {}, conflict.get("newcomer") or {}
    out = (
        f"Two hosts use this node's identity: {host(cur)} is linked; {host(new)} was refused "
        f"{conflict.get('refused', 1)} time(s), last at {conflict.get('last_refused_at')}."
    )
    if conflict.get("decision") == "takeover":
        out += " The refused host takes over on its next link."
    return out
