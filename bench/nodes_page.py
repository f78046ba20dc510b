"""The Nodes list with 10,000 nodes: one filtered, sorted page vs the old full list,
and a page filtered by label (and by alert severity) vs the unfiltered page.

    .venv/bin/python bench/nodes_page.py [--nodes 10000] [--requests 30]

A real Cloud (`tether-cloud serve`, SQLite) whose database holds `--nodes`
nodes, written before it starts through the Cloud's own models (live, offline
and never-seen nodes, five OSes, four agent versions, all in the Space's
all-nodes room; labels `env` (agent, 5 % overridden by the Cloud) and `rack`
(token) on every node, `service=checkout-7f3` on one; three state events per
node and alert transitions on 2 % of them, a third ending critical). Timed
over one keep-alive HTTPS connection each, after two warm-up requests:

- baseline: `GET /api/v1/spaces/{space}/nodes` with no parameters, the old
  unpaged answer (every node as JSON);
- API page: the same endpoint with a filter, a sort and a page
  (`state=offline&os=...&sort=last_seen&order=desc&per_page=50&page=2`);
- API search: `q=` a few characters of hostnames, sorted by state, one page;
- unfiltered page: page 1 of 50 by name, no filter (the label pages' baseline);
- label pages: `label=service:checkout-7f3` (one node), `label=env:prod` (about
  60 %), and `severity=critical`, each page 1 of 50 by name; the ratio of each
  to the unfiltered page is printed too;
- UI page: the Nodes view's `nodes.json` (signed in with a session cookie),
  the same filter and sort: one page plus its total, the equal-name and
  expected-back look-ups and the sidebar counts (what each live push costs);
  then with `facets=1`, the filter menus' values too (on connect and when a
  filter changes).

Prints p50/p99 of each and the ratio of the baseline's p50 to each page's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import re
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import harness

OSES = ["Debian GNU/Linux 12", "Ubuntu 24.04 LTS", "Alpine Linux 3.20", "Fedora 41", "RHEL 9.4"]
VERSIONS = ["0.9.3", "1.0.0", "1.0.1", "1.1.0"]


def fill(data_dir: Path, space_id: str, count: int) -> str:
    """Write `count` nodes into the Cloud's database; the all-nodes room's id."""
    from tether.cloud.db import Database
    from tether.cloud.models import Node, NodeEvent, NodeLabel, NodeRoom
    from tether.cloud.store import spaces as space_store

    db = Database(f"sqlite:///{data_dir / 'cloud.db'}")
    rnd = random.Random(15)
    now = dt.datetime.now(dt.UTC)
    with db.session(write_lock=True) as s:
        room_id = space_store.all_nodes_room(s, space_id).id
        nodes, links, labels, events = [], [], [], []
        for i in range(count):
            nid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            state = rnd.choices(["live", "offline", "unseen"], [80, 15, 5])[0]
            seen = None if state == "unseen" else now - dt.timedelta(seconds=rnd.randrange(86400))
            nodes.append(
                {
                    "id": nid,
                    "space_id": space_id,
                    "hostname": f"{rnd.choice(['web', 'db', 'cache', 'vm'])}-{i:05d}",
                    "public_key_pem": "bench",
                    "public_key_sha256": "bench",
                    "state": state,
                    "state_since": seen or now,
                    "state_cause": "connected" if state == "live" else "keepalive lost",
                    "last_seen_at": seen,
                    "last_address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                    "os": None if state == "unseen" else rnd.choice(OSES),
                    "agent_version": None if state == "unseen" else rnd.choice(VERSIONS),
                }
            )
            links.append({"node_id": nid, "room_id": room_id})
            env = rnd.choices(["prod", "dev", "staging"], [60, 30, 10])[0]
            labels.append(label(nid, "agent", "env", env))
            labels.append(label(nid, "token", "rack", f"r{rnd.randrange(100)}"))
            if rnd.random() < 0.05:
                labels.append(label(nid, "cloud", "env", "prod"))
            if i == count // 2:
                labels.append(label(nid, "cloud", "service", "checkout-7f3"))
            for k in range(3):
                events.append(event(nid, space_id, "state", None, now, k))
            if rnd.random() < 0.02:
                end = rnd.choice(["critical", "warning", "clear"])
                for k, new in enumerate(["warning", end]):
                    events.append(event(nid, space_id, "alert", new, now, 3 + k))
        s.execute(Node.__table__.insert(), nodes)
        s.execute(NodeRoom.__table__.insert(), links)
        s.execute(NodeLabel.__table__.insert(), labels)
        s.execute(NodeEvent.__table__.insert(), events)
    db.dispose()
    return room_id


RANKS = {"token": 1, "agent": 2, "cloud": 3}


def label(node_id: str, source: str, key: str, value: str) -> dict[str, Any]:
    return {"node_id": node_id, "key": key, "source": source, "rank": RANKS[source], "value": value}


def event(
    node_id: str, space_id: str, kind: str, new: str | None, now: dt.datetime, k: int
) -> dict[str, Any]:
    """A state event, or an alert transition as the link records it (no value)."""
    detail = None
    if kind == "alert":
        detail = json.dumps(
            {"name": "cpu_usage", "chart": "system.cpu", "old_status": "clear", "new_status": new}
        )
    return {
        "node_id": node_id,
        "space_id": space_id,
        "at": now - dt.timedelta(minutes=10 - k),
        "kind": kind,
        "state": "live",
        "cause": "bench",
        "detail": detail,
    }


class Client:
    """One keep-alive HTTPS connection to the Cloud."""

    def __init__(self, cloud: harness.Cloud, headers: dict[str, str]) -> None:
        self.cloud, self.headers = cloud, headers
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.cloud.port, context=self.cloud.ssl_context(), timeout=60
        )

    def get(self, path: str) -> tuple[int, bytes, http.client.HTTPResponse]:
        for attempt in (1, 2):
            try:
                self.conn.request("GET", path, headers=self.headers)
                r = self.conn.getresponse()
                return r.status, r.read(), r
            except (http.client.HTTPException, OSError):
                # The server closes idle keep-alive connections after 5 s.
                self.conn.close()
                self.conn = self._connect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def sign_in(cloud: harness.Cloud, email: str, password: str) -> str:
    """The session cookie of the admin, through the sign-in form."""
    c = Client(cloud, {})
    status, body, r = c.get("/signin")
    token = re.search(rb'name="login_csrf" value="([^"]+)"', body)
    cookie = (r.getheader("set-cookie") or "").split(";")[0]
    assert status == 200 and token and cookie, "no sign-in form"
    form = urllib.parse.urlencode(
        {"email": email, "password": password, "login_csrf": token.group(1).decode(), "next": "/"}
    )
    c.conn.request(
        "POST",
        "/signin",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
    )
    r = c.conn.getresponse()
    r.read()
    session = [h for k, h in r.getheaders() if k.lower() == "set-cookie" and "session" in h]
    assert r.status == 303 and session, f"sign-in failed: {r.status}"
    return session[0].split(";")[0]


def timed(client: Client, path: str, requests: int) -> tuple[list[float], bytes, Any]:
    for _ in range(2):
        client.get(path)
    times: list[float] = []
    body, resp = b"", None
    for _ in range(requests):
        t0 = time.perf_counter()
        status, body, resp = client.get(path)
        times.append(time.perf_counter() - t0)
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status}: {body[:300]!r}")
    return times, body, resp


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=10_000, help="nodes in the Space (10000)")
    ap.add_argument("--requests", type=int, default=30, help="timed requests per kind (30)")
    args = ap.parse_args()
    print(f"machine: {harness.machine()}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        cloud = harness.prepare_cloud(Path(tmp) / "cloud", harness.free_port())
        info = cloud.info
        t0 = time.monotonic()
        room_id = fill(cloud.data_dir, cloud.space_id, args.nodes)
        print(f"wrote {args.nodes} nodes in {time.monotonic() - t0:.1f} s")
        cloud.start()
        try:
            api = Client(cloud, {"Authorization": f"Bearer {cloud.api_token}"})
            cookie = sign_in(cloud, info["admin_email"], info["admin_password"])
            ui = Client(cloud, {"Cookie": cookie})
            nodes = f"/api/v1/spaces/{cloud.space_id}/nodes"
            view = f"/spaces/{cloud.space_id}/rooms/{room_id}/nodes.json"
            filt = "state=offline&os=Debian+GNU%2FLinux+12&sort=last_seen&order=desc"
            kinds = [
                ("baseline: full list, unpaged", api, nodes),
                ("API page: filter + sort", api, f"{nodes}?{filt}&per_page=50&page=2"),
                ("API search: q=web-0 by state", api, f"{nodes}?q=web-0&sort=state&per_page=50"),
                ("unfiltered page 1 of 50", api, f"{nodes}?per_page=50"),
                (
                    "label=service:checkout-7f3",
                    api,
                    f"{nodes}?label=service%3Acheckout-7f3&per_page=50",
                ),
                ("label=env:prod", api, f"{nodes}?label=env%3Aprod&per_page=50"),
                ("severity=critical", api, f"{nodes}?severity=critical&per_page=50"),
                ("search q=checkout (labels too)", api, f"{nodes}?q=checkout&per_page=50"),
                ("UI nodes.json: label filter", ui, f"{view}?label=env%3Aprod"),
                ("UI nodes.json: filter + sort", ui, f"{view}?{filt}&page=2"),
                ("UI nodes.json + filter menus", ui, f"{view}?{filt}&page=2&facets=1"),
            ]
            results = []
            for label, client, path in kinds:
                times, body, resp = timed(client, path, args.requests)
                data = json.loads(body)
                shown = len(data) if isinstance(data, list) else len(data["nodes"])
                total = resp.getheader("x-total-count") if isinstance(data, list) else data["total"]
                results.append((label, times, len(body), shown, total))
            base = harness.percentile(results[0][1], 50)
            print(f"{args.nodes} nodes, {args.requests} requests each (after 2 warm-ups):")
            for label, times, size, shown, total in results:
                p50 = harness.percentile(times, 50)
                print(
                    f"  {label:32s} p50 {harness.ms(p50):>11s}  p99 "
                    f"{harness.ms(harness.percentile(times, 99)):>11s}  "
                    f"{size / 1000:8.1f} kB  {shown} shown of {total or shown}"
                    + ("" if p50 == base else f"  baseline/this {base / p50:6.1f}x")
                )
            page = harness.percentile(next(r[1] for r in results if r[0].startswith("unf")), 50)
            print("  filtered page / unfiltered page (p50):")
            for label_, times, *_ in results:
                if label_.startswith(
                    ("label=", "severity=", "search q=checkout", "UI nodes.json: l")
                ):
                    ratio = harness.percentile(times, 50) / page
                    print(f"    {label_:32s} {ratio:5.2f}x")
            print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            cloud.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
