"""Composite charts: one chart across every live node of a War Room.

    GET /api/v2/rooms/{room_id}/composite?chart=cpu&after=-300&points=60&deadline=2

The caller must be a member of the room's Space (404 otherwise, 401 without
credentials). The Cloud asks every live node of the room for its own data
through the relay, in parallel (at most `CONCURRENCY` node queries in flight
per Cloud process, shared by all callers), each node with its own deadline
(`deadline` seconds, default 2): a node that is slow, disconnected or answers
nonsense is named in `missed` with the reason, and the others are drawn. The
whole answer takes at most `OVERALL` seconds whatever the room's size; nodes
not asked by then are missed too. Equal requests in flight at once (many
viewers of one room) share one fan-out; nothing is kept once it is answered.

Each node's answer is reduced to one series (the sum of the chart's chosen
dimensions, magnitudes for network) on a common time grid of `points` steps
ending at the newest timestamp any node sent, so no clock of the Cloud's
decides what is drawn. Node answers are untrusted: only numbers are read, and
the hostnames shown come from the Cloud's database (as text in the browser).
Long ranges (over the agent's per-second history) are answered by the agent
from its per-minute tier by itself. Values pass through memory only.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.cloud import children
from tether.cloud.auth import require_user
from tether.cloud.db import Database
from tether.cloud.errors import error_response, not_found
from tether.cloud.models import Node, NodeRoom, Room
from tether.cloud.relay import RelayBusy, inflate, relay_budget
from tether.cloud.routing import NodeNotConnected, RelayTimeout, Router, RoutingError
from tether.cloud.store import spaces as space_store
from tether.protocol.frames import BodyTooLarge, ProtocolError, QueryRequest
from tether.protocol.states import NodeState

CONCURRENCY = 64  # node queries in flight per Cloud process, for all callers
OVERALL = 10.0  # seconds one composite answer may take in all
DEADLINE = 2.0  # default seconds per node
MAX_DEADLINE = 10.0
MAX_ANSWER = 2 * 2**20  # a node's data answer is a few kB; more is refused
MAX_RANGE = 86400  # the agent's per-minute tier holds 24 hours


@dataclass(frozen=True)
class Composite:
    title: str
    units: str
    context: str
    # Dimensions summed per node (None: all of them).
    dimensions: tuple[str, ...] | None = None
    # One chart per interface or disk: ask the node which charts it has first.
    per_instance: bool = False


COMPOSITES: dict[str, Composite] = {
    "cpu": Composite("CPU utilization", "%", "system.cpu"),
    "load": Composite("Load average (1 min)", "load", "system.load", ("load1",)),
    "memory": Composite("RAM used", "MiB", "system.ram", ("used",)),
    "network": Composite("Network traffic (all interfaces)", "kilobits/s", "net.net", None, True),
    "disk": Composite("Disk I/O (all disks)", "KiB/s", "disk.io", None, True),
}


class Missed(Exception):
    """A node's part of the composite is missing, and why (shown to the user)."""


def _gate(app: Any) -> asyncio.Semaphore:
    gate: asyncio.Semaphore | None = getattr(app.state, "composite_gate", None)
    if gate is None:
        gate = app.state.composite_gate = asyncio.Semaphore(CONCURRENCY)
    return gate


def _flights(app: Any) -> dict[tuple[str, str, int, int, int], asyncio.Future[dict[str, Any]]]:
    """The composites being made now: an equal request (same room, chart,
    range, points, deadline) waits for the one in flight instead of asking
    every node again, so many viewers of one room cost one fan-out."""
    flights: dict[tuple[str, str, int, int, int], asyncio.Future[dict[str, Any]]] | None = getattr(
        app.state, "composite_flights", None
    )
    if flights is None:
        flights = app.state.composite_flights = {}
    return flights


# (id, hostname, state, route): a child's queries go through its parent's link.
RoomNode = tuple[str, str, str, children.Route]


def _room_nodes(db: Database, user_id: str, room_id: str) -> list[RoomNode] | None:
    """The room's nodes if `user_id` is a member of its Space, else None."""
    with db.session() as s:
        room = s.execute(
            select(Room.id, Room.space_id, Room.is_all_nodes).where(
                Room.id == room_id, space_store.member_of(user_id, Room.space_id)
            )
        ).first()
        if room is None:
            return None
        q = select(Node.id, Node.hostname, Node.state, Node.parent_id, Node.child_key).where(
            Node.space_id == room.space_id
        )
        if not room.is_all_nodes:  # the all-nodes room holds every node of its Space
            q = q.join(NodeRoom, NodeRoom.node_id == Node.id).where(NodeRoom.room_id == room.id)
        return [
            (r.id, r.hostname, r.state, children.route_of(r.parent_id, r.child_key))
            for r in s.execute(q.order_by(Node.hostname, Node.id))
        ]


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw[:20]!r} is not a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


