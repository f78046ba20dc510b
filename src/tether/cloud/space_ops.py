"""The Space operations that both the REST API (`api.py`) and the web UI
(`web/`) offer, each written once: the role check, the validation, the change
and its log line, in the caller's transaction.

They raise the domain errors of `store/spaces.py` (`NotFound`, `Forbidden`,
`AllNodesRoom`, `AlreadyMember`, `InvitationClosed`) or ValueError for a bad
field; the API answers them as JSON errors, the UI as error pages. Closing a
removed node's live link is the caller's, after the commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy.orm import Session

from tether.cloud import audit, room_rules, stale_nodes
from tether.cloud.auth import Principal
from tether.cloud.models import (
    ClaimToken,
    Node,
    Room,
    RoomRule,
    Space,
    SpaceInvitation,
    User,
    utcnow,
)
from tether.cloud.secrets import SecretBox, iso
from tether.cloud.store import claim_tokens
from tether.cloud.store import labels as label_store
from tether.cloud.store import nodes as node_store
from tether.cloud.store import spaces as space_store
from tether.cloud.store.spaces import AllNodesRoom, NotFound, require_role

log = logging.getLogger("tether.cloud.spaces")

MAX_TOKEN_LIFETIME = 10 * 365 * 86400  # a claiming token's "expires_in": at most 10 years

# Why an invitation can no longer be answered: (status, errorMsgKey, text).
CLOSED = {
    "expired": (410, "ErrInvitationExpired", "This invitation has expired"),
    "revoked": (410, "ErrInvitationRevoked", "A Space admin withdrew or replaced this invitation"),
    "accepted": (409, "ErrInvitationAnswered", "You already accepted this invitation"),
    "declined": (409, "ErrInvitationAnswered", "You already declined this invitation"),
}


def closed(exc: space_store.InvitationClosed) -> tuple[int, str, str]:
    """(status, errorMsgKey, message) for an invitation that can no longer be answered."""
    status, key, what = CLOSED[exc.state]
    return (
        status,
        key,
        f"{what}; ask an admin of the Space to invite you again if you want to join.",
    )


def _user(s: Session, actor: Principal) -> User:
    user = s.get(User, actor.user_id)
    assert user is not None, "a signed-in principal has a user row"
    return user


# --- Spaces -------------------------------------------------------------------


def create_space(s: Session, box: SecretBox, actor: Principal, name: str) -> Space:
    """A new Space with the caller as its admin, and its first claiming token."""
    owner = _user(s, actor)
    space = space_store.create_space(s, name, owner)
    claim_tokens.rotate(s, box, space.id, owner.id)
    return space


def rename_space(s: Session, actor: Principal, space_id: str, name: object) -> Space:
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    space.name = space_store.check_name(name, "a Space")
    return space


def rotate_claim_token(
    s: Session,
    box: SecretBox,
    actor: Principal,
    space_id: str,
    expires_at: dt.datetime | None = None,
) -> tuple[str, ClaimToken]:
    """A new claiming token (admin); the old one stops working at once."""
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    token, row = claim_tokens.rotate(s, box, space.id, actor.user_id, expires_at)
    audit.record(s, space.id, actor.email, "token.rotated", row.name, {"prefix": row.prefix})
    log.info(
        "claiming token of space %s rotated by %s (new prefix %s)",
        space.id,
        actor.email,
        row.prefix,
    )
    return token, row


# --- members and invitations --------------------------------------------------


def invite(
    s: Session,
    actor: Principal,
    space_id: str,
    email: str,
    role: str,
    expires_in: object = None,
) -> tuple[str, SpaceInvitation]:
    """Invite `email` with `role` (admin), valid for `expires_in` seconds (7
    days when None); the same answer whether or not an account has that
    email. Returns (token, invitation): the token is the invite link's."""
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    lifetime = space_store.INVITATION_LIFETIME
    if expires_in is not None:
        longest = int(space_store.MAX_INVITATION_LIFETIME.total_seconds())
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int)
            or not 1 <= expires_in <= longest
        ):
            raise ValueError(f'"expires_in" must be a whole number of seconds, 1 to {longest}')
        lifetime = dt.timedelta(seconds=expires_in)
    token, inv = space_store.invite(s, space.id, email, role, actor.user_id, utcnow(), lifetime)
    audit.record(
        s,
        space.id,
        actor.email,
        "member.invited",
        inv.email,
        {"role": role, "prefix": inv.prefix, "expires_at": iso(inv.expires_at)},
    )
    log.info(
        "invitation %s to space %s (role %s) made by %s", inv.prefix, space.id, role, actor.email
    )
    return token, inv


def invite_url(cloud_url: str, token: str) -> str:
    """The link the invitee opens (web/invitations.py), shown to the admin once."""
    return f"{cloud_url.rstrip('/')}/invite/{token}"


