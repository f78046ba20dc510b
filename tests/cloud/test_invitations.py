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
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import update

from tests.fixtures.cloud import PG_ENV, Cloud, _create_pg_database
from tests.fixtures.common import poll
from tests.fixtures.invitations import invite, join_by_link, link_path, new_account
from tests.fixtures.peer import FAST, Peer, link_up
from tests.fixtures.receivers import SmtpReceiver, smtp
from tests.fixtures.ui import csrf_of, session_client
from tether.cloud.db import MIGRATIONS, Database, migrate
from tether.cloud.models import SpaceInvitation, User
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store

__all__ = ["smtp"]  # the SMTP receiver's fixture, used by name below
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


# --- the invite link: people without an account ---------------------------------


def audit_actions(cloud: Cloud, target: str) -> list[tuple[str, str, dict[str, object]]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/audit")
    assert r.status_code == 200, r.text
    return [
        (e["action"], e["actor"], e["details"] or {})
        for e in reversed(r.json()["entries"])
        if e["target"] == target
    ]


def accounts_with(db: Database, email: str) -> int:
    with db.session() as s:
        return 1 if user_store.by_email(s, email) is not None else 0


def test_the_link_makes_the_account_only_when_the_invitee_sets_a_password(
    cloud: Cloud, cloud_db: Database
) -> None:
    email = f"new-{uuid.uuid4().hex[:6]}@example.org"
    inv = invite(cloud, email, "manager")
    assert inv["url"] == f"{cloud.url}/invite/{inv['token']}"
    path = link_path(inv)
    # Invited is not an account, nor a member.
    assert accounts_with(cloud_db, email) == 0
    members = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").json()
    assert email not in {m["email"] for m in members}

    visitor = cloud.client(follow_redirects=False)
    page = visitor.get(path)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "My Space" in page.text and cloud.admin_email in page.text and email in page.text
    assert "manager" in page.text and 'id="invite-form"' in page.text
    # The form's CSRF token must match its cookie; the password rules are the usual ones.
    r = visitor.post(
        path, data={"invite_csrf": "forged", "name": "X", "password": "p" * 12, "again": "p" * 12}
    )
    assert r.status_code == 403 and "did not come from this site" in r.text
    r = join_by_link(visitor, path, password="short")
    assert r.status_code == 400 and "at least 8 characters" in r.text
    csrf = re.search(r'name="invite_csrf" value="([^"]+)"', visitor.get(path).text)
    assert csrf
    r = visitor.post(
        path,
        data={"invite_csrf": csrf.group(1), "name": "N", "password": "p" * 12, "again": "q" * 12},
    )
    assert r.status_code == 400 and "differ" in r.text
    assert accounts_with(cloud_db, email) == 0  # nothing was made by the refusals

    r = join_by_link(visitor, path, name="Ada Lovelace")
    assert r.status_code == 303 and r.headers["location"] == f"/spaces/{cloud.space_id}"
    # Signed in (the new session), a manager of that Space, and a real account.
    assert visitor.get(f"/spaces/{cloud.space_id}/manage").status_code == 200
    members = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").json()
    assert {(m["email"], m["name"], m["role"]) for m in members} >= {
        (email, "Ada Lovelace", "manager")
    }
    session_client(cloud, email, "a-long-password")
    assert [(a, actor) for a, actor, _ in audit_actions(cloud, email)] == [
        ("member.invited", cloud.admin_email),
        ("member.added", email),
    ]
    added = audit_actions(cloud, email)[1][2]
    assert added["via"] == "invite link" and added["new_account"] is True

    # Single use: the link fails the second time, clearly, for anyone.
    for again in (visitor, cloud.client(follow_redirects=False)):
        r = again.get(path)
        assert r.status_code == 409 and "already used" in r.text and "only once" in r.text
    r = cloud.client(follow_redirects=False).post(path, data={})
    assert r.status_code == 409 and "already used" in r.text
    assert accounts_with(cloud_db, email) == 1


def test_an_email_with_an_account_joins_it_after_signing_in(
    cloud: Cloud, cloud_db: Database
) -> None:
    email, _ = new_account(cloud, password="my-own-password")
    path = link_path(invite(cloud, email))
    visitor = cloud.client(follow_redirects=False)
    page = visitor.get(path)
    assert page.status_code == 200 and 'id="invite-sign-in"' in page.text
    assert 'id="invite-form"' not in page.text  # no second account is offered
    r = visitor.post(path, data={"name": "Dup", "password": "p" * 12, "again": "p" * 12})
    assert r.status_code == 403 and "sign in" in r.text
    # Signed in as someone else: told so, cannot take the invitation.
    other_email, _ = new_account(cloud, password="other-password")
    other = session_client(cloud, other_email, "other-password")
    page = other.get(path)
    assert 'id="invite-other-account"' in page.text
    r = other.post(path, data={"csrf_token": csrf_of(other.get("/account").text)})
    assert r.status_code == 403
    assert other.get(f"/spaces/{cloud.space_id}").status_code == 404

    me = session_client(cloud, email, "my-own-password")
    page = me.get(path)
    assert 'id="invite-accept"' in page.text
    assert me.post(path, data={"csrf_token": "forged"}).status_code == 403
    r = me.post(path, data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/spaces/{cloud.space_id}"
    assert me.get(f"/spaces/{cloud.space_id}").status_code == 303  # on to its first room
    assert accounts_with(cloud_db, email) == 1
    assert me.get(path).status_code == 409


def test_expired_and_revoked_links_fail_clearly(cloud: Cloud) -> None:
    sp = f"/api/v1/spaces/{cloud.space_id}"
    for bad in (0, 30 * 86400 + 1, "soon", True):
        r = cloud.api("POST", f"{sp}/members", json={"email": "a@example.org", "expires_in": bad})
        assert r.status_code == 400 and "expires_in" in r.json()["errorMessage"], bad
    visitor = cloud.client(follow_redirects=False)

    # Expiry set per invitation: one second here, so it passes while we wait.
    short = invite(cloud, f"short-{uuid.uuid4().hex[:6]}@example.org", expires_in=1)
    path = link_path(short)
    r = poll(lambda: (x := visitor.get(path)).status_code == 410 and x, 10, "the link to expire")
    assert "expired" in r.text and "invite you again" in r.text
    r = visitor.post(path, data={})
    assert r.status_code == 410 and "expired" in r.text
    # The default is 7 days.
    week = invite(cloud, f"week-{uuid.uuid4().hex[:6]}@example.org")
    made = dt.datetime.fromisoformat(week["created_at"])
    assert dt.datetime.fromisoformat(week["expires_at"]) - made == dt.timedelta(days=7)

    # Revoked by an admin: the link fails, and the audit log says who.
    email = f"gone-{uuid.uuid4().hex[:6]}@example.org"
    inv = invite(cloud, email)
    assert visitor.get(link_path(inv)).status_code == 200
    assert cloud.api("DELETE", f"{sp}/invitations/{inv['id']}").status_code == 204
    r = visitor.get(link_path(inv))
    assert r.status_code == 410 and "revoked" in r.text
    r = join_by_link(cloud.client(), link_path(week))  # another invitation still works
    assert r.status_code == 303
    actions = [(a, actor) for a, actor, _ in audit_actions(cloud, email)]
    assert actions == [
        ("member.invited", cloud.admin_email),
        ("member.invitation_revoked", cloud.admin_email),
    ]


def test_guessing_tokens_hits_the_limit_and_tokens_stay_out_of_the_log(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud("--access-log", "-v")
    inv = invite(cloud, f"guess-{uuid.uuid4().hex[:6]}@example.org")
    path = link_path(inv)
    visitor = cloud.client(follow_redirects=False)
    assert visitor.get(path).status_code == 200  # a right token is not counted
    prefix = inv["token"].split("_")[1]
    wrong = [
        f"/invite/tin_{prefix}_{'A' * 43}",  # the right prefix, a wrong secret
        "/invite/tin_abcdefgh_" + "B" * 43,
        "/invite/nonsense",
        "/invite/%00",
    ]
    answers = [visitor.get(wrong[i % len(wrong)]) for i in range(10)]
    assert [a.status_code for a in answers] == [404] * 10
    assert "invitation link is not valid" in answers[0].text
    r = visitor.get(wrong[0])
    assert r.status_code == 429 and "Too many wrong invitation links" in r.text
    assert int(r.headers["retry-after"]) > 0
    # Past the limit the address is refused even with the right token, GET or POST.
    assert visitor.get(path).status_code == 429
    assert join_by_link_status(visitor, path) == 429

    log = cloud.log_file.read_text(errors="replace")
    assert f"/invite/tin_{prefix}_" in log  # the access log saw the requests...
    secret = inv["token"].split("_", 2)[2]
    assert secret not in log and inv["token"] not in log  # ...but never the token


def join_by_link_status(c: httpx.Client, path: str) -> int:
    return c.post(path, data={"invite_csrf": "x", "name": "n"}).status_code


def test_joining_with_a_new_account_follows_the_injected_clock(fresh_db: Database) -> None:
    migrate(fresh_db.engine)
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    with fresh_db.session(write_lock=True) as s:
        owner = User(email="owner@example.org", name="o", password_hash="x")
        s.add(owner)
        s.flush()
        space = space_store.create_space(s, "S", owner)
        hour = dt.timedelta(hours=1)
        token, inv = space_store.invite(
            s, space.id, "new@example.org", "member", owner.id, t0, hour
        )
        assert inv.expires_at == t0 + hour and inv.token_hash != token
        with pytest.raises(ValueError, match="1 second to 30 days"):
            space_store.invite(s, space.id, "x@example.org", "member", owner.id, t0, 31 * 24 * hour)
        assert space_store.invitation_by_link(s, token) is inv
        assert space_store.invitation_by_link(s, token[:-2] + "xx") is None
        with pytest.raises(space_store.InvitationClosed) as closed:
            space_store.join_with_new_account(s, inv, "New", "hash", t0 + hour)
        assert closed.value.state == "expired"
        assert user_store.by_email(s, "new@example.org") is None
        user = space_store.join_with_new_account(s, inv, "New", "hash", t0 + hour / 2)
        assert space_store.role_of(s, space.id, user.id) == "member"
        with pytest.raises(space_store.InvitationClosed) as closed:
            space_store.join_with_new_account(s, inv, "Again", "hash", t0 + hour / 2)
        assert closed.value.state == "accepted"
        # An email that has an account never gets a second one.
        s.add(User(email="known@example.org", name="k", password_hash="x"))
        _, other = space_store.invite(s, space.id, "known@example.org", "member", None, t0)
        with pytest.raises(space_store.AccountExists):
            space_store.join_with_new_account(s, other, "Known 2", "hash", t0)


def test_the_link_is_emailed_through_the_spaces_email_channel(
    cloud: Cloud, smtp: SmtpReceiver
) -> None:
    admin = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    manage = f"/spaces/{cloud.space_id}/manage"
    assert 'name="email_link"' not in admin.get(manage).text  # no SMTP server known
    r = cloud.api(
        "POST", f"/api/v1/spaces/{cloud.space_id}/notification-channels", json=smtp.channel()
    )
    assert r.status_code == 201, r.text
    page = admin.get(manage)
    assert 'name="email_link"' in page.text and "ops mail" in page.text
    email = f"mailed-{uuid.uuid4().hex[:6]}@example.org"
    form = {"csrf_token": csrf_of(page.text), "email": email, "role": "member"}
    r = admin.post(f"/spaces/{cloud.space_id}/members", data={**form, "email_link": "yes"})
    assert r.status_code == 200 and f"Also emailed to {email} through ops mail" in r.text
    shown = re.search(r'id="new-invite-link">([^<]+)<', r.text)
    assert shown
    assert len(smtp.messages) == 1 and smtp.logins
    mail = smtp.messages[0]
    assert mail["To"] == email and "My Space" in mail["Subject"]
    body = mail.get_payload(decode=True).decode()
    assert shown.group(1) in body and "works once" in body
    # The emailed link works like the shown one.
    r = join_by_link(cloud.client(follow_redirects=False), urlsplit(shown.group(1)).path)
    assert r.status_code == 303
    # Unticked: not sent.
    form["email"] = f"quiet-{uuid.uuid4().hex[:6]}@example.org"
    r = admin.post(f"/spaces/{cloud.space_id}/members", data=form)
    assert r.status_code == 200 and 'id="invite-mailed"' not in r.text
    assert len(smtp.messages) == 1


def test_two_answers_at_once_use_the_link_once(cloud: Cloud, cloud_db: Database) -> None:
    """Both browsers opened the link and submit together: one account, one 409."""
    email = f"race-{uuid.uuid4().hex[:6]}@example.org"
    path = link_path(invite(cloud, email))
    forms = []
    for name in ("First", "Second"):
        c = cloud.client(follow_redirects=False)
        found = re.search(r'name="invite_csrf" value="([^"]+)"', c.get(path).text)
        assert found
        pw = "a-long-password"
        form = {"invite_csrf": found.group(1), "name": name, "password": pw, "again": pw}
        forms.append((c, form))
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda cf: cf[0].post(path, data=cf[1]), forms))
    assert sorted(r.status_code for r in answers) == [303, 409], [r.text[:200] for r in answers]
    assert accounts_with(cloud_db, email) == 1
    members = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/members").json()
    assert [m["email"] for m in members].count(email) == 1