async def _ask(
    app: Any, node_id: str, via: children.Route, path: str, query: str, within: float
) -> Any:
    """One query to one node through the relay (a child's through its
    parent's link): its JSON answer, or Missed."""
    router: Router = app.state.router
    target, prefix = via if via is not None else (node_id, "")
    request = QueryRequest(id=0, path=prefix + path, query=query)
    try:
        answer = await router.request(target, request, within)
    except NodeNotConnected:
        raise Missed("not connected to the Cloud right now") from None
    except RelayTimeout:
        raise Missed(f"did not answer within {within:g} s") from None
    except RoutingError as exc:
        raise Missed(f"the relay failed: {exc}") from None
    if answer.status != 200:
        raise Missed(f"answered HTTP {answer.status}")
    body = answer.body
    if answer.encoding != "identity":
        budget = relay_budget(app)
        try:
            pieces = await inflate(answer, MAX_ANSWER, budget)
        except RelayBusy:
            raise Missed("the Cloud is relaying too much at once") from None
        except (BodyTooLarge, ProtocolError):
            raise Missed("sent an unusable answer (too large or corrupt)") from None
        try:
            body = b"".join(pieces)
        finally:
            budget.give(sum(len(p) for p in pieces))
    try:
        return json.loads(body)
    except ValueError:
        raise Missed("sent an answer that is not JSON") from None


def _number(v: object) -> bool:
    # NaN and Infinity parse from JSON but could not be sent on as JSON.
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _series(answer: Any, dims: tuple[str, ...] | None, magnitude: bool) -> dict[int, float]:
    """{timestamp: value} from an agent's /api/v1/data answer, checked piece
    by piece: anything but numbers is refused."""
    try:
        labels, rows = answer["result"]["labels"], answer["result"]["data"]
    except (KeyError, TypeError):
        raise Missed("sent an answer without result.labels and result.data") from None
    if not isinstance(labels, list) or not isinstance(rows, list):
        raise Missed("sent an answer without result.labels and result.data")
    wanted = [i for i, name in enumerate(labels) if i and (dims is None or name in dims)]
    out: dict[int, float] = {}
    for row in rows:
        if not isinstance(row, list) or len(row) != len(labels):
            raise Missed("sent rows that do not match its labels")
        t = row[0]
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < 2**40:
            raise Missed("sent a timestamp that is not a whole number")
        for v in row[1:]:  # the whole answer is checked, not only what is summed
            if v is not None and not _number(v):
                raise Missed("sent a value that is not a finite number")
        total, seen = 0.0, False
        for i in wanted:
            v = row[i]
            if v is not None:
                total += abs(v) if magnitude else v
                seen = True
        if seen:
            out[t] = out.get(t, 0.0) + total
    return out


def _data_query(chart: str, after: int, points: int, dims: tuple[str, ...] | None) -> str:
    params = {"chart": chart, "after": str(after), "points": str(points), "format": "json"}
    if dims:
        params["dimensions"] = ",".join(dims)
    return urlencode(params)


async def _node_series(
    app: Any,
    node_id: str,
    via: children.Route,
    spec: Composite,
    after: int,
    points: int,
    deadline: float,
) -> dict[int, float]:
    """One node's part: its series summed over the chart's instances."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + deadline

    def left() -> float:
        remaining = ends - loop.time()
        if remaining <= 0:
            raise Missed(f"did not answer within {deadline:g} s")
        return remaining

    if not spec.per_instance:
        q = _data_query(spec.context, after, points, spec.dimensions)
        answer = await _ask(app, node_id, via, "/api/v1/data", q, left())
        series = _series(answer, spec.dimensions, False)
        if not series:
            raise Missed(f"sent no values of {spec.context} in this range")
        return series
    listing = await _ask(app, node_id, via, "/api/v1/charts", "", left())
    charts = listing.get("charts") if isinstance(listing, dict) else None
    if not isinstance(charts, dict):
        raise Missed("sent a chart list without charts")
    ids = sorted(
        str(cid)
        for cid, c in charts.items()
        if isinstance(c, dict) and c.get("context") == spec.context and cid != "net.lo"
    )[:32]  # a node with hundreds of interfaces is summed over its first 32
    if not ids:
        raise Missed(f"has no {spec.context} chart")
    parts = await asyncio.gather(
        *(
            _ask(app, node_id, via, "/api/v1/data", _data_query(cid, after, points, None), left())
            for cid in ids
        )
    )
    total: dict[int, float] = {}
    for part in parts:
        for t, v in _series(part, None, True).items():
            total[t] = total.get(t, 0.0) + v
    return total


def _grid(
    found: dict[str, dict[int, float]], after: int, points: int
) -> tuple[list[int], int, dict[str, list[float | None]]]:
    """The common time grid (ending at the newest timestamp any node sent)
    and each node's values on it (the average of its points in each step)."""
    newest = max((max(s) for s in found.values() if s), default=0)
    step = max(1, math.ceil(-after / points))
    end = newest - newest % step
    start = end - (points - 1) * step
    times = [start + i * step for i in range(points)]
    values: dict[str, list[float | None]] = {}
    for node_id, series in found.items():
        sums = [0.0] * points
        counts = [0] * points
        for t, v in series.items():
            i = (t - start) // step
            if 0 <= i < points:
                sums[i] += v
                counts[i] += 1
        values[node_id] = [
            round(sums[i] / counts[i], 3) if counts[i] else None for i in range(points)
        ]
    return times, step, values


