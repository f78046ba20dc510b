"""The agent's local HTTP API (Netdata v1 field names where one exists).

Every endpoint is a plain function of the agent and the query parameters, so
the link can answer a Cloud request in-process with `local_query()` exactly as
the HTTP server would. See docs/api.md.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tether import __version__
from tether.agent.access import AccessList
from tether.agent.claim_key import ClaimKey
from tether.agent.dashboard_claim import claim_endpoint
from tether.agent.runtime import Agent
from tether.agent.storage import Chart, QueryError, Store, query

JSON = "application/json"
Params = Mapping[str, str]
Result = tuple[int, str, bytes]


def _json(obj: Any, status: int = 200) -> Result:
    return status, JSON, json.dumps(obj, separators=(",", ":")).encode()


def _error(status: int, message: str) -> Result:
    return _json({"error": message}, status)


def _num(v: float) -> float | None:
    return None if v != v or math.isinf(v) else v


class HostView(Protocol):
    """What the chart and data endpoints read: the agent itself, or a child
    streamed to it (`tether.agent.stream_parent.ChildHost`)."""

    @property
    def store(self) -> Store: ...
    @property
    def hostname(self) -> str: ...
    @property
    def update_every(self) -> int: ...
    @property
    def os_info(self) -> Mapping[str, str]: ...
    @property
    def alert_count(self) -> int: ...


# -- endpoints -------------------------------------------------------------


def info(agent: Agent, params: Params) -> Result:
    link = agent.link_status()
    counts = agent.health.counts()
    summary = agent.charts_summary()
    return _json(
        {
            "version": __version__,
            "uid": agent.machine_guid,
            "machine_guid": agent.machine_guid,
            "hostname": agent.hostname,
            "mirrored_hosts": [agent.hostname, *_child_names(agent)],
            "alarms": counts,
            **agent.os_info,
            "collectors": [
                {"plugin": "tether.agent", "module": name} for name in summary["collectors"]
            ],
            "collector_errors": dict(agent.collector_errors),
            "update_every": agent.update_every,
            "history": summary["history"],
            "charts-count": summary["charts_count"],
            "metrics-count": summary["dimensions_count"],
            "collection-cycle-ms": round(agent.last_cycle_ms, 3),
            "uptime": int(time.time() - agent.started),
            "cloud-enabled": agent.claim.enabled,
            # The link is part of the agent, never an optional extra.
            "cloud-available": True,
            "agent-claimed": bool(agent.claim.claimed_id),
            "aclk-available": bool(link.get("connected")),
            # Why the link is down and what fixes it (None while connected).
            "aclk-error": None if link.get("connected") else link.get("last_error"),
            "aclk-fix": None if link.get("connected") else link.get("fix"),
            # The link's effective proxy (password masked) and where it came from.
            "cloud-proxy": link.get("proxy"),
            "cloud-proxy-source": link.get("proxy_source"),
            "claim-id": agent.claim.claimed_id,
            "claimed_id": agent.claim.claimed_id,
            "cloud": {"base_url": agent.claim.cloud_base_url, "link": link},
            # [stream]: this agent's children (a parent) or its parent (a child).
            "stream": agent.stream_status(),
        }
    )


def _child_names(agent: Agent) -> list[str]:
    parent = agent.stream_parent
    return [c.hostname for c in parent.children.values()] if parent is not None else []


def chart_json(chart: Chart) -> dict[str, Any]:
    return {
        "id": chart.id,
        "name": chart.id,
        "type": chart.type,
        "family": chart.family,
        "context": chart.context,
        "title": chart.title,
        "priority": chart.priority,
        "plugin": "tether.agent",
        "units": chart.units,
        "data_url": f"/api/v1/data?chart={chart.id}",
        "chart_type": chart.chart_type,
        "duration": (chart.last_t - chart.oldest_t + chart.update_every) if chart.last_t else 0,
        "first_entry": chart.oldest_t,
        "last_entry": chart.last_t,
        "update_every": chart.update_every,
        "dimensions": {d.id: {"name": d.name} for d in chart.dimensions},
    }


def charts(agent: HostView, params: Params) -> Result:
    s = agent.store
    return _json(
        {
            "hostname": agent.hostname,
            "version": __version__,
            "os": agent.os_info["kernel_name"].lower(),
            "update_every": agent.update_every,
            "history": s.size * s.update_every,
            "memory_mode": "ram",
            "charts": {
                c.id: chart_json(c)
                for c in sorted(s.charts.values(), key=lambda c: (c.priority, c.id))
            },
            "charts_count": len(s.charts),
            "dimensions_count": s.dimension_count(),
            "alarms_count": agent.alert_count,
        }
    )


def _chart_param(agent: HostView, params: Params) -> Chart | Result:
    cid = params.get("chart", "").strip()
    if not cid:
        return _error(400, "missing the chart= parameter (a chart id from /api/v1/charts)")
    chart = agent.store.charts.get(cid)
    if chart is None:
        return _error(404, f"chart {cid!r} not found; /api/v1/charts lists the charts")
    return chart


def chart(agent: HostView, params: Params) -> Result:
    c = _chart_param(agent, params)
    if not isinstance(c, Chart):
        return c
    return _json(chart_json(c))


def _int_param(params: Params, name: str, default: int) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    try:
        return int(float(raw))
    except ValueError as exc:
        raise QueryError(f"{name}={raw!r} is not a number") from exc


def data(agent: HostView, params: Params) -> Result:
    c = _chart_param(agent, params)
    if not isinstance(c, Chart):
        return c
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        return _error(400, f"format={fmt!r} is not supported; use json or csv")
    try:
        dims = params.get("dimensions") or params.get("dimension") or ""
        res = query(
            c,
            now=int(time.time()),
            after=_int_param(params, "after", -600),
            before=_int_param(params, "before", 0),
            points=_int_param(params, "points", 0),
            group=params.get("group", "average"),
            dimensions=[x for x in re.split(r"[,|]", dims) if x] or None,
        )
    except QueryError as exc:
        return _error(400, str(exc))
    names = [d.name for d in res.dimensions]
    options = set(re.split(r"[,| ]", params.get("options", "")))
    if "flip" in options:  # oldest first, as charting libraries want
        res.rows.reverse()
    if fmt == "csv":
        lines = [",".join(["time", *names])]
        for t, row in res.rows:
            lines.append(",".join([str(t), *("" if v is None else repr(round(v, 7)) for v in row)]))
        return 200, "text/csv; charset=utf-8", ("\r\n".join(lines) + "\r\n").encode()
    rows = [[t, *(None if v is None else round(v, 7) for v in row)] for t, row in res.rows]
    latest = [_num(d.last_value) for d in res.dimensions]
    values = [v for _, row in res.rows for v in row if v is not None]
    return _json(
        {
            "api": 1,
            "id": c.id,
            "name": c.id,
            "view_update_every": res.view_update_every,
            "update_every": c.update_every,
            "first_entry": c.oldest_t,
            "last_entry": c.last_t,
            "before": res.before,
            "after": res.after,
            "group": params.get("group", "average"),
            "tier": res.tier,
            "dimension_names": names,
            "dimension_ids": [d.id for d in res.dimensions],
            "latest_values": latest,
            "view_latest_values": (
                rows[-1 if "flip" in options else 0][1:] if rows else [None] * len(names)
            ),
            "dimensions": len(names),
            "points": len(rows),
            "format": "json",
            "result": {"labels": ["time", *names], "data": rows},
            "min": min(values) if values else None,
            "max": max(values) if values else None,
        }
    )


_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _prom_name(*parts: str) -> str:
    return "_".join(_NAME_BAD.sub("_", p) for p in parts if p)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def allmetrics(agent: HostView, params: Params) -> Result:
    fmt = params.get("format", "prometheus")
    if fmt not in ("prometheus", "json"):
        return _error(400, f"format={fmt!r} is not supported; use prometheus or json")
    if fmt == "json":
        out = {
            c.id: {
                "name": c.id,
                "units": c.units,
                "last_updated": c.last_t,
                "dimensions": {
                    d.id: {"name": d.name, "value": _num(d.last_value)} for d in c.dimensions
                },
            }
            for c in agent.store.charts.values()
        }
        return _json(out)
    # One metric family per context+units, all its samples together.
    families: dict[str, list[str]] = {}
    helps: dict[str, str] = {}
    host = _label(agent.hostname)
    for c in agent.store.charts.values():
        name = _prom_name(
            "tether", c.context, c.units.replace("/", "_per_").replace("%", "pct"), "average"
        )
        helps.setdefault(name, f"{c.title} ({c.units})")
        lines = families.setdefault(name, [])
        for d in c.dimensions:
            v = d.last_value
            if v != v:
                continue
            lines.append(
                f'{name}{{chart="{_label(c.id)}",family="{_label(c.family)}",'
                f'dimension="{_label(d.name)}",instance="{host}"}} {v!r} {c.last_t * 1000}'
            )
    text: list[str] = []
    for name, lines in families.items():
        if not lines:
            continue
        text.append(f"# HELP {name} {helps[name].replace(chr(92), chr(92) * 2)}")
        text.append(f"# TYPE {name} gauge")
        text.extend(lines)
    return 200, "text/plain; version=0.0.4; charset=utf-8", ("\n".join(text) + "\n").encode()


def alarms(agent: Agent, params: Params) -> Result:
    all_alerts = "all" in params
    return _json(
        {
            "hostname": agent.hostname,
            "latest_alarm_log_unique_id": agent.health.transitions[-1]["unique_id"]
            if agent.health.transitions
            else 0,
            "status": agent.health.enabled,
            "now": int(time.time()),
            "alarms": agent.health.alert_dicts(all_alerts),
            "transitions": list(agent.health.transitions)[-50:][::-1],
        }
    )


def alarm_log(agent: Agent, params: Params) -> Result:
    try:
        after = _int_param(params, "after", 0)
    except QueryError as exc:
        return _error(400, str(exc))
    items = [t for t in agent.health.transitions if int(str(t["unique_id"])) > after]
    return _json(items[::-1])


ENDPOINTS: dict[str, Callable[[Agent, Params], Result]] = {
    "/api/v1/info": info,
    "/api/v1/charts": charts,
    "/api/v1/chart": chart,
    "/api/v1/data": data,
    "/api/v1/allmetrics": allmetrics,
    "/api/v1/alarms": alarms,
    "/api/v1/alarm_log": alarm_log,
}


def child_alarms(child: HostView, params: Params) -> Result:
    """A child's alerts are not streamed (its own agent evaluates them): none
    here, so the Cloud's node page of a child says so instead of failing."""
    return _json(
        {
            "hostname": child.hostname,
            "latest_alarm_log_unique_id": 0,
            "status": False,
            "now": int(time.time()),
            "alarms": {},
            "transitions": [],
        }
    )


