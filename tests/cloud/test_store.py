"""Node state changes as the link will drive them, on the real database."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.fixtures.database import add_nodes, migrated_database
from tether.cloud.link import presence
from tether.cloud.models import Node, User
from tether.cloud.store import nodes as node_store
from tether.cloud.store import spaces as space_store
from tether.protocol.states import CAUSE_CLOSED, CAUSE_KEEPALIVE, NodeState


def test_late_close_of_old_session_does_not_mark_newer_offline(tmp_path: Path) -> None:
    with migrated_database(tmp_path) as db:
        (nid,) = add_nodes(db, 1)
        with db.session(write_lock=True) as s:
            node = s.get(Node, nid)
            assert node is not None
            [(owner, _)] = space_store.members(s, node.space_id)
            user_id = owner.id
            node_store.set_state(s, node, NodeState.LIVE, "connected", session_id="one")
            node_store.set_state(s, node, NodeState.LIVE, "reconnected", session_id="two")
            # The late close of the replaced session "one" changes nothing.
            assert not presence.go_offline(s, node, "one", "closed", CAUSE_CLOSED)
            assert node.state == "live" and node.connected_session_id == "two"
            assert presence.go_offline(s, node, "two", "keepalive lost", CAUSE_KEEPALIVE)
            assert node.state == "offline" and node.connected_session_id is None
            # Closed once: a second close of the same session changes nothing.
            assert not presence.go_offline(s, node, "two", "closed", CAUSE_CLOSED)
        with db.session(write_lock=True) as s:
            outsider = User(email="o@b.c", name="o", password_hash="x")
            s.add(outsider)
            s.flush()
            assert node_store.visible_to(s, user_id, nid) is not None
            assert node_store.visible_to(s, outsider.id, nid) is None
            assert node_store.visible_to(s, user_id, str(uuid.uuid4())) is None
        with db.session() as s:
            kinds = [(e.kind, e.state, e.cause) for e in node_store.events(s, nid)]
        assert kinds[0] == ("state", "offline", "keepalive lost")
        assert len(kinds) == 3
