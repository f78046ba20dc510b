"""The one role check and the Space operations the API and the UI share, in
process on a real SQLite database; the API's JSON errors for the same
refusals through a running Cloud here and in test_api.py, the UI's pages in
tests/ui."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import HTTPConnection

from tests.fixtures.cloud import Cloud
from tests.fixtures.database import migrated_database
from tests.fixtures.invitations import join, new_account
from tether.cloud import space_ops
from tether.cloud.auth import Principal
from tether.cloud.client import client_address
from tether.cloud.db import Database
from tether.cloud.models import Node, User
from tether.cloud.store import spaces as space_store
from tether.cloud.store.spaces import AllNodesRoom, Forbidden, NotFound, require_role


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database(tmp_path) as database:
        yield database


def _person(db: Database, email: str) -> Principal:
    with db.session(write_lock=True) as s:
        user = User(email=email, name=email, password_hash="x")
        s.add(user)
        s.flush()
        return Principal(user.id, user.email, user.name, "token")


def test_require_role_hides_the_space_from_strangers_and_names_the_missing_role(
    db: Database,
) -> None:
    admin, member, stranger = (_person(db, e) for e in ("a@x.y", "m@x.y", "s@x.y"))
    with db.session(write_lock=True) as s:
        owner, other = s.get(User, admin.user_id), s.get(User, member.user_id)
        assert owner is not None and other is not None
        sid = space_store.create_space(s, "Ops", owner).id
        space_store.set_member(s, sid, other, "member")
    with db.session() as s:
        space, role = require_role(s, sid.upper(), admin.user_id, "admin")  # ids in any case
        assert (space.id, role) == (sid, "admin")
        assert require_role(s, sid, member.user_id)[1] == "member"
        with pytest.raises(Forbidden) as refused:
            require_role(s, sid, member.user_id, "manager")
        assert (refused.value.role, refused.value.needed, refused.value.space_name) == (
            "member",
            "manager",
            "Ops",
        )
        # A stranger and a Space that does not exist look the same: 404, never 403.
        for space_id, who in ((sid, stranger), (str(uuid.uuid4()), admin)):
            with pytest.raises(NotFound) as missing:
                require_role(s, space_id, who.user_id, "member")
            assert missing.value.what == "Space"


def test_space_operations_refuse_with_domain_errors(db: Database) -> None:
    admin, member = _person(db, "a@x.y"), _person(db, "m@x.y")
    with db.session(write_lock=True) as s:
        owner, other = s.get(User, admin.user_id), s.get(User, member.user_id)
        assert owner is not None and other is not None
        sid = space_store.create_space(s, "Ops", owner).id
        space_store.set_member(s, sid, other, "member")
        all_nodes = space_store.all_nodes_room(s, sid).id
        node_id = str(uuid.uuid4())
        s.add(
            Node(id=node_id, space_id=sid, hostname="h", public_key_pem="k", public_key_sha256="f")
        )
    with db.session(write_lock=True) as s:
        room = space_ops.create_room(s, admin, sid, "Web")
        assert space_ops.rename_room(s, admin, sid, room.id.upper(), " Front ").name == "Front"
        space_ops.add_room_nodes(s, admin, sid, room.id, [node_id])
        space_ops.remove_room_node(s, admin, sid, room.id, node_id)
        with pytest.raises(Forbidden):
            space_ops.create_room(s, member, sid, "Mine")
        with pytest.raises(Forbidden):
            space_ops.remove_node(s, member, sid, node_id)
        with pytest.raises(AllNodesRoom, match="cannot be renamed"):
            space_ops.rename_room(s, admin, sid, all_nodes, "Other")
        with pytest.raises(AllNodesRoom, match="cannot be deleted"):
            space_ops.delete_room(s, admin, sid, all_nodes)
        with pytest.raises(AllNodesRoom, match="cannot leave"):
            space_ops.remove_room_node(s, admin, sid, all_nodes, node_id)
        with pytest.raises(NotFound) as missing:
            space_ops.add_room_nodes(s, admin, sid, room.id, [node_id, str(uuid.uuid4())])
        assert missing.value.what == "Node"
        with pytest.raises(NotFound) as missing:
            space_ops.delete_room(s, admin, sid, str(uuid.uuid4()))
        assert missing.value.what == "War Room"
        with pytest.raises(NotFound) as missing:
            space_ops.remove_member(s, admin, sid, str(uuid.uuid4()))
        assert missing.value.what == "Member"
        with pytest.raises(NotFound) as missing:
            space_ops.revoke_invitation(s, admin, sid, str(uuid.uuid4()))
        assert missing.value.what == "Open invitation"
        with pytest.raises(NotFound) as missing:
            space_ops.answer_invitation(s, member, None, True)
        assert missing.value.what == "Invitation"
        with pytest.raises(ValueError, match="at least one admin"):
            space_ops.change_member(s, admin, sid, admin.user_id, "member")
        assert space_ops.remove_node(s, admin, sid, node_id) == node_id


@pytest.mark.parametrize(
    ("host", "shown"),
    [("::ffff:192.0.2.7", "192.0.2.7"), ("2001:db8::1", "2001:db8::1"), ("192.0.2.7", "192.0.2.7")],
)
def test_client_address_of_http_and_websocket(host: str, shown: str) -> None:
    for kind in ("http", "websocket"):
        conn = HTTPConnection({"type": kind, "client": (host, 50000), "headers": []})
        assert client_address(conn) == shown
    assert client_address(HTTPConnection({"type": "http", "headers": []})) == "unknown"


def test_disconnect_uses_the_one_role_check(cloud: Cloud) -> None:
    """The disconnect route answers refusals like every other Space route."""
    node = str(uuid.uuid4())
    path = f"/api/v1/spaces/{cloud.space_id}/nodes/{node}/disconnect"
    _, stranger = new_account(cloud)
    email, member = new_account(cloud)
    join(cloud, email, member, "member")
    r = cloud.api("POST", path, token=stranger)
    assert (r.status_code, r.json()["errorMsgKey"]) == (404, "ErrNotFound")
    r = cloud.api("POST", path, token=member)
    assert (r.status_code, r.json()["errorMsgKey"]) == (403, "ErrForbidden")
    assert r.json()["errorMessage"] == "This needs the manager role in the Space; you are member."
    r = cloud.api("POST", path)  # the admin, about a node the Space does not have
    assert (r.status_code, r.json()["errorMsgKey"]) == (404, "ErrNotFound")
    assert r.json()["errorMessage"] == "Node not found, or you are not a member of its Space."
