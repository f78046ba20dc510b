"""Joining a Space takes the invitee's consent.

The attack this closes: any registered user makes a Space, claims their own
(hostile) node into it, adds a victim by email and sends them a link; the
victim's browser then reads the hostile node's answers. Now "adding" makes an
invitation: until the victim accepts it, signed in as the invited email, the
Space, its nodes and the relay to them do not exist for the victim."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import update

from tests.fixtures.cloud import PG_ENV, Cloud, _create_pg_database
from tests.fixtures.invitations import invite, new_account
from tests.fixtures.peer import FAST, Peer, link_up
from tether.cloud.db import MIGRATIONS, Database, migrate
from tether.cloud.models import SpaceInvitation, User
from tether.cloud.store import spaces as space_store

NO_SUCH_INVITATION = "No invitation by that id for your account"


def attacker_space(cloud: Cloud, attacker_token: str) -> Cloud:
    """A Space of the attacker's own, seen as a Cloud whose admin is the attacker
    (so a Peer claims into it)."""
    r = cloud.api("POST", "/api/v1/spaces", token=attacker_token, json={"name": "Free stats"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    claim = cloud.api("GET", f"/api/v1/spaces/{sid}/claim-token", token=attacker_token)
    rooms = cloud.api("GET", f"/api/v1/spaces/{sid}/rooms", token=attacker_token)
    return dataclasses.replace(
        cloud,
        api_token=attacker_token,
        space_id=sid,
        claim_token=claim.json()["token"],
        room_ids=[r["id"] for r in rooms.json()],
    )


def sees(cloud: Cloud, token: str, space_id: str, node_id: str) -> dict[str, int | bool]:
    """What the victim's credential can reach of the attacker's Space."""
    listed = cloud.api("GET", "/api/v1/spaces", token=token).json()
    out: dict[str, int | bool] = {"listed": any(s["id"] == space_id for s in listed)}
    for name, path in (
        ("space", f"/api/v1/spaces/{space_id}"),
        ("nodes", f"/api/v1/spaces/{space_id}/nodes"),
        ("relay", f"/api/v2/nodes/{node_id}/info"),
    ):
        r = cloud.api("GET", path, token=token)
        if r.status_code == 404:
            assert r.json()["errorMsgKey"] == "ErrNotFound", r.text
        out[name] = r.status_code
    return out


def test_invited_victim_reaches_nothing_of_the_space_until_they_accept(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    attacker_email, attacker = new_account(cloud)
    victim_email, victim = new_account(cloud)
    _, bystander = new_account(cloud)
    hostile = attacker_space(cloud, attacker)

    async def scenario() -> None:
        peer = Peer(hostile).claim()
        link = await link_up(peer)
        server = asyncio.create_task(link.serve())
        try:
            await asyncio.to_thread(check, peer.node_id)
        finally:
            server.cancel()
            await link.ws.close()

    def check(node_id: str) -> None:
        assert cloud.api("GET", f"/api/v2/nodes/{node_id}/info", token=attacker).status_code == 200
        inv = invite(hostile, victim_email, "member", admin_token=attacker)
        assert inv["state"] == "pending" and inv["invited_by"] == attacker_email
        assert inv["token"].startswith("tin_")
        # An email nobody has gets the same answer: the inviter learns nothing.
        other = invite(hostile, f"nobody-{uuid.uuid4().hex[:6]}@example.org", admin_token=attacker)
        assert other.keys() == inv.keys() and other["state"] == "pending"

        # Invited, not accepted: the Space, its nodes and the relay are all 404.
        closed = {"listed": False, "space": 404, "nodes": 404, "relay": 404}
        assert sees(cloud, victim, hostile.space_id, node_id) == closed
        mine = cloud.api("GET", "/api/v1/invitations", token=victim).json()
        assert [(i["id"], i["space"]["name"], i["role"], i["invited_by"]) for i in mine] == [
            (inv["id"], "Free stats", "member", attacker_email)
        ]
        # Nobody else can accept it, neither by id nor with its token.
        for path, body in (
            (f"/api/v1/invitations/{inv['id']}/accept", None),
            ("/api/v1/invitations/accept", {"token": inv["token"]}),
        ):
            r = cloud.api("POST", path, token=bystander, json=body)
            assert r.status_code == 404 and NO_SUCH_INVITATION in r.json()["errorMessage"]
        assert sees(cloud, bystander, hostile.space_id, node_id)["relay"] == 404

        # Accepted: now, and only now, the victim reaches the Space and its node.
        r = cloud.api("POST", f"/api/v1/invitations/{inv['id']}/accept", token=victim)
        assert r.status_code == 200, r.text
        assert (r.json()["id"], r.json()["role"]) == (hostile.space_id, "member")
        opened = {"listed": True, "space": 200, "nodes": 200, "relay": 200}
        assert sees(cloud, victim, hostile.space_id, node_id) == opened
        assert cloud.api("GET", "/api/v1/invitations", token=victim).json() == []
        r = cloud.api("POST", f"/api/v1/invitations/{inv['id']}/accept", token=victim)
        assert r.status_code == 409 and r.json()["errorMsgKey"] == "ErrInvitationAnswered"
        # Inviting a member again is refused (they are in the admin's member list already).
        r = cloud.api(
            "POST",
            f"/api/v1/spaces/{hostile.space_id}/members",
            token=attacker,
            json={"email": victim_email},
        )
        assert r.status_code == 409 and r.json()["errorMsgKey"] == "ErrAlreadyMember"

    asyncio.run(scenario())


@pytest.fixture
def cloud_db(cloud: Cloud) -> Iterator[Database]:
    """The running Cloud's own database, opened in this process."""
    db = Database(cloud.database_url)
    try:
        yield db
    finally:
        db.dispose()


