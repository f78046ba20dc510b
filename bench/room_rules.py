"""Room rules over many nodes: re-evaluating a rule room for every node of a Space.

    .venv/bin/python bench/room_rules.py [--nodes 10000] [--database-url URL]

Makes a Space with `--nodes` nodes (each with labels `env` and `role` from
three sources) in a new SQLite file (or the given empty database), then
times, each in its own write transaction as the API runs them:

- adding an include rule that matches half the nodes (they join the room);
- adding an exclude rule that takes out a fifth of those;
- changing the labels of one node (its rule rooms only);
- removing the include rule (every rule member leaves).

Prints one JSON line of seconds per step and the members after each; the
issue's target is a full room under 1 s for 10,000 nodes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import insert

from tether.cloud import room_rules
from tether.cloud.db import Database, migrate
from tether.cloud.models import Node, NodeLabel, RoomRule, User
from tether.cloud.store import labels as label_store
from tether.cloud.store import spaces as space_store

TARGET = 1.0


def build(db: Database, count: int) -> tuple[str, str, str]:
    with db.session(write_lock=True) as s:
        owner = User(email=f"{uuid.uuid4().hex[:8]}@bench", name="b", password_hash="!")  # noqa: S106
        s.add(owner)
        s.flush()
        space = space_store.create_space(s, "bench", owner)
        room = space_store.create_room(s, space.id, "rule room")
        ids = [str(uuid.uuid4()) for _ in range(count)]
        s.execute(
            insert(Node),
            [
                {
                    "id": i,
                    "space_id": space.id,
                    "hostname": f"n{n}",
                    "public_key_pem": "",
                    "public_key_sha256": "",
                }
                for n, i in enumerate(ids)
            ],
        )
        rows = []
        for n, i in enumerate(ids):
            env = "prod" if n % 2 == 0 else "staging"
            rows.append({"node_id": i, "key": "env", "source": "agent", "rank": 2, "value": env})
            rows.append(
                {"node_id": i, "key": "role", "source": "token", "rank": 1, "value": f"r{n % 5}"}
            )
            if n % 7 == 0:  # some Cloud overrides that win over the agent's value
                rows.append(
                    {"node_id": i, "key": "env", "source": "cloud", "rank": 3, "value": env}
                )
        s.execute(insert(NodeLabel), rows)
        return space.id, room.id, ids[0]


def timed(db: Database, step: object) -> float:
    start = time.perf_counter()
    with db.session(write_lock=True) as s:
        step(s)  # type: ignore[operator]
    return time.perf_counter() - start


def members(db: Database, room_id: str) -> int:
    with db.session() as s:
        return len(room_rules.sources(s, room_id))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--database-url")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="room-rules-")
    db = Database(a.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}")
    migrate(db.engine)
    space_id, room_id, one = build(db, a.nodes)
    out: dict[str, object] = {"nodes": a.nodes, "database": db.engine.dialect.name}

    def room(s: object) -> object:
        return space_store.room_in_space(s, space_id, room_id)  # type: ignore[arg-type]

    include = {"action": "include", "key": "env", "op": "equals", "value": "prod"}
    out["include_s"] = timed(db, lambda s: room_rules.add_rule(s, room(s), include))
    out["after_include"] = members(db, room_id)
    exclude = {"action": "exclude", "key": "role", "op": "ends_with", "value": "0"}
    out["exclude_s"] = timed(db, lambda s: room_rules.add_rule(s, room(s), exclude))
    out["after_exclude"] = members(db, room_id)

    def relabel(s: object) -> None:
        label_store.set_source(s, one, "cloud", {"env": "staging"})  # type: ignore[arg-type]
        room_rules.apply_to_node(s, one, space_id)  # type: ignore[arg-type]

    out["one_node_s"] = timed(db, relabel)
    out["after_one_node"] = members(db, room_id)

    def drop_include(s: object) -> None:
        for rule in room_rules.rules_of(s, room_id):  # type: ignore[arg-type]
            if isinstance(rule, RoomRule) and rule.action == "include":
                room_rules.remove_rule(s, room(s), rule.id)  # type: ignore[arg-type]

    out["remove_include_s"] = timed(db, drop_include)
    out["after_remove"] = members(db, room_id)
    out["target_s"] = TARGET
    print(json.dumps(out))
    db.dispose()


if __name__ == "__main__":
    main()