def revoke_invitation(s: Session, actor: Principal, space_id: str, invitation_id: str) -> None:
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    inv = space_store.revoke_invitation(s, space.id, invitation_id, utcnow())
    if inv is None:
        raise NotFound("Open invitation")
    audit.record(
        s, space.id, actor.email, "member.invitation_revoked", inv.email, {"prefix": inv.prefix}
    )
    log.info("invitation %s to space %s revoked by %s", inv.prefix, space.id, actor.email)


def join_with_new_account(s: Session, inv: SpaceInvitation, name: str, password_hash: str) -> User:
    """The invite link's invitee without an account: the account is made now,
    a member with the invited role (store/spaces.py); InvitationClosed,
    AccountExists or ValueError (the name) otherwise."""
    user = space_store.join_with_new_account(s, inv, name, password_hash, utcnow())
    audit.record(
        s,
        inv.space_id,
        user.email,
        "member.added",
        user.email,
        {"role": inv.role, "via": "invite link", "new_account": True, "prefix": inv.prefix},
    )
    log.info(
        "invitation %s to space %s used to make the account %s",
        inv.prefix,
        inv.space_id,
        user.email,
    )
    return user


def answer_invitation(
    s: Session, actor: Principal, inv: SpaceInvitation | None, accepting: bool
) -> SpaceInvitation:
    """Accept or decline an invitation found for the caller's email (None:
    there is none). InvitationClosed when it can no longer be answered."""
    if inv is None:
        raise NotFound("Invitation")
    if not accepting:
        space_store.decline(s, inv, utcnow())
        return inv
    user = _user(s, actor)
    space_store.accept(s, inv, user, utcnow())
    audit.record(
        s,
        inv.space_id,
        user.email,
        "member.added",
        user.email,
        {"role": inv.role, "via": "invitation"},
    )
    log.info("invitation %s to space %s accepted by %s", inv.prefix, inv.space_id, user.email)
    return inv


def change_member(s: Session, actor: Principal, space_id: str, user_id: str, role: str) -> User:
    """Give a member another role (admin); a Space keeps at least one admin."""
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    user = s.get(User, user_id)
    if user is None or space_store.role_of(s, space.id, user.id) is None:
        raise NotFound("Member")
    before = space_store.role_of(s, space.id, user.id)
    space_store.set_member(s, space.id, user, role)
    if before != role:
        audit.record(
            s,
            space.id,
            actor.email,
            "member.role_changed",
            user.email,
            {"from": before, "to": role},
        )
    return user


def remove_member(s: Session, actor: Principal, space_id: str, user_id: str) -> None:
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    user = s.get(User, user_id)
    role = space_store.role_of(s, space.id, user_id) if user is not None else None
    if not space_store.remove_member(s, space.id, user_id):
        raise NotFound("Member")
    target = user.email if user is not None else user_id
    audit.record(s, space.id, actor.email, "member.removed", target, {"role": role})


# --- War Rooms ----------------------------------------------------------------


def room(s: Session, space: Space, room_id: str) -> Room:
    """A War Room of `space`, else NotFound."""
    found = space_store.room_in_space(s, space.id, room_id.lower())
    if found is None:
        raise NotFound("War Room")
    return found


def create_room(s: Session, actor: Principal, space_id: str, name: str) -> Room:
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    return space_store.create_room(s, space.id, name)


def rename_room(s: Session, actor: Principal, space_id: str, room_id: str, name: object) -> Room:
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    found = room(s, space, room_id)
    if found.is_all_nodes:
        raise AllNodesRoom('The "All nodes" room cannot be renamed.')
    found.name = space_store.check_name(name, "a War Room")
    return found


def delete_room(s: Session, actor: Principal, space_id: str, room_id: str) -> None:
    """Delete a War Room; its nodes stay in the Space (manager)."""
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    found = room(s, space, room_id)
    if found.is_all_nodes:
        raise AllNodesRoom(
            'The "All nodes" room cannot be deleted; it holds every node of the Space.'
        )
    s.delete(found)


# --- nodes --------------------------------------------------------------------


def node(s: Session, space: Space, node_id: str) -> Node:
    """A node of `space`, else NotFound."""
    found = node_store.in_space(s, space.id, node_id)
    if found is None:
        raise NotFound("Node")
    return found


def add_room_nodes(
    s: Session, actor: Principal, space_id: str, room_id: str, node_ids: list[str]
) -> None:
    """Put nodes of the Space into a War Room (manager); all or none."""
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    target = room(s, space, room_id)
    for node_id in node_ids:
        found = node(s, space, node_id)
        node_store.add_to_room(s, found, target)
        room_rules.make_manual(s, found.id, target.id)  # kept when its labels change


def remove_room_node(
    s: Session, actor: Principal, space_id: str, room_id: str, node_id: str
) -> None:
    """Take a node out of a War Room; it stays in the Space (manager)."""
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    target = room(s, space, room_id)
    found = node(s, space, node_id)
    if target.is_all_nodes:
        raise AllNodesRoom(
            'A node cannot leave the "All nodes" room; remove it from the Space instead.'
        )
    node_store.remove_from_room(s, found, target)