def test_decline_revoke_replace_and_expiry(cloud: Cloud, cloud_db: Database) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    email, invitee = new_account(cloud)

    def accept(inv: dict[str, object]) -> httpx.Response:
        return cloud.api("POST", f"/api/v1/invitations/{inv['id']}/accept", token=invitee)

    def space_status() -> int:
        return cloud.api("GET", sp, token=invitee).status_code

    # Bad input is a 4xx, on PostgreSQL too (NUL bytes never reach it).
    r = cloud.api("POST", "/api/v1/invitations/%00/accept", token=invitee)
    assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNotFound"
    r = cloud.api("POST", f"{sp}/members", json={"email": "a\x00@example.org"})
    assert r.status_code == 400 and "not an email address" in r.json()["errorMessage"]
    r = cloud.api("POST", f"{sp}/members", json={"email": "a@example.org", "role": "owner"})
    assert r.status_code == 400 and "role must be one of" in r.json()["errorMessage"]

    # Declined: no membership, and it cannot be accepted afterwards.
    inv = invite(cloud, email)
    r = cloud.api("POST", f"/api/v1/invitations/{inv['id']}/decline", token=invitee)
    assert r.status_code == 204, r.text
    r = accept(inv)
    assert r.status_code == 409 and r.json()["errorMsgKey"] == "ErrInvitationAnswered"
    assert space_status() == 404

    # Withdrawn by an admin: gone from both lists, accepting it is 410.
    inv = invite(cloud, email, "manager")
    listed = cloud.api("GET", f"{sp}/invitations").json()
    assert [(i["id"], i["email"], i["role"], i["state"]) for i in listed] == [
        (inv["id"], email, "manager", "pending")
    ]
    assert cloud.api("DELETE", f"{sp}/invitations/{inv['id']}").status_code == 204
    assert cloud.api("DELETE", f"{sp}/invitations/{inv['id']}").status_code == 404
    assert cloud.api("GET", f"{sp}/invitations").json() == []
    assert cloud.api("GET", "/api/v1/invitations", token=invitee).json() == []
    r = accept(inv)
    assert r.status_code == 410 and r.json()["errorMsgKey"] == "ErrInvitationRevoked"
    assert space_status() == 404

    # A new invitation replaces the open one: only the newest can be accepted.
    old, new = invite(cloud, email, "member"), invite(cloud, email, "manager")
    assert accept(old).json()["errorMsgKey"] == "ErrInvitationRevoked"
    assert [i["id"] for i in cloud.api("GET", "/api/v1/invitations", token=invitee).json()] == [
        new["id"]
    ]

    # Expired (its stored expiry put in the past): not offered, accepting is 410.
    with cloud_db.session(write_lock=True) as s:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        s.execute(
            update(SpaceInvitation).where(SpaceInvitation.id == new["id"]).values(expires_at=past)
        )
    assert cloud.api("GET", "/api/v1/invitations", token=invitee).json() == []
    assert [i["state"] for i in cloud.api("GET", f"{sp}/invitations").json()] == ["expired"]
    r = accept(new)
    assert r.status_code == 410 and r.json()["errorMsgKey"] == "ErrInvitationExpired"
    assert "invite you again" in r.json()["errorMessage"]
    assert space_status() == 404

    # The accepted invitation's role is the one given; members and managers
    # neither see nor make invitations.
    inv = invite(cloud, email, "manager")
    assert accept(inv).json()["role"] == "manager"
    assert space_status() == 200
    assert cloud.api("GET", f"{sp}/invitations", token=invitee).status_code == 403
    r = cloud.api("POST", f"{sp}/members", token=invitee, json={"email": "x@example.org"})
    assert r.status_code == 403


