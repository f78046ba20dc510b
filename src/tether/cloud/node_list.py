"""The Nodes list's query: search, filters, sort and paging, done in the database.

`parse` turns query parameters into a `NodeQuery` (or a `BadQuery` naming the
parameter and what it allows, answered as 400); `page_select` and
`count_select` build the SQL (WHERE / ORDER BY / LIMIT / OFFSET) so a room of
10,000 nodes is never loaded into Python. No I/O here: the store runs the
statements (tether.cloud.store.nodes.list_page). Used by the UI's Nodes view
(tether.cloud.web.pages) and `GET /api/v1/spaces/{space_id}/nodes`.

Parameters (all optional):
  q              words that must each appear (case-insensitive) in the hostname,
                 node id, connected-from address or OS
  state          live, offline, unseen (repeat or comma-separate for several)
  os             exact OS text (repeatable)
  agent_version  exact agent version (repeatable)
  sort           name, state, state_since, last_seen, os, agent_version
  order          asc or desc
  page           1, 2, ... (with per_page: the page asked for)
  per_page       1..MAX_PER_PAGE (default DEFAULT_PER_PAGE when paged)

Labels (issue 13) and alert severity (issue 14) are not filters yet: their
tables were not committed when this was written.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select

from tether.cloud.models import Node, NodeRoom
from tether.protocol.states import NodeState

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_SEARCH = 200  # characters of `q`
MAX_VALUES = 50  # values of one repeatable filter
MAX_FACETS = 100  # values offered in a filter menu
STATES = tuple(s.value for s in NodeState)
SORTS = ("name", "state", "state_since", "last_seen", "os", "agent_version")
ORDERS = ("asc", "desc")
PARAMS = ("q", "state", "os", "agent_version", "sort", "order", "page", "per_page")


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
    paged = paged_by_default or "page" in params or "per_page" in params
    return NodeQuery(
        q=q,
        states=states,
        os=os_values,
        agent_versions=versions,
        sort=choice("sort", SORTS, "name"),
        order=choice("order", ORDERS, "asc"),
        page=number("page", 1, 10**9),
        per_page=number("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE),
        paged=paged,
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
            )
        )
    if query.states:
        conds.append(Node.state.in_(query.states))
    if query.os:
        conds.append(Node.os.in_(query.os))
    if query.agent_versions:
        conds.append(Node.agent_version.in_(query.agent_versions))
    return conds


def _order(query: NodeQuery) -> list[Any]:
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
    stmt = select(Node).where(and_(*_where(space_id, room_id, query))).order_by(*_order(query))
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
