"""Node labels: `key = value` pairs from three sources.

- `token`: given by the claiming token the node was enrolled with;
- `agent`: the agent's own `[host labels]`, from the link's Hello and
  NodeUpdate (tether.cloud.agent_labels);
- `cloud`: set by a Space manager or admin through the API.

Each source's labels are kept apart (replacing one source's set leaves the
others alone); where two sources give one key, the higher rank wins
(cloud > agent > token). Room rules (tether.cloud.room_rules) match the
winning value in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tether.cloud import node_metadata
from tether.cloud.models import NodeLabel
from tether.protocol import labels as rules

RANK = {"token": 1, "agent": 2, "cloud": 3}
MAX_LABELS = rules.MAX_LABELS
MAX_KEY = rules.MAX_KEY
MAX_VALUE = rules.MAX_VALUE
_KEY = rules.KEY


def check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(
            f"The label key {str(key)[:80]!r} is not valid: use 1 to {MAX_KEY} letters, digits "
            "or _ . : / - (starting with a letter, digit or _)."
        )
    return key


def check_value(value: object, key: str) -> str:
    why = node_metadata.problem(value, MAX_VALUE, required=False)
    if why is not None or not isinstance(value, str):
        raise ValueError(
            f"The value of label {key!r} {why}: use up to {MAX_VALUE} printable characters."
        )
    return value.strip()


def check_labels(labels: object) -> dict[str, str]:
    """Labels from a request: a JSON object of string keys to string values."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ValueError('"labels" must be a JSON object of {"key": "value"} strings.')
    if len(labels) > MAX_LABELS:
        raise ValueError(f"At most {MAX_LABELS} labels, not {len(labels)}.")
    return {check_key(k): check_value(v, k) for k, v in labels.items()}


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """`key=value` strings (the CLI's --label) as labels."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"The label {pair[:80]!r} is not key=value.")
        out[key.strip()] = value
    return check_labels(out)


def set_source(s: Session, node_id: str, source: str, labels: Mapping[str, str]) -> bool:
    """Replace the labels `source` gives the node; True if anything changed."""
    rank = RANK[source]
    have = {
        row.key: row.value
        for row in s.scalars(
            select(NodeLabel).where(NodeLabel.node_id == node_id, NodeLabel.source == source)
        )
    }
    if have == dict(labels):
        return False
    s.execute(delete(NodeLabel).where(NodeLabel.node_id == node_id, NodeLabel.source == source))
    s.add_all(
        NodeLabel(node_id=node_id, key=k, source=source, rank=rank, value=v)
        for k, v in labels.items()
    )
    s.flush()
    return True


def of_node(s: Session, node_id: str) -> list[NodeLabel]:
    """Every label row of a node, by key then rank (highest first)."""
    return list(
        s.scalars(
            select(NodeLabel)
            .where(NodeLabel.node_id == node_id)
            .order_by(NodeLabel.key, NodeLabel.rank.desc())
        )
    )


def effective(rows: list[NodeLabel]) -> dict[str, dict[str, str]]:
    """{key: {"value", "source"}} with the winning source per key."""
    out: dict[str, dict[str, str]] = {}
    for row in sorted(rows, key=lambda r: r.rank):
        out[row.key] = {"value": row.value, "source": row.source}
    return dict(sorted(out.items()))