def test_operator_adds_a_member_directly(cloud: Cloud) -> None:
    """The Cloud's operator, on its command line, needs no invitation."""
    email, token = new_account(cloud)
    r = cloud.cli("admin", "add-member", "--space", cloud.space_id, "--email", email)
    assert r.returncode == 0, r.stderr
    assert cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}", token=token).status_code == 200


# --- the store and the migration, in process ---------------------------------------


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[Database]:
    """An empty database (SQLite, or PostgreSQL with TETHER_TEST_DATABASE_URL)."""
    drop = None
    url = f"sqlite:///{tmp_path / 'c.db'}"
    if os.environ.get(PG_ENV):
        url, drop = _create_pg_database(os.environ[PG_ENV])
    db = Database(url)
    try:
        yield db
    finally:
        db.dispose()
        if drop:
            drop()


def test_migration_0003_upgrades_and_downgrades(fresh_db: Database) -> None:
    migrate(fresh_db.engine)
    insp = sa_inspect(fresh_db.engine)
    assert {c["name"] for c in insp.get_columns("space_invitations")} == set(
        SpaceInvitation.__table__.columns.keys()
    )
    assert {tuple(i["column_names"]) for i in insp.get_indexes("space_invitations")} >= {
        ("space_id",),
        ("email",),
    }
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with fresh_db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
        conn.commit()
    assert "space_invitations" not in sa_inspect(fresh_db.engine).get_table_names()
    migrate(fresh_db.engine)
    assert "space_invitations" in sa_inspect(fresh_db.engine).get_table_names()


def test_invitation_states_follow_the_injected_clock(fresh_db: Database) -> None:
    migrate(fresh_db.engine)
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    week = space_store.INVITATION_LIFETIME
    with fresh_db.session(write_lock=True) as s:
        owner = User(email="owner@example.org", name="o", password_hash="x")
        invitee = User(email="bob@example.org", name="b", password_hash="x")
        s.add_all([owner, invitee])
        s.flush()
        space = space_store.create_space(s, "S", owner)
        token, inv = space_store.invite(s, space.id, " Bob@Example.org ", "member", owner.id, t0)
        assert inv.email == "bob@example.org" and inv.token_hash != token
        iid = inv.id
    with fresh_db.session(write_lock=True) as s:
        inv = s.get(SpaceInvitation, iid)
        assert inv is not None
        just_before = t0 + week - dt.timedelta(seconds=1)
        assert space_store.invitation_state(inv, just_before) == "pending"
        assert [i.id for i in space_store.invitations_for(s, "BOB@example.org", just_before)] == [
            iid
        ]
        assert space_store.invitation_state(inv, t0 + week) == "expired"
        assert space_store.invitations_for(s, "bob@example.org", t0 + week) == []
        # Only the invited email finds it, by id or by token; a wrong token finds nothing.
        assert space_store.invitation_for(s, iid, "eve@example.org") is None
        assert space_store.invitation_for(s, "x\x00", "bob@example.org") is None
        with pytest.raises(ValueError, match="not an email address"):
            space_store.invite(s, space.id, "bob\x00@example.org", "member", owner.id, t0)
        assert space_store.invitation_by_token(s, token, "eve@example.org") is None
        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        assert space_store.invitation_by_token(s, wrong, "bob@example.org") is None
        assert space_store.invitation_by_token(s, token, "bob@example.org") is inv
        with pytest.raises(space_store.InvitationClosed) as closed:
            space_store.accept(s, inv, invitee, t0 + week)
        assert closed.value.state == "expired"
        assert space_store.role_of(s, space.id, invitee.id) is None
        space_store.accept(s, inv, invitee, just_before)
        assert space_store.role_of(s, space.id, invitee.id) == "member"
        assert space_store.invitation_state(inv, just_before) == "accepted"