def child_alarm_log(child: HostView, params: Params) -> Result:
    return _json([])


# A child streamed to this agent answers these, at /host/CHILD/api/v1/...
CHILD_ENDPOINTS: dict[str, Callable[[HostView, Params], Result]] = {
    "/api/v1/charts": charts,
    "/api/v1/chart": chart,
    "/api/v1/data": data,
    "/api/v1/allmetrics": allmetrics,
    "/api/v1/alarms": child_alarms,
    "/api/v1/alarm_log": child_alarm_log,
}


def child_query(agent: Agent, path: str, params: Params) -> Result:
    """`/host/CHILD/api/v1/...`: CHILD is a child's hostname or machine GUID."""
    name, _, rest = path.removeprefix("/host/").partition("/")
    parent = agent.stream_parent
    child = parent.lookup(name) if parent is not None and name else None
    if child is None:
        return _error(
            404,
            f"no child {name[:80]!r} streams to this agent; /api/v1/info mirrored_hosts lists "
            "the children",
        )
    rest = "/" + rest.rstrip("/")
    if rest == "/api/v1/info":
        return _json(child.info(agent.hostname))
    handler = CHILD_ENDPOINTS.get(rest)
    if handler is None:
        known = ", ".join(["/api/v1/info", *CHILD_ENDPOINTS])
        return _error(404, f"unknown child API path {rest[:80]!r}; a child answers {known}")
    return handler(child, params)


