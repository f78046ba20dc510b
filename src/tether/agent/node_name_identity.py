"""A machine GUID derived from the Kubernetes node name (`TETHER_NODE_NAME`).

A child agent in a DaemonSet keeps no state of its own: its pod may be
re-created on the node with an empty volume at any upgrade. Deriving the GUID
from the node name (uuid5 in a fixed namespace) gives the same identity to
every pod ever run on that node, so its parent (and the Cloud) keep one entry
per node. Written to the GUID file before the agent reads it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from tether.atomic import write_atomic
from tether.paths import AgentPaths

log = logging.getLogger("tether.agent")

ENV = "TETHER_NODE_NAME"
# Fixed forever: changing it would give every Kubernetes node a new identity.
NAMESPACE = uuid.UUID("5b0f3a52-7c1e-4d2a-9a53-6e1f0c2d8b47")


def guid_for_node(node_name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "kubernetes-node:" + node_name))


def pin_from_environment(paths: AgentPaths, environ: Mapping[str, str]) -> str | None:
    """With TETHER_NODE_NAME set, make the GUID file hold the node's GUID."""
    name = environ.get(ENV, "").strip()
    if not name:
        return None
    guid = guid_for_node(name)
    path = paths.machine_guid_file
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if current != guid:
        if current:
            log.warning(
                "machine GUID %s replaced by %s, derived from %s=%s", current, guid, ENV, name
            )
        write_atomic(path, guid + "\n", mode=0o644)
    return guid
