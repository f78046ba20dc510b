"""Room rules: War Room membership by node label, evaluated in the database.

A rule is `include` or `exclude` with a label key, an operator (`equals`,
`starts_with`, `ends_with`, `contains`, all case-sensitive) and a value. A
node is in a room by rule when its label (the winning source's value, see
tether.cloud.store.labels) matches at least one include rule and no exclude
rule. Rules add and remove only memberships they made (`node_rooms.source =
'rule'`); a manual membership (claim, API, UI) is never taken away by a rule.

Each evaluation is two statements per room, an INSERT ... SELECT and a
DELETE, with the wanted node ids written as SQL set operations over
node_labels (UNION of the include rules, EXCEPT the exclude rules), so no node
is loaded into Python and no plan scans the labels once per node. A room is
re-evaluated after its rules change, and a node's rooms after its labels
change.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    except_,
    exists,
    func,
    literal,
    not_,
    select,
    union,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased

from tether.cloud.models import Node, NodeLabel, NodeRoom, Room, RoomRule
from tether.cloud.secrets import iso
from tether.cloud.store import labels as label_store

ACTIONS = ("include", "exclude")
OPS = ("equals", "starts_with", "ends_with", "contains")
MAX_RULES = 50


def check_rule(body: dict[str, Any]) -> tuple[str, str, str, str]:
    """(action, key, op, value) from a request, else ValueError saying what to send."""
    action = body.get("action", "include")
    op = body.get("op", "equals")
    if action not in ACTIONS:
        raise ValueError(f'"action" must be one of {", ".join(ACTIONS)}.')
    if op not in OPS:
        raise ValueError(f'"op" must be one of {", ".join(OPS)}.')
    key = label_store.check_key(body.get("key"))
    value = label_store.check_value(body.get("value"), key)
    if not value and op != "equals":
        raise ValueError(f'"value" must not be empty with "op": "{op}".')
    return str(action), key, str(op), value


def _value_matches(s: Session, column: Any, op: str, value: str) -> ColumnElement[bool]:
    n = len(value)
    if op == "equals":
        return column == value  # type: ignore[no-any-return]
    if op == "starts_with":
        return func.substr(column, 1, n) == value
    if op == "ends_with":
        return and_(
            func.length(column) >= n, func.substr(column, func.length(column) - n + 1) == value
        )
    # contains: LIKE would ignore case on SQLite and not on PostgreSQL.
    find = func.strpos if s.get_bind().dialect.name == "postgresql" else func.instr
    return find(column, value) > 0


def _rule_nodes(s: Session, rule: RoomRule, only_node: str | None) -> Select[Any]:
    """SQL: the ids of nodes whose winning value of the rule's key matches.
    Driven by the labels (an index on key and value), never a scan of the
    labels per node."""
    label, higher = aliased(NodeLabel), aliased(NodeLabel)
    outranked = exists().where(
        higher.node_id == label.node_id, higher.key == label.key, higher.rank > label.rank
    )
    q = select(label.node_id.label("node_id")).where(
        label.key == rule.key,
        _value_matches(s, label.value, rule.op, rule.value),
        not_(outranked),
    )
    return q if only_node is None else q.where(label.node_id == only_node)


def node_has_label(key: str, value: str | None) -> ColumnElement[bool]:
    """SQL on `Node`: the node's winning value of `key` equals `value` (any
    value when None). For filters over nodes (tether.cloud.bulk_remove)."""
    label, higher = aliased(NodeLabel), aliased(NodeLabel)
    outranked = exists().where(
        higher.node_id == label.node_id, higher.key == label.key, higher.rank > label.rank
    )
    conds = [label.node_id == Node.id, label.key == key, not_(outranked)]
    if value is not None:
        conds.append(label.value == value)
    return exists().where(*conds)


def _wanted(s: Session, rules: list[RoomRule], only_node: str | None) -> Any:
    """SQL: the node ids the rules want in the room (any include, EXCEPT any
    exclude, as set operations), or None when there is no include rule."""
    includes = [_rule_nodes(s, r, only_node) for r in rules if r.action == "include"]
    excludes = [_rule_nodes(s, r, only_node) for r in rules if r.action == "exclude"]
    if not includes:
        return None
    wanted: Any = includes[0] if len(includes) == 1 else union(*includes)
    if excludes:
        # The union as a subquery: SQLite takes no parenthesized compound.
        # (Typed apart: mypy 2.4 crashes inferring select() of an Any column.)
        node_id: ColumnElement[str] = wanted.subquery().c.node_id
        first = wanted if len(includes) == 1 else select(node_id)
        wanted = except_(first, *excludes)
    return wanted.subquery()


def rules_of(s: Session, room_id: str) -> list[RoomRule]:
    return list(
        s.scalars(select(RoomRule).where(RoomRule.room_id == room_id).order_by(RoomRule.created_at))
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _apply(s: Session, room: Room, rules: list[RoomRule], only_node: str | None) -> tuple[int, int]:
    """Bring the room's rule memberships in line with its rules (for one node
    or all of the Space's). Returns (added, removed)."""
    wanted = _wanted(s, rules, only_node)
    added = 0
    if wanted is not None:
        member = exists().where(NodeRoom.node_id == wanted.c.node_id, NodeRoom.room_id == room.id)
        rows = (
            select(wanted.c.node_id, literal(room.id), literal("rule"))
            .join(Node, Node.id == wanted.c.node_id)
            .where(Node.space_id == room.space_id, not_(member))
        )
        # ON CONFLICT DO NOTHING: a concurrent evaluation (a label change while
        # a rule is added) may insert the same membership first on PostgreSQL.
        pg = s.get_bind().dialect.name == "postgresql"
        add = (pg_insert if pg else sqlite_insert)(NodeRoom).from_select(
            ["node_id", "room_id", "source"], rows
        )
        added = _rowcount(s.execute(add.on_conflict_do_nothing()))
    gone = delete(NodeRoom).where(NodeRoom.room_id == room.id, NodeRoom.source == "rule")
    if wanted is not None:
        gone = gone.where(NodeRoom.node_id.not_in(select(_wanted(s, rules, only_node).c.node_id)))
    if only_node is not None:
        gone = gone.where(NodeRoom.node_id == only_node)
    removed = _rowcount(s.execute(gone.execution_options(synchronize_session=False)))
    if added or removed:
        s.expire_all()  # Node.rooms of loaded nodes changed under the session
    return added, removed