def _flat(query_string: str) -> dict[str, str]:
    parsed = parse_qs(query_string, keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def local_query(agent: Agent, path: str, query: str = "") -> Result:
    """Answer one API request in-process: (status, content type, body)."""
    if "?" in path and not query:
        path, _, query = path.partition("?")
    handler = ENDPOINTS.get(path.rstrip("/") or "/")
    is_child = path.startswith("/host/")
    if handler is None and not is_child:
        return _error(404, f"unknown API path {path!r}; see docs/api.md")
    try:
        if is_child:
            return child_query(agent, path, _flat(query))
        assert handler is not None
        return handler(agent, _flat(query))
    except Exception as exc:  # an API bug must not take down the link or server
        return _error(500, f"internal error answering {path}: {exc.__class__.__name__}")


# -- HTTP ------------------------------------------------------------------


class AccessMiddleware:
    """Reject clients not matched by `[web] allow connections from` (403)."""

    def __init__(self, app: ASGIApp, access: AccessList) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            if not self.access.allows(client[0] if client else None):
                body = b"Access denied by [web] allow connections from in tether.conf\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _claim_routes(agent: Agent, key: ClaimKey | None) -> list[Route]:
    """`/api/v3/claim` over HTTP only: the link's relay never reaches it."""
    if key is None:
        return []
    guarded = key

    async def claim(request: Request) -> Response:
        return await claim_endpoint(request, agent, guarded)

    return [Route("/api/v3/claim", claim, methods=["GET", "POST"])]


def create_app(
    agent: Agent, access: AccessList, lifespan: Any = None, claim_key: ClaimKey | None = None
) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        status, ctype, body = local_query(agent, request.url.path, request.url.query)
        return Response(
            body, status_code=status, media_type=ctype, headers={"cache-control": "no-store"}
        )

    static_dir = resources.files("tether") / "static"
    dashboard = (static_dir / "agent" / "index.html").read_bytes()

    async def index(request: Request) -> Response:
        return Response(dashboard, media_type="text/html; charset=utf-8")

    routes = (
        [Route("/", index)]
        + [Route(p, endpoint) for p in ENDPOINTS]
        + [Route("/host/{child}/api/v1/{rest:path}", endpoint)]
        + _claim_routes(agent, claim_key)
        + [
            Mount("/static", StaticFiles(directory=str(static_dir)), name="static"),
        ]
    )
    app = Starlette(routes=routes, lifespan=lifespan)
    return AccessMiddleware(app, access)
