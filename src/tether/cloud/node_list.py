"""The Nodes list's query: search, filters, sort and paging, done in the database.

`parse` turns query parameters into a `NodeQuery` (or a `BadQuery` naming the
parameter and what it allows, answered as 400); `page_select` and
`count_select` build the SQL (WHERE / ORDER BY / LIMIT / OFFSET) so a room of
10,000 nodes is never loaded into Python. No I/O here: the store runs the
statements (tether.cloud.store.nodes.list_page). Used by the UI's Nodes view
(tether.cloud.web.pages) and `GET /api/v1/spaces/{space_id}/nodes`.

Parameters (all optional; different parameters are ANDed):
  q              words that must each appear (case-insensitive) in the hostname,
                 node id, connected-from address, OS or a label (`key:value`)
  state          live, offline, unseen (repeat or comma-separate for several)
  os             exact OS text (repeatable)
  agent_version  exact agent version (repeatable)
  label          KEY:VALUE (or KEY=VALUE, for a key that holds a `:`) - the
                 node's label KEY has exactly VALUE; KEY alone - the node has
                 the label. Repeat for several, all of which must hold; never
                 comma-split, as values may hold commas. The label's value is
                 the winning source's (tether.cloud.store.labels), as room
                 rules see it.
  room           a War Room id of the Space (repeatable: in any of them)
  severity       critical, warning, clear: the node's worst active alert
                 (`clear`: none); repeatable, any of them
  sort           name, state, state_since, last_seen, os, agent_version,
                 severity (ascending: critical first)
  order          asc or desc
  page           1, 2, ... (with per_page: the page asked for)
  per_page       1..MAX_PER_PAGE (default DEFAULT_PER_PAGE when paged)

A node's worst active alert (`worst_severity`) is a SQL expression over its
reachability alerts (`alerts`, status active) and its agent's alerts (the
latest `node_events` transition per alert name and chart, active when it went
to warning or critical: the rule of tether.cloud.alerts.views), so the filter
and the Alerts column cost one statement per page, never a query per node.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    exists,
    func,
    literal_column,
    not_,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from tether.cloud.models import Alert, Node, NodeEvent, NodeLabel, NodeRoom, Room
from tether.protocol import labels as label_rules
from tether.protocol.states import NodeState

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_SEARCH = 200  # characters of `q`
MAX_VALUES = 50  # values of one repeatable filter
MAX_FACETS = 100  # values offered in a filter menu
MAX_ROOM_ID = 64
STATES = tuple(s.value for s in NodeState)
SEVERITIES = ("critical", "warning", "clear")
SORTS = ("name", "state", "state_since", "last_seen", "os", "agent_version", "severity")
ORDERS = ("asc", "desc")
PARAMS = (
    "q",
    "state",
    "os",
    "agent_version",
    "label",
    "room",
    "severity",
    "sort",
    "order",
    "page",
    "per_page",
)


class BadQuery(ValueError):
    """A query parameter with a value the list cannot use (answered as 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f'Query parameter "{param}": {message}')
        self.param = param


@dataclass(frozen=True)
class NodeQuery:
    q: str = ""
    states: tuple[str, ...] = ()
    os: tuple[str, ...] = ()
    agent_versions: tuple[str, ...] = ()
    labels: tuple[tuple[str, str | None], ...] = ()  # (key, value or None: has the key)
    rooms: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    sort: str = "name"
    order: str = "asc"
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    paged: bool = True  # False: every matching node (the API without page/per_page)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def params(self) -> dict[str, str | list[str]]:
        """The non-default parameters, to rebuild the URL of this view."""
        out: dict[str, str | list[str]] = {}
        if self.q:
            out["q"] = self.q
        for name, values in (
            ("state", self.states),
            ("os", self.os),
            ("agent_version", self.agent_versions),
            ("label", tuple(k if v is None else f"{k}:{v}" for k, v in self.labels)),
            ("room", self.rooms),
            ("severity", self.severities),
        ):
            if values:
                out[name] = list(values)
        if self.sort != "name":
            out["sort"] = self.sort
        if self.order != "asc":
            out["order"] = self.order
        if self.page != 1:
            out["page"] = str(self.page)
        if self.per_page != DEFAULT_PER_PAGE:
            out["per_page"] = str(self.per_page)
        return out