def remove_node(s: Session, actor: Principal, space_id: str, node_id: str) -> str:
    """Remove a node from its Space in any state (manager): its key stops
    working. Returns its id; the caller closes its live link after the commit."""
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    found = node(s, space, node_id)
    removed = found.id
    audit.record(s, space.id, actor.email, "node.removed", removed, {"hostname": found.hostname})
    node_store.remove(s, found, actor.email)
    log.info("node %s removed from space %s by %s", removed, space.id, actor.email)
    return removed


# --- named claiming tokens, node labels, room rules (issue 13) ----------------


def create_claim_token(
    s: Session,
    actor: Principal,
    space_id: str,
    body: dict[str, Any],
    now: dt.datetime,
    min_ephemeral_ttl: int = stale_nodes.MIN_EPHEMERAL_TTL,
) -> tuple[str, ClaimToken]:
    """A named claiming token (admin) from {"name", "expires_in", "max_uses",
    "rooms", "labels", "ephemeral", "ephemeral_ttl"}; its secret is returned
    only here."""
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    expires_in = body.get("expires_in")
    if expires_in is not None and (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not 1 <= expires_in <= MAX_TOKEN_LIFETIME
    ):
        raise ValueError(f'"expires_in" must be 1 to {MAX_TOKEN_LIFETIME} seconds.')
    max_uses = body.get("max_uses")
    if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int)):
        raise ValueError('"max_uses" must be a whole number, or left out for no limit.')
    ephemeral = body.get("ephemeral", False)
    if not isinstance(ephemeral, bool):
        raise ValueError('"ephemeral" must be true or false.')
    ttl = body.get("ephemeral_ttl")
    if ttl is not None and not ephemeral:
        raise ValueError('"ephemeral_ttl" needs "ephemeral": true.')
    if ephemeral:
        ttl = stale_nodes.check_ttl(
            stale_nodes.DEFAULT_EPHEMERAL_TTL if ttl is None else ttl, min_ephemeral_ttl
        )
    token, row = claim_tokens.create(
        s,
        space.id,
        body.get("name"),
        actor.user_id,
        expires_at=None if expires_in is None else now + dt.timedelta(seconds=expires_in),
        max_uses=max_uses,
        rooms=body.get("rooms"),
        labels=body.get("labels"),
        ephemeral=ephemeral,
        ephemeral_ttl=ttl,
    )
    audit.record(
        s,
        space.id,
        actor.email,
        "token.created",
        row.name,
        {
            "prefix": row.prefix,
            "max_uses": row.max_uses,
            "expires_at": iso(row.expires_at),
            "ephemeral_ttl": ttl,
        },
    )
    log.info(
        "claiming token %r (prefix %s) of space %s created by %s",
        row.name,
        row.prefix,
        space.id,
        actor.email,
    )
    return token, row


def claim_token(s: Session, actor: Principal, space_id: str, ref: str) -> ClaimToken:
    """A claiming token of the Space by id, prefix or name (admin), else NotFound."""
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    row = claim_tokens.find(s, space.id, ref)
    if row is None:
        raise NotFound("Claiming token")
    return row


def revoke_claim_token(s: Session, actor: Principal, space_id: str, ref: str) -> ClaimToken:
    """Stop new claims with a token at once (admin); its nodes stay enrolled."""
    row = claim_token(s, actor, space_id, ref)
    if claim_tokens.revoke(s, row, actor.email):
        audit.record(
            s, row.space_id, actor.email, "token.revoked", row.name, {"prefix": row.prefix}
        )
        log.info(
            "claiming token %r (prefix %s) of space %s revoked by %s",
            row.name,
            row.prefix,
            row.space_id,
            actor.email,
        )
    return row


def set_node_labels(
    s: Session, actor: Principal, space_id: str, node_id: str, labels: object
) -> Node:
    """Replace the labels set in the Cloud on a node (manager); its rule rooms follow."""
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    found = node(s, space, node_id)
    if label_store.set_source(s, found.id, "cloud", label_store.check_labels(labels)):
        room_rules.apply_to_node(s, found.id, space.id)
    return found


def add_room_rule(
    s: Session, actor: Principal, space_id: str, room_id: str, body: dict[str, Any]
) -> RoomRule:
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    return room_rules.add_rule(s, room(s, space, room_id), body)


def remove_room_rule(
    s: Session, actor: Principal, space_id: str, room_id: str, rule_id: str
) -> None:
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    if not room_rules.remove_rule(s, room(s, space, room_id), rule_id):
        raise NotFound("Room rule")


def set_stale_policy(
    s: Session, actor: Principal, space_id: str, after_days: object, action: object
) -> Space:
    """Set or turn off (after_days None) the Space's stale-node policy (admin)."""
    space, _ = require_role(s, space_id, actor.user_id, "admin")
    days, clean_action = stale_nodes.check_policy(after_days, action)
    stale_nodes.set_policy(s, space, days, clean_action, actor.email)
    return space