async def composite(request: Request) -> Response:
    room_id = str(request.path_params["room_id"]).lower()
    user = await require_user(request)
    key = request.query_params.get("chart", "")
    spec = COMPOSITES.get(key)
    if spec is None:
        return error_response(
            400,
            "ErrBadRequest",
            f"chart={key[:40]!r} is not a composite; use one of: " + ", ".join(COMPOSITES) + ".",
        )
    try:
        after = _int(request, "after", -300, -MAX_RANGE, -60)
        points = _int(request, "points", 60, 2, 500)
        deadline_ms = _int(
            request, "deadline_ms", int(DEADLINE * 1000), 100, int(MAX_DEADLINE * 1000)
        )
    except ValueError as exc:
        return error_response(400, "ErrBadRequest", str(exc).capitalize() + ".")
    nodes = await run_in_threadpool(_room_nodes, request.app.state.db, user.user_id, room_id)
    if nodes is None:
        raise not_found("War Room")
    # The caller's access is checked above; the answer is the room's, whoever asks.
    flights = _flights(request.app)
    flight = (room_id, key, after, points, deadline_ms)
    task = flights.get(flight)
    if task is None:
        task = flights[flight] = asyncio.ensure_future(
            _fan_out(request.app, nodes, key, spec, after, points, deadline_ms)
        )
        task.add_done_callback(lambda _: flights.pop(flight, None))
    # shield: a viewer who leaves must not cancel what others wait on.
    return JSONResponse(await asyncio.shield(task))


async def _fan_out(
    app: Any,
    nodes: list[RoomNode],
    key: str,
    spec: Composite,
    after: int,
    points: int,
    deadline_ms: int,
) -> dict[str, Any]:
    """Ask every live node of `nodes` in parallel; the composite's answer."""
    deadline = deadline_ms / 1000
    started = time.monotonic()
    live = [(nid, via) for nid, _, state, via in nodes if state == NodeState.LIVE]
    gate = _gate(app)
    found: dict[str, dict[int, float]] = {}
    missed: dict[str, str] = {}

    async def one(node_id: str, via: children.Route) -> None:
        async with gate:
            try:
                found[node_id] = await _node_series(
                    app, node_id, via, spec, after, points, deadline
                )
            except Missed as exc:
                missed[node_id] = str(exc)

    tasks = [asyncio.ensure_future(one(nid, via)) for nid, via in live]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=OVERALL)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for nid, _ in live:
        if nid not in found and nid not in missed:
            missed[nid] = f"not asked within the composite's {OVERALL:g} s"
    times, step, values = _grid(found, after, points)
    hostnames = {nid: host for nid, host, _, _ in nodes}
    return {
        "chart": key,
        "title": spec.title,
        "units": spec.units,
        "context": spec.context,
        "after": after,
        "points": points,
        "step": step,
        "deadline_ms": deadline_ms,
        "time": times,
        "nodes": [
            {"id": nid, "hostname": hostnames[nid], "values": values[nid]}
            for nid, _ in live
            if nid in values
        ],
        "missed": [
            {"id": nid, "hostname": hostnames[nid], "reason": missed[nid]}
            for nid, _ in live
            if nid in missed
        ],
        "not_live": [
            {"id": nid, "hostname": host, "state": state}
            for nid, host, state, _ in nodes
            if state != NodeState.LIVE
        ],
        "asked": len(live),
        "answered": len(found),
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }


def routes() -> list[Route]:
    return [Route("/api/v2/rooms/{room_id}/composite", composite, methods=["GET"])]