def parse(params: Mapping[str, Sequence[str]], *, paged_by_default: bool = True) -> NodeQuery:
    """Validate query parameters given as name -> values (repeated names kept).

    `paged_by_default=False` (the API) returns every match unless `page` or
    `per_page` is given, so clients written before paging keep working."""

    def printable(name: str, text: str) -> str:
        # A NUL cannot even be sent to PostgreSQL; no node name holds one.
        if any(unicodedata.category(ch) == "Cc" for ch in text):
            raise BadQuery(name, "control characters (NUL, newline, ...) are not allowed.")
        return text

    def values(name: str) -> tuple[str, ...]:
        out: list[str] = []
        for raw in params.get(name, ()):
            out.extend(printable(name, v.strip()) for v in raw.split(",") if v.strip())
        if len(out) > MAX_VALUES:
            raise BadQuery(name, f"at most {MAX_VALUES} values.")
        return tuple(dict.fromkeys(out))  # unique, in the order given

    def one(name: str, default: str) -> str:
        got = [v.strip() for v in params.get(name, ()) if v.strip()]
        if len(got) > 1:
            raise BadQuery(name, "give it once.")
        return got[0] if got else default

    def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
        value = one(name, default).lower()
        if value not in allowed:
            raise BadQuery(name, f"{value!r} is not one of {', '.join(allowed)}.")
        return value

    def number(name: str, default: int, top: int) -> int:
        text = one(name, str(default))
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= top:
            raise BadQuery(name, f"{text!r} is not a whole number from 1 to {top}.")
        return int(text)

    def label(raw: str) -> tuple[str, str | None]:
        text = raw.strip()
        # `=` first: a key never holds one, while it may hold a `:`.
        sep = "=" if "=" in text else ":"
        key, found, value = text.partition(sep)
        key, value = key.strip(), value.strip()
        why = label_rules.problem(key, value)
        if why is not None:
            raise BadQuery(
                "label",
                f"{text[:80]!r}: {why}; give KEY:VALUE (or KEY=VALUE) for a value, KEY alone "
                "for any value.",
            )
        return key, value if found else None

    q = " ".join(printable("q", one("q", "")).split())
    if len(q) > MAX_SEARCH:
        raise BadQuery("q", f"at most {MAX_SEARCH} characters.")
    states = tuple(dict.fromkeys(v.lower() for v in values("state")))
    for st in states:
        if st not in STATES:
            raise BadQuery("state", f"{st!r} is not one of {', '.join(STATES)}.")
    # Os and agent_version values are node-supplied text compared for equality
    # (bound parameters): any text is a valid filter, matching nothing at worst.
    os_values, versions = values("os"), values("agent_version")
    labels = tuple(dict.fromkeys(label(raw) for raw in params.get("label", ()) if raw.strip()))
    if len(labels) > MAX_VALUES:
        raise BadQuery("label", f"at most {MAX_VALUES} labels.")
    rooms = tuple(dict.fromkeys(v.lower() for v in values("room")))
    for rid in rooms:
        # Checked against the Space's rooms by the store (check_rooms).
        if len(rid) > MAX_ROOM_ID or not all(
            ch.isascii() and (ch.isalnum() or ch == "-") for ch in rid
        ):
            raise BadQuery("room", f"{rid[:80]!r} is not a War Room id (GET .../rooms lists them).")
    severities = tuple(dict.fromkeys(v.lower() for v in values("severity")))
    for sev in severities:
        if sev not in SEVERITIES:
            raise BadQuery("severity", f"{sev!r} is not one of {', '.join(SEVERITIES)}.")
    paged = paged_by_default or "page" in params or "per_page" in params
    return NodeQuery(
        q=q,
        states=states,
        os=os_values,
        agent_versions=versions,
        labels=labels,
        rooms=rooms,
        severities=severities,
        sort=choice("sort", SORTS, "name"),
        order=choice("order", ORDERS, "asc"),
        page=number("page", 1, 10**9),
        per_page=number("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE),
        paged=paged,
    )


class _JsonText(FunctionElement[str]):
    """`detail`'s top-level text field `key` (a constant of this module):
    json_extract on SQLite, ->> on PostgreSQL (node_events.detail is TEXT
    holding JSON, written by store.nodes.record_event)."""

    type = String()
    inherit_cache = True
    name = "json_text"


@compiles(_JsonText)
def _json_text_sqlite(element: _JsonText, compiler: SQLCompiler, **kw: Any) -> str:
    column, key = list(element.clauses)
    return f"json_extract({compiler.process(column, **kw)}, '$.' || {compiler.process(key, **kw)})"


@compiles(_JsonText, "postgresql")
def _json_text_pg(element: _JsonText, compiler: SQLCompiler, **kw: Any) -> str:
    column, key = list(element.clauses)
    return f"(CAST({compiler.process(column, **kw)} AS JSON) ->> {compiler.process(key, **kw)})"


def _json(column: Any, key: str) -> _JsonText:
    # The key is inlined, never bound: `json ->> $1` is ambiguous to PostgreSQL.
    assert key.isidentifier(), key
    return _JsonText(column, literal_column(f"'{key}'"))


def _active(space_id: str, severity: str, *, per_node: bool = False) -> ColumnElement[bool]:
    """SQL on `Node`: it has an active alert of `severity` (warning or critical).

    Two shapes, chosen by what is cheap: over a whole Space (filter, sort) an
    IN over the Space's active alerts, each set computed once (a probe per
    node would read every node's events); for one page (`per_node`) an EXISTS
    per node through node_events' (node_id, at) index, never a scan of the
    Space's events. Reachability alerts are always the IN: the Space's active
    ones are few, and SQLite (without statistics) would probe them through
    the status index once per node."""
    reachability = select(Alert.node_id).where(
        Alert.space_id == space_id, Alert.status == "active", Alert.severity == severity
    )
    ev, newer = aliased(NodeEvent), aliased(NodeEvent)
    superseded = exists().where(
        newer.node_id == ev.node_id,
        newer.space_id == ev.space_id,
        newer.kind == "alert",
        newer.id > ev.id,
        _json(newer.detail, "name") == _json(ev.detail, "name"),
        _json(newer.detail, "chart") == _json(ev.detail, "chart"),
    )
    raised = [
        ev.space_id == space_id,
        ev.kind == "alert",
        _json(ev.detail, "new_status") == severity,
        not_(superseded),
    ]
    agent: ColumnElement[bool] = (
        exists().where(ev.node_id == Node.id, *raised)
        if per_node
        else Node.id.in_(select(ev.node_id).where(*raised))
    )
    return or_(Node.id.in_(reachability), agent)


def worst_severity(space_id: str, *, per_node: bool = False) -> ColumnElement[str]:
    """SQL on `Node`: critical, warning or clear (no active alert)."""
    return case(
        (_active(space_id, "critical", per_node=per_node), literal_column("'critical'")),
        (_active(space_id, "warning", per_node=per_node), literal_column("'warning'")),
        else_=literal_column("'clear'"),
    )


def _has_label(key: str, value: str | None) -> ColumnElement[bool]:
    """SQL on `Node`: its winning value of `key` is `value` (any when None).
    An IN over the labels' (key, value) index: a rare label is a few rows,
    not a probe per node of the Space."""
    label, higher = aliased(NodeLabel), aliased(NodeLabel)
    outranked = exists().where(
        higher.node_id == label.node_id, higher.key == label.key, higher.rank > label.rank
    )
    conds = [label.key == key, not_(outranked)]
    if value is not None:
        conds.append(label.value == value)
    return Node.id.in_(select(label.node_id).where(*conds))


def _label_text_has(word: str) -> ColumnElement[bool]:
    """SQL on `Node`: `word` is in one of its winning labels as `key:value`."""
    label, higher = aliased(NodeLabel), aliased(NodeLabel)
    outranked = exists().where(
        higher.node_id == label.node_id, higher.key == label.key, higher.rank > label.rank
    )
    text = label.key + ":" + label.value
    return exists().where(
        label.node_id == Node.id, text.icontains(word, autoescape=True), not_(outranked)
    )


def _where(space_id: str, room_id: str | None, query: NodeQuery) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [Node.space_id == space_id]
    if room_id is not None:
        # EXISTS on node_rooms' primary key (node_id, room_id): one index
        # probe per node of the Space, cheaper than IN (a room's node list).
        conds.append(exists().where(NodeRoom.node_id == Node.id, NodeRoom.room_id == room_id))
    for word in query.q.split():
        # autoescape: a % or _ typed in the search box is that character.
        conds.append(
            or_(
                Node.hostname.icontains(word, autoescape=True),
                Node.id.icontains(word, autoescape=True),
                Node.last_address.icontains(word, autoescape=True),
                Node.os.icontains(word, autoescape=True),
                _label_text_has(word),
            )
        )
    if query.states:
        conds.append(Node.state.in_(query.states))
    if query.os:
        conds.append(Node.os.in_(query.os))
    if query.agent_versions:
        conds.append(Node.agent_version.in_(query.agent_versions))
    conds.extend(_has_label(k, v) for k, v in query.labels)
    if query.rooms:
        conds.append(exists().where(NodeRoom.node_id == Node.id, NodeRoom.room_id.in_(query.rooms)))
    if query.severities:
        conds.append(worst_severity(space_id).in_(query.severities))
    return conds


def _order(space_id: str, query: NodeQuery) -> list[Any]:
    """ORDER BY: the sort key, then hostname and id so pages never overlap.
    Missing values (never seen, no OS) come last either way, the same on
    SQLite and PostgreSQL (which disagree on where NULLs go)."""
    desc = query.order == "desc"
    name = func.lower(Node.hostname)
    keys: dict[str, Any] = {
        "name": name,
        # Live first when ascending: the order a console reads best.
        "state": case(
            {NodeState.LIVE.value: 0, NodeState.OFFLINE.value: 1}, value=Node.state, else_=2
        ),
        "state_since": Node.state_since,
        "last_seen": Node.last_seen_at,
        "os": Node.os,
        "agent_version": Node.agent_version,
        # Worst first when ascending, like state.
        "severity": case(
            (_active(space_id, "critical"), 0), (_active(space_id, "warning"), 1), else_=2
        ),
    }
    key = keys[query.sort]
    out: list[Any] = []
    if query.sort in ("last_seen", "os", "agent_version"):
        out.append(case((key.is_(None), 1), else_=0))
    out.append(key.desc() if desc else key.asc())
    if query.sort != "name":
        out.append(name.asc())
    out.append(Node.id.desc() if desc and query.sort == "name" else Node.id.asc())
    return out


def page_select(space_id: str, room_id: str | None, query: NodeQuery) -> Select[Node]:
    """The nodes of one page (or all matches when not paged), in order."""
    stmt = (
        select(Node)
        .where(and_(*_where(space_id, room_id, query)))
        .order_by(*_order(space_id, query))
    )
    if query.paged:
        stmt = stmt.limit(query.per_page).offset(query.offset)
    return stmt


def count_select(space_id: str, room_id: str | None, query: NodeQuery) -> Select[int]:
    """How many nodes match, over all pages."""
    return select(func.count(Node.id)).where(and_(*_where(space_id, room_id, query)))


def facet_select(space_id: str, room_id: str | None) -> Select[str | None, str | None, int]:
    """(os, agent_version, nodes) in the scope, for the filter menus: one
    scan for both menus, unfiltered so a menu never hides its own choices."""
    base = _where(space_id, room_id, NodeQuery())
    return (
        select(Node.os, Node.agent_version, func.count(Node.id))
        .where(and_(*base))
        .group_by(Node.os, Node.agent_version)
    )


def severity_select(space_id: str, node_ids: list[str] | None) -> Select[str, str]:
    """(node id, worst active alert severity) of these nodes of the Space (all
    of its nodes when None): the Alerts column of one page, one statement."""
    if node_ids is None:
        return select(Node.id, worst_severity(space_id)).where(Node.space_id == space_id)
    return select(Node.id, worst_severity(space_id, per_node=True)).where(
        Node.space_id == space_id, Node.id.in_(node_ids)
    )


def rooms_select(space_id: str, query: NodeQuery) -> Select[str]:
    """Which of the query's room ids are War Rooms of the Space."""
    return select(Room.id).where(Room.space_id == space_id, Room.id.in_(query.rooms))


def check_rooms(space_id: str, query: NodeQuery, found: set[str]) -> None:
    """BadQuery when a `room` is not one of the Space's (from rooms_select)."""
    for rid in query.rooms:
        if rid not in found:
            raise BadQuery(
                "room",
                f"{rid!r} is not a War Room of this Space; "
                f"GET /api/v1/spaces/{space_id}/rooms lists them.",
            )