def apply_to_room(s: Session, room: Room) -> tuple[int, int]:
    """Re-evaluate one room for every node of its Space; (added, removed)."""
    s.flush()
    return _apply(s, room, rules_of(s, room.id), None)


def apply_to_node(s: Session, node_id: str, space_id: str) -> None:
    """Re-evaluate every rule room of the Space for one node (its labels changed)."""
    s.flush()
    rooms = s.scalars(
        select(Room).where(
            Room.space_id == space_id,
            exists().where(RoomRule.room_id == Room.id),
        )
    ).all()
    for room in rooms:
        _apply(s, room, rules_of(s, room.id), node_id)


def add_rule(s: Session, room: Room, body: dict[str, Any]) -> RoomRule:
    if room.is_all_nodes:
        raise ValueError('The "All nodes" room holds every node; it takes no rules.')
    action, key, op, value = check_rule(body)
    if len(rules_of(s, room.id)) >= MAX_RULES:
        raise ValueError(f"A room has at most {MAX_RULES} rules; remove one first.")
    rule = RoomRule(
        room_id=room.id, space_id=room.space_id, action=action, key=key, op=op, value=value
    )
    s.add(rule)
    apply_to_room(s, room)
    return rule


def remove_rule(s: Session, room: Room, rule_id: str) -> bool:
    try:  # rule ids are UUIDs: anything else never reaches the database
        rule = s.get(RoomRule, str(uuid.UUID(rule_id)))
    except ValueError:
        return False
    if rule is None or rule.room_id != room.id:
        return False
    s.delete(rule)
    apply_to_room(s, room)
    return True


def make_manual(s: Session, node_id: str, room_id: str) -> None:
    """A manual add of a node that was in the room by rule: it stays when its labels change."""
    row = s.get(NodeRoom, (node_id, room_id))
    if row is not None:
        row.source = "manual"


def sources(s: Session, room_id: str) -> dict[str, str]:
    """{node_id: "manual" | "rule"} for the room's members."""
    rows = s.execute(
        select(NodeRoom.node_id, NodeRoom.source).where(NodeRoom.room_id == room_id)
    ).all()
    return {node_id: source for node_id, source in rows}


def rule_json(rule: RoomRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "room_id": rule.room_id,
        "action": rule.action,
        "key": rule.key,
        "op": rule.op,
        "value": rule.value,
        "created_at": iso(rule.created_at),
    }
