"""The Nodes list's search, filters, sort and paging (tether.cloud.node_list):
the parameter rules, then the SQL on a real database (SQLite, or PostgreSQL
with TETHER_TEST_DATABASE_URL), then the live watcher's change detection."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.api import claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.database import migrated_database
from tests.fixtures.peer import FAST, Peer, link_up
from tests.fixtures.ui import make_member, session_client
from tether.cloud import node_list
from tether.cloud.db import Database
from tether.cloud.models import Alert, Node, NodeEvent, Room, User, utcnow
from tether.cloud.node_list import BadQuery, parse
from tether.cloud.store import labels as label_store
from tether.cloud.store import nodes as node_store
from tether.cloud.store import spaces as space_store
from tether.cloud.web import live
from tether.cloud.web.live import NodeWatcher
from tether.protocol.frames import AlertTransition, Goodbye
from tether.protocol.states import NodeState

# -- parameters ----------------------------------------------------------------


def test_no_parameters_is_the_first_page_by_name() -> None:
    q = parse({})
    assert (q.q, q.states, q.sort, q.order, q.page, q.per_page, q.paged) == (
        "",
        (),
        "name",
        "asc",
        1,
        node_list.DEFAULT_PER_PAGE,
        True,
    )
    # The API pages only when asked, so clients written before paging get every node.
    assert not parse({}, paged_by_default=False).paged
    assert parse({"per_page": ["10"]}, paged_by_default=False).paged
    assert parse({"page": ["2"]}, paged_by_default=False).offset == node_list.DEFAULT_PER_PAGE


def test_repeated_and_comma_separated_values_and_search_words() -> None:
    q = parse({"state": ["live,offline", "LIVE"], "q": ["  web   eu  "], "os": ["Debian 12"]})
    assert q.states == ("live", "offline")
    assert q.q == "web eu" and q.os == ("Debian 12",)
    assert q.params() == {"q": "web eu", "state": ["live", "offline"], "os": ["Debian 12"]}


@pytest.mark.parametrize(
    ("params", "param", "names"),
    [
        ({"state": ["gone"]}, "state", "unseen, live, offline"),
        (
            {"sort": ["color"]},
            "sort",
            "name, state, state_since, last_seen, os, agent_version, severity",
        ),
        ({"severity": ["red"]}, "severity", "critical, warning, clear"),
        ({"label": ["bad key:x"]}, "label", "KEY:VALUE"),
        ({"label": [":x"]}, "label", "letters, digits"),
        ({"label": ["env:a\x00b"]}, "label", "control or formatting"),
        ({"label": ["env:" + "x" * 201]}, "label", "200 characters"),
        ({"room": ["'; drop table nodes"]}, "room", "not a War Room id"),
        ({"order": ["up"]}, "order", "asc, desc"),
        ({"page": ["0"]}, "page", "1 to"),
        ({"page": ["x"]}, "page", "1 to"),
        ({"page": ["\u00b2"]}, "page", "1 to"),  # a digit to str.isdigit, not to int()
        ({"per_page": ["501"]}, "per_page", "1 to 500"),
        ({"per_page": ["-1"]}, "per_page", "1 to 500"),
        ({"sort": ["name", "os"]}, "sort", "once"),
        ({"q": ["x" * 201]}, "q", "200 characters"),
        ({"q": ["web\x00"]}, "q", "control characters"),
        ({"os": ["Debian\n12"]}, "os", "control characters"),
    ],
)
def test_a_bad_value_names_the_parameter_and_what_it_allows(
    params: dict[str, list[str]], param: str, names: str
) -> None:
    with pytest.raises(BadQuery) as got:
        parse(params)
    assert got.value.param == param
    assert f'"{param}"' in str(got.value) and names in str(got.value)


def test_label_room_and_severity_parameters() -> None:
    q = parse(
        {
            "label": ["env:prod", "team=a:b", " rack ", "env:prod"],
            "room": ["ABC-1,def-2"],
            "severity": ["Critical,clear"],
        }
    )
    # `=` splits first (a key never holds one); a key alone: has the label.
    assert q.labels == (("env", "prod"), ("team", "a:b"), ("rack", None))
    assert q.rooms == ("abc-1", "def-2") and q.severities == ("critical", "clear")
    assert q.params() == {
        "label": ["env:prod", "team:a:b", "rack"],
        "room": ["abc-1", "def-2"],
        "severity": ["critical", "clear"],
    }
    # A value may hold commas and spaces: labels are never comma-split.
    assert parse({"label": ["note:a, b"]}).labels == (("note", "a, b"),)


# -- the SQL on a real database -------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database(tmp_path) as database:
        yield database


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SERIAL = itertools.count(1)


def make_space(db: Database, name: str = "S") -> tuple[str, str, str]:
    """A Space with its all-nodes room and one more room: (space, all, other)."""
    with db.session(write_lock=True) as s:
        user = User(email=f"{uuid.uuid4().hex[:6]}@b.c", name="a", password_hash="x")
        s.add(user)
        s.flush()
        space = space_store.create_space(s, name, user)
        other = Room(space_id=space.id, name="other")
        s.add(other)
        s.flush()
        return space.id, space_store.all_nodes_room(s, space.id).id, other.id


def add_node(db: Database, space_id: str, rooms: list[str], **kw: object) -> str:
    # Ids of digits only, so a search for letters never matches an id by chance.
    nid = str(kw.pop("id", f"00000000-0000-4000-8000-{next(SERIAL):012d}"))
    with db.session(write_lock=True) as s:
        node = Node(id=nid, space_id=space_id, public_key_pem="k", public_key_sha256="f", **kw)
        s.add(node)
        s.flush()
        for rid in rooms:
            room = s.get(Room, rid)
            assert room is not None
            node_store.add_to_room(s, node, room)
    return nid


@pytest.fixture
def fleet(db: Database) -> tuple[str, str, str]:
    """Twelve nodes: web-00..web-09 (live/offline alternating), plus db-a
    (never seen, no OS) and DB-b in the other room; another Space has a web-00 too."""
    sid, all_room, other = make_space(db)
    for i in range(10):
        add_node(
            db,
            sid,
            [all_room],
            hostname=f"web-{i:02d}",
            state="live" if i % 2 == 0 else "offline",
            state_since=T0 + dt.timedelta(minutes=i),
            last_seen_at=T0 + dt.timedelta(minutes=10 - i),
            last_address=f"10.0.0.{i}",
            os="Debian 12" if i < 6 else "Alpine 3.20",
            agent_version="1.0" if i < 3 else "1.1",
        )
    add_node(db, sid, [all_room], hostname="db-a", state="unseen", state_since=T0)
    add_node(
        db,
        sid,
        [all_room, other],
        hostname="DB-b",
        state="live",
        state_since=T0,
        os="100%_Linux",
        last_seen_at=T0,
    )
    other_sid, other_all, _ = make_space(db, "T")
    add_node(db, other_sid, [other_all], hostname="web-00", state="live", state_since=T0)
    return sid, all_room, other


def names(db: Database, sid: str, scope: str | None, **params: str | list[str]) -> list[str]:
    query = parse({k: v if isinstance(v, list) else [v] for k, v in params.items()})
    with db.session() as s:
        found, _ = node_store.list_page(s, sid, scope, query)
        return [n.hostname for n in found]


def total(db: Database, sid: str, room: str | None, **params: str) -> int:
    with db.session() as s:
        return node_store.list_page(s, sid, room, parse({k: [v] for k, v in params.items()}))[1]


def test_search_matches_hostname_id_address_and_os_case_insensitively(
    db: Database, fleet: tuple[str, str, str]
) -> None:
    sid, all_room, _ = fleet
    assert names(db, sid, all_room, q="WEB-0") == [f"web-{i:02d}" for i in range(10)]
    assert names(db, sid, all_room, q="10.0.0.7") == ["web-07"]
    assert names(db, sid, all_room, q="alpine") == ["web-06", "web-07", "web-08", "web-09"]
    # Every word must match, each in any field.
    assert names(db, sid, all_room, q="alpine 10.0.0.8") == ["web-08"]
    with db.session() as s:
        some = s.query(Node).filter(Node.hostname == "web-03").one().id
    assert names(db, sid, all_room, q=some[-12:]) == ["web-03"]
    # % and _ are the characters typed, not wildcards.
    assert names(db, sid, all_room, q="100%_") == ["DB-b"]
    assert names(db, sid, all_room, q="%") == ["DB-b"]
    assert names(db, sid, all_room, q="web_0") == []


def test_filters_by_state_os_and_agent_version_within_the_room(
    db: Database, fleet: tuple[str, str, str]
) -> None:
    sid, all_room, other = fleet
    assert names(db, sid, all_room, state="unseen") == ["db-a"]
    assert names(db, sid, all_room, state="offline", os="Alpine 3.20") == ["web-07", "web-09"]
    assert names(db, sid, all_room, agent_version="1.0") == ["web-00", "web-01", "web-02"]
    assert names(db, sid, all_room, state=["offline", "unseen"], q="db") == ["db-a"]
    assert names(db, sid, other) == ["DB-b"]
    # The other Space's web-00 is never in this one's list.
    assert names(db, sid, None, q="web-00") == ["web-00"]
    assert total(db, sid, None) == 12


def test_every_sort_in_both_directions(db: Database, fleet: tuple[str, str, str]) -> None:
    sid, room, _ = fleet
    assert names(db, sid, room, per_page="3") == ["db-a", "DB-b", "web-00"]  # case-insensitive
    assert names(db, sid, room, order="desc", per_page="3") == ["web-09", "web-08", "web-07"]
    assert names(db, sid, room, sort="state", per_page="8")[:7] == [
        "DB-b",
        "web-00",
        "web-02",
        "web-04",
        "web-06",
        "web-08",
        "web-01",
    ]
    assert names(db, sid, room, sort="state", order="desc", per_page="1") == ["db-a"]
    assert names(db, sid, room, sort="state_since", order="desc", per_page="2") == [
        "web-09",
        "web-08",
    ]
    assert names(db, sid, room, sort="last_seen", order="desc", per_page="2") == [
        "web-00",
        "web-01",
    ]
    # Never seen (NULL) comes last in both directions, on SQLite and PostgreSQL.
    assert names(db, sid, room, sort="last_seen")[-1] == "db-a"
    assert names(db, sid, room, sort="last_seen", order="desc")[-1] == "db-a"
    assert names(db, sid, room, sort="os")[:2] == ["DB-b", "web-06"]
    assert names(db, sid, room, sort="os")[-1] == "db-a"
    assert names(db, sid, room, sort="os", order="desc")[:2] == ["web-00", "web-01"]
    assert names(db, sid, room, sort="agent_version", order="desc", per_page="1") == ["web-03"]


def test_pages_do_not_overlap_and_the_total_counts_all_of_them(
    db: Database, fleet: tuple[str, str, str]
) -> None:
    sid, room, _ = fleet
    seen: list[str] = []
    for page in (1, 2, 3):
        query = parse({"sort": ["state"], "per_page": ["5"], "page": [str(page)]})
        with db.session() as s:
            found, count = node_store.list_page(s, sid, room, query)
        assert count == 12
        seen += [n.id for n in found]
    assert len(seen) == len(set(seen)) == 12
    assert names(db, sid, room, page="4", per_page="5") == []
    assert total(db, sid, room, q="alpine", per_page="2") == 4


def test_facets_shared_names_and_expected_back(db: Database, fleet: tuple[str, str, str]) -> None:
    sid, room, other = fleet
    twin = add_node(db, sid, [room], hostname="web-00", state="offline", state_since=T0)
    with db.session() as s:
        facets = node_store.facets(s, sid, room)
        assert facets["os"] == [("100%_Linux", 1), ("Alpine 3.20", 4), ("Debian 12", 6)]
        assert facets["agent_version"] == [("1.0", 3), ("1.1", 7)]
        assert node_store.facets(s, sid, other)["os"] == [("100%_Linux", 1)]
        # Only this Space's nodes count: web-00 twice here, web-01 once.
        assert node_store.shared_hostnames(s, sid, ["web-00", "web-01"]) == {"web-00"}
    with db.session(write_lock=True) as s:
        node = s.get(Node, twin)
        assert node is not None
        node_store.set_state(s, node, NodeState.LIVE, "connected", session_id="a")
        node_store.set_state(
            s, node, NodeState.OFFLINE, "goodbye", detail={"expected_back_seconds": 120}
        )
    with db.session() as s:
        found = list(s.query(Node).filter(Node.space_id == sid))
        back = node_store.expected_back(s, found)
    assert list(back) == [twin]
    assert abs((back[twin] - utcnow()).total_seconds() - 120) < 60


def set_labels(db: Database, node_id: str, source: str, labels: dict[str, str]) -> None:
    with db.session(write_lock=True) as s:
        label_store.set_source(s, node_id, source, labels)


def node_id(db: Database, sid: str, hostname: str) -> str:
    with db.session() as s:
        return s.query(Node).filter(Node.space_id == sid, Node.hostname == hostname).one().id


def agent_alert(db: Database, nid: str, name: str, old: str, new: str) -> None:
    """A transition as the link records it (tether.cloud.link.endpoint.apply_alert)."""
    with db.session(write_lock=True) as s:
        node = s.get(Node, nid)
        assert node is not None
        node_store.record_event(
            s,
            node,
            "alert",
            cause=f"{name} on system.cpu: {old} -> {new}",
            detail={"name": name, "chart": "system.cpu", "old_status": old, "new_status": new},
        )


def reachability_alert(db: Database, nid: str, severity: str, status: str = "active") -> None:
    """A reachability alert row, as tether.cloud.alerts.reachability raises it."""
    with db.session(write_lock=True) as s:
        node = s.get(Node, nid)
        assert node is not None
        s.add(
            Alert(
                space_id=node.space_id,
                node_id=nid,
                hostname=node.hostname,
                name="reachability",
                severity=severity,
                status=status,
                summary="lost",
                offline_at=T0,
            )
        )


def test_label_filters_match_the_winning_value_and_combine(
    db: Database, fleet: tuple[str, str, str]
) -> None:
    sid, all_room, other = fleet
    for i in range(10):
        set_labels(
            db, node_id(db, sid, f"web-{i:02d}"), "agent", {"env": "prod" if i < 7 else "dev"}
        )
    web3, web5 = node_id(db, sid, "web-03"), node_id(db, sid, "web-05")
    set_labels(db, web3, "token", {"rack": "r1", "note": "a, b"})
    # The Cloud's label outranks the agent's: web-05 is dev now, not prod.
    set_labels(db, web5, "cloud", {"env": "dev"})
    prod = [f"web-{i:02d}" for i in (0, 1, 2, 3, 4, 6)]
    assert names(db, sid, all_room, label="env:prod") == prod
    assert names(db, sid, all_room, label="env=prod") == prod
    assert names(db, sid, all_room, label="env:dev") == ["web-05", "web-07", "web-08", "web-09"]
    assert names(db, sid, all_room, label="env:Prod") == []  # values are case-sensitive
    assert names(db, sid, all_room, label="rack") == ["web-03"]  # has the label
    assert names(db, sid, all_room, label="note:a, b") == ["web-03"]
    # Several labels: all of them; with the other filters too.
    assert names(db, sid, all_room, label=["env:prod", "rack:r1"]) == ["web-03"]
    assert names(db, sid, all_room, label=["env:dev", "rack"]) == []
    assert names(db, sid, all_room, label="env:prod", state="offline") == ["web-01", "web-03"]
    assert names(db, sid, all_room, label="env:prod", os="Debian 12", q="web-0") == [
        "web-00",
        "web-01",
        "web-02",
        "web-03",
        "web-04",
    ]
    assert names(db, sid, other, label="env") == []  # DB-b, the other room's node, has none
    assert total(db, sid, all_room, label="env:prod", per_page="2") == 6


def test_search_matches_label_values(db: Database, fleet: tuple[str, str, str]) -> None:
    sid, room, _ = fleet
    set_labels(db, node_id(db, sid, "web-04"), "agent", {"service": "Checkout-API"})
    set_labels(db, node_id(db, sid, "db-a"), "token", {"service": "billing"})
    set_labels(db, node_id(db, sid, "db-a"), "cloud", {"service": "ledger"})
    assert names(db, sid, room, q="checkout") == ["web-04"]
    assert names(db, sid, room, q="service:checkout-api") == ["web-04"]
    assert names(db, sid, room, q="ledger") == ["db-a"]
    assert names(db, sid, room, q="billing") == []  # outranked by the Cloud's value
    assert names(db, sid, room, q="api web") == ["web-04"]  # each word anywhere


def test_room_filter_and_an_unknown_room(db: Database, fleet: tuple[str, str, str]) -> None:
    sid, all_room, other = fleet
    third = make_space(db)[2]  # a room of another Space
    assert names(db, sid, all_room, room=other) == ["DB-b"]
    assert names(db, sid, None, room=[other, all_room], state="unseen") == ["db-a"]
    assert names(db, sid, None, room=other.upper(), q="web") == []
    with pytest.raises(BadQuery, match="not a War Room of this Space") as got:
        names(db, sid, None, room=third)
    assert got.value.param == "room"


def test_severity_is_the_worst_active_alert(db: Database, fleet: tuple[str, str, str]) -> None:
    sid, room, _ = fleet
    ids = {h: node_id(db, sid, h) for h in ("web-00", "web-01", "web-02", "web-03", "db-a")}
    # web-00: an agent alert raised to critical; web-01: warning; web-02:
    # critical then cleared (the latest transition counts); web-03: a
    # reachability alert (warning) and an agent warning; db-a: only a
    # resolved reachability alert.
    agent_alert(db, ids["web-00"], "cpu_usage", "clear", "warning")
    agent_alert(db, ids["web-00"], "cpu_usage", "warning", "critical")
    agent_alert(db, ids["web-01"], "ram_usage", "clear", "warning")
    agent_alert(db, ids["web-02"], "cpu_usage", "clear", "critical")
    agent_alert(db, ids["web-02"], "cpu_usage", "critical", "clear")
    agent_alert(db, ids["web-02"], "disk_space", "clear", "clear")
    reachability_alert(db, ids["web-03"], "warning")
    agent_alert(db, ids["web-03"], "ram_usage", "clear", "warning")
    reachability_alert(db, ids["db-a"], "critical", status="resolved")
    assert names(db, sid, room, severity="critical") == ["web-00"]
    assert names(db, sid, room, severity="warning") == ["web-01", "web-03"]
    assert names(db, sid, room, severity="critical,warning", state="offline") == [
        "web-01",
        "web-03",
    ]
    clear = names(db, sid, room, severity="clear")
    assert "web-02" in clear and "db-a" in clear and len(clear) == 9
    # A reachability alert raised to critical makes web-03 critical.
    reachability_alert(db, ids["web-03"], "critical")
    assert names(db, sid, room, severity="critical") == ["web-00", "web-03"]
    # Sorted: worst first, then by name; the Alerts column's values in one statement.
    assert names(db, sid, room, sort="severity", per_page="3") == ["web-00", "web-03", "web-01"]
    assert names(db, sid, room, sort="severity", order="desc")[-3:] == [
        "web-01",
        "web-00",
        "web-03",
    ]
    with db.session() as s:
        worst = node_store.severities(s, sid, list(ids.values()))
        assert worst == {
            ids["web-00"]: "critical",
            ids["web-01"]: "warning",
            ids["web-02"]: "clear",
            ids["web-03"]: "critical",
            ids["db-a"]: "clear",
        }
        assert len(node_store.severities(s, sid, None)) == 12


# -- the live watcher ---------------------------------------------------------------


def add_event(db: Database, space_id: str, event_id: int | None = None) -> None:
    with db.session(write_lock=True) as s:
        s.add(NodeEvent(id=event_id, node_id="n", space_id=space_id, kind="state", state="live"))


def test_watcher_names_each_changed_space_once(db: Database) -> None:
    watcher = NodeWatcher(db)
    add_event(db, "old")
    with db.session() as s:
        assert watcher.changed_spaces(s) == set()  # the first read only places the cursor
        assert watcher.changed_spaces(s) == set()
    add_event(db, "a")
    add_event(db, "b")
    add_event(db, "a")
    with db.session() as s:
        assert watcher.changed_spaces(s) == {"a", "b"}
        assert watcher.changed_spaces(s) == set()


def test_watcher_sees_an_event_committed_late_with_a_lower_id(db: Database) -> None:
    """On PostgreSQL, ids are taken at insert and rows show at commit: a
    lower id can appear after a higher one was read."""
    watcher = NodeWatcher(db)
    add_event(db, "x", 10)
    with db.session() as s:
        watcher.changed_spaces(s)
    add_event(db, "a", 20)
    with db.session() as s:
        assert watcher.changed_spaces(s) == {"a"}
    add_event(db, "late", 15)
    with db.session() as s:
        assert watcher.changed_spaces(s) == {"late"}
        assert watcher.changed_spaces(s) == set()


# -- through the real Cloud: the API, the UI's JSON and its live stream ----------------


def claim_fleet(cloud: Cloud) -> dict[str, str]:
    """web-1..web-5 and two nodes both called db-1; hostname -> id (one of the db-1s)."""
    ids: dict[str, str] = {}
    for host in ["web-1", "web-2", "web-3", "web-4", "web-5", "db-1", "db-1"]:
        nid = str(uuid.uuid4())
        assert claim(cloud, nid, hostname=host).status_code == 204
        ids[host] = nid
    return ids


def test_api_lists_pages_filters_and_sorts_in_the_database(cloud: Cloud) -> None:
    claim_fleet(cloud)
    url = f"/api/v1/spaces/{cloud.space_id}/nodes"
    # No parameters: today's answer, every node as a JSON list, no paging header.
    r = cloud.api("GET", url)
    assert r.status_code == 200 and "x-total-count" not in r.headers
    assert sorted(n["hostname"] for n in r.json()) == [
        "db-1",
        "db-1",
        "web-1",
        "web-2",
        "web-3",
        "web-4",
        "web-5",
    ]
    assert set(r.json()[0]) >= {"id", "hostname", "state", "last_address", "rooms"}
    # Filters without paging: every match, still a plain list.
    r = cloud.api("GET", url, params={"q": "WEB", "state": "unseen"})
    assert len(r.json()) == 5 and "x-total-count" not in r.headers
    # Paged: one page, and the total over all pages in X-Total-Count.
    r = cloud.api("GET", url, params={"q": "web", "sort": "name", "order": "desc", "per_page": "2"})
    assert [n["hostname"] for n in r.json()] == ["web-5", "web-4"]
    assert r.headers["x-total-count"] == "5"
    r = cloud.api("GET", url, params={"q": "web", "per_page": "2", "page": "3"})
    assert [n["hostname"] for n in r.json()] == ["web-5"] and r.headers["x-total-count"] == "5"
    assert cloud.api("GET", url, params={"state": "live"}).json() == []
    # A bad value: 400 naming the parameter and the allowed values.
    r = cloud.api("GET", url, params={"sort": "colour"})
    assert r.status_code == 400 and r.json()["errorMsgKey"] == "ErrBadRequest"
    assert '"sort"' in r.json()["errorMessage"] and "last_seen" in r.json()["errorMessage"]
    r = cloud.api("GET", url, params={"per_page": "100000"})
    assert r.status_code == 400 and "1 to 500" in r.json()["errorMessage"]
    # A NUL, which PostgreSQL cannot take as text, is refused before any SQL.
    r = cloud.api("GET", url, params={"q": "web\x00"})
    assert r.status_code == 400 and "control characters" in r.json()["errorMessage"]


def test_ui_json_pages_and_tells_equal_names_apart(cloud: Cloud) -> None:
    ids = claim_fleet(cloud)
    c = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    room = f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}"
    data = c.get(room + "/nodes.json", params={"q": "db-1"}).json()
    assert data["total"] == 2 and data["pages"] == 1 and data["room_has_nodes"]
    shown = {n["short_id"] for n in data["nodes"]}
    assert ids["db-1"][:8] in shown and len(shown) == 2  # each db-1 with its own id suffix
    assert all(f"id {n['id']}" in n["host_details"] for n in data["nodes"])
    data = c.get(room + "/nodes.json", params={"per_page": "3", "page": "3"}).json()
    assert (data["total"], data["pages"], [n["hostname"] for n in data["nodes"]]) == (
        7,
        3,
        ["web-5"],
    )
    assert [n["short_id"] for n in data["nodes"]] == [""]  # a unique name has no suffix
    assert data["facets"] is None  # the filter menus' values only when asked for
    data = c.get(room + "/nodes.json", params={"facets": "1"}).json()
    assert data["facets"] == {"os": [], "agent_version": []}
    # A search that matches nothing is not an empty room.
    data = c.get(room + "/nodes.json", params={"q": "nothing-like-this"}).json()
    assert data["nodes"] == [] and data["total"] == 0 and data["room_has_nodes"]
    r = c.get(room + "/nodes.json", params={"state": "dead"})
    assert r.status_code == 400 and '"state"' in r.json()["errorMessage"]
    # The page itself is drawn with the same query (and works without JavaScript).
    page = c.get(room, params={"q": "web-3"})
    assert page.status_code == 200 and ">web-3<" in page.text and ">web-4<" not in page.text
    assert c.get(room, params={"order": "sideways"}).status_code == 400


def test_api_and_ui_filter_by_label_room_and_severity(start_cloud: Callable[..., Cloud]) -> None:
    """Labels set through the API, a room made through the API, a critical
    alert sent by a real peer over its link: each filter, combined, and the
    400s naming the parameter."""
    cloud = start_cloud(*FAST)
    ids = claim_fleet(cloud)
    url = f"/api/v1/spaces/{cloud.space_id}/nodes"
    for host in ("web-1", "web-2", "web-3"):
        r = cloud.api(
            "PUT",
            f"{url}/{ids[host]}/labels",
            json={"labels": {"env": "prod" if host != "web-3" else "dev", "tier": "front"}},
        )
        assert r.status_code == 200, r.text
    r = cloud.api("POST", f"/api/v1/spaces/{cloud.space_id}/rooms", json={"name": "eu"})
    assert r.status_code in (200, 201), r.text
    eu = r.json()["id"]
    for host in ("web-2", "db-1"):
        path = f"/api/v1/spaces/{cloud.space_id}/rooms/{eu}/nodes/{ids[host]}"
        assert cloud.api("PUT", path).status_code in (200, 204)
    peer = Peer(cloud, hostname="hot").claim()

    async def raise_critical() -> None:
        link = await link_up(peer)
        await link.send(
            AlertTransition(
                name="cpu_usage",
                chart="system.cpu",
                old_status="clear",
                new_status="critical",
                at=0,
            )
        )
        # Kept open until the alert shows, so the node stays live meanwhile.
        poll(
            lambda: [n["hostname"] for n in get(severity="critical")] == ["hot"],
            10,
            "the node with the critical alert listed alone",
        )
        await link.ws.close()

    def get(**params: str | list[str]) -> list[dict[str, Any]]:
        r = cloud.api("GET", url, params=params)
        assert r.status_code == 200, r.text
        return sorted(r.json(), key=lambda n: str(n["hostname"]))

    def hosts(**params: str | list[str]) -> list[str]:
        return [n["hostname"] for n in get(**params)]

    asyncio.run(raise_critical())
    assert hosts(label="env:prod") == ["web-1", "web-2"]
    assert hosts(label=["env:prod", "tier"]) == ["web-1", "web-2"]
    assert hosts(label=["tier:front", "env=dev"]) == ["web-3"]
    assert hosts(label="tier", room=eu) == ["web-2"]
    assert hosts(room=eu) == ["db-1", "web-2"]
    assert hosts(q="front", state="unseen") == ["web-1", "web-2", "web-3"]  # label values
    assert hosts(severity="critical", label="env") == []
    assert "hot" not in hosts(severity="clear") and len(hosts(severity="clear")) == 7
    assert hosts(severity="warning") == []
    (hot,) = get(q="hot")
    assert hot["alert_severity"] == "critical" and get(q="web-1")[0]["alert_severity"] == "clear"
    r = cloud.api("GET", url, params={"sort": "severity", "per_page": "1"})
    assert [n["hostname"] for n in r.json()] == ["hot"] and r.headers["x-total-count"] == "8"
    for params, param, allowed in [
        ({"severity": "fatal"}, "severity", "critical, warning, clear"),
        ({"label": "no spaces:x"}, "label", "KEY:VALUE"),
        ({"room": str(uuid.uuid4())}, "room", "not a War Room of this Space"),
        ({"room": "<script>"}, "room", "not a War Room id"),
    ]:
        r = cloud.api("GET", url, params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["errorMsgKey"] == "ErrBadRequest"
        assert f'"{param}"' in r.json()["errorMessage"] and allowed in r.json()["errorMessage"]
    # The Nodes view's JSON and page take the same filters (in the URL).
    c = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    room = f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}"
    data = c.get(room + "/nodes.json", params={"label": "env:prod", "room": eu}).json()
    assert [n["hostname"] for n in data["nodes"]] == ["web-2"] and data["total"] == 1
    data = c.get(room + "/nodes.json", params={"severity": "critical"}).json()
    assert [(n["hostname"], n["alert_severity"]) for n in data["nodes"]] == [("hot", "critical")]
    page = c.get(room, params={"label": "env:dev"})
    assert page.status_code == 200 and ">web-3<" in page.text and ">web-1<" not in page.text
    assert 'value="env:dev"' in page.text
    page = c.get(room, params={"severity": "critical"})
    assert 'class="severity severity-critical">critical<' in page.text
    r = c.get(room + "/nodes.json", params={"room": str(uuid.uuid4())})
    assert r.status_code == 400 and '"room"' in r.json()["errorMessage"]
    assert c.get(room, params={"severity": "bad"}).status_code == 400


def sse_events(lines: Iterator[str], wanted: str) -> list[str]:
    """Read SSE lines until an `event: wanted` line; the event names seen."""
    seen: list[str] = []
    for line in lines:
        if line.startswith("event: "):
            seen.append(line[7:])
            if line[7:] == wanted:
                return seen
    raise AssertionError(f"the stream ended before event {wanted!r} (saw {seen})")


def test_live_stream_pushes_a_change_and_is_only_for_members(cloud: Cloud) -> None:
    c = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    events = f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}/events"
    with c.stream("GET", events, timeout=httpx.Timeout(15)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert sse_events(lines, "hello") == ["hello"]
        # A node claimed meanwhile (by anyone, on any process): the stream says so.
        assert claim(cloud, hostname="new-one").status_code == 204
        assert sse_events(lines, "nodes") == ["nodes"]
    # Strangers and signed-out browsers get nothing.
    with cloud.client(follow_redirects=False) as anon:
        r = anon.get(events)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    email, password = make_member(cloud)
    outsider_space = c.get(f"/spaces/{uuid.uuid4()}/rooms/{cloud.room_ids[0]}/events")
    assert outsider_space.status_code == 404
    member = session_client(cloud, email, password)
    with member.stream("GET", events) as r:
        assert r.status_code == 200  # a member of the Space may watch it


def test_live_streams_are_capped_per_user(cloud: Cloud) -> None:
    c = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    events = f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}/events"
    with contextlib.ExitStack() as stack:
        # Keep each reader: a dropped line iterator closes its connection.
        readers = []
        for _ in range(live.PER_USER):
            r = stack.enter_context(c.stream("GET", events))
            assert r.status_code == 200
            readers.append(r.iter_lines())
            sse_events(readers[-1], "hello")
        r = c.get(events)
        assert r.status_code == 429 and r.headers["retry-after"] == "10"
        assert f"{live.PER_USER} live Nodes views" in r.json()["errorMessage"]

    # Closed streams give their places back.
    def free() -> bool:
        with c.stream("GET", events) as r:
            return r.status_code == 200

    poll(free, 10, "a free stream")


def test_shutdown_ends_open_streams_cleanly(cloud: Cloud) -> None:
    c = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    events = f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}/events"
    with c.stream("GET", events, timeout=httpx.Timeout(30)) as r:
        lines = r.iter_lines()
        sse_events(lines, "hello")
        cloud.proc.send_signal(signal.SIGTERM)
        # The Cloud ends the stream itself (a complete chunked body): uvicorn
        # did not have to give up on it and cut the connection.
        rest = list(lines)  # raises RemoteProtocolError if the connection was cut
        assert [line for line in rest if line.startswith("event:")] == [], rest
    assert cloud.proc.wait(30) == 0


def test_a_stream_says_hello_beats_its_heart_and_ends_at_its_age(db: Database) -> None:
    """Timers shortened: the stream's shape, not its timing, is what is checked."""
    watcher = NodeWatcher(db, heartbeat=0.05, max_age=0.3, per_user=5, per_process=2)

    async def run() -> list[str]:
        sub = watcher.subscribe("s", "u")
        watcher.subscribe("s", "other")
        with pytest.raises(live.TooManyStreams, match="already serves 2"):
            watcher.subscribe("s", "third")
        out = []
        async for chunk in watcher.stream(sub):
            out.append(chunk)
            if len(out) == 2:
                sub.changed.set()  # as the poll does for a change in Space "s"
        return out

    chunks = asyncio.run(run())
    assert chunks[0] == f"retry: {live.RETRY_MS}\nevent: hello\ndata: {{}}\n\n"
    assert "event: nodes\ndata: {}\n\n" in chunks and ": heartbeat\n\n" in chunks
    assert len(watcher.subscribers) == 1  # the ended stream gave its place back


def test_a_goodbye_shows_when_the_node_is_expected_back(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud, hostname="upgrading").claim()

    async def scenario() -> None:
        link = await link_up(peer)
        await link.send(Goodbye(reason="upgrade", expected_back_seconds=600))
        await link.closed()

    asyncio.run(scenario())
    poll(lambda: peer.state() == "offline", 10, "the node offline")
    c = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    room = f"/spaces/{cloud.space_id}/rooms/{cloud.room_ids[0]}"
    (node,) = c.get(room + "/nodes.json", params={"q": "upgrading"}).json()["nodes"]
    offline_at = dt.datetime.fromisoformat(peer.node()["state_since"])
    back = dt.datetime.fromisoformat(node["expected_back_at"])
    assert back - offline_at == dt.timedelta(seconds=600)
    page = c.get(room, params={"q": "upgrading"}).text
    assert f'data-when="{node["expected_back_at"]}"' in page
