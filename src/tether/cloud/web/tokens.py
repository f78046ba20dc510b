"""Claiming tokens page: a Space admin lists, creates and revokes named tokens.

A new token's secret is rendered once, in the answer to the create form (no
redirect, so it is never in a URL or a later page)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import space_ops
from tether.cloud.auth import Principal
from tether.cloud.models import utcnow
from tether.cloud.store import claim_tokens
from tether.cloud.store import labels as label_store
from tether.cloud.web.common import (
    UiError,
    field,
    in_db,
    member_space,
    nav,
    page,
    posted,
    redirect,
    render,
    signed_in,
)

FLASH = {"revoked": "Token revoked: new claims with it are refused; its nodes stay."}


def _ctx(s: Session, user: Principal, sid: str) -> dict[str, Any]:
    space, role = member_space(s, user, sid, "admin")
    ctx = nav(s, user, space, role)
    ctx["title"] = f"Claiming tokens of {space.name}"
    now = utcnow()
    names = {r["id"]: r["name"] for r in ctx["rooms"]}
    ctx["tokens"] = [
        {
            **claim_tokens.token_json(t, now),
            "room_names": [names.get(r, r) for r in claim_tokens.room_ids(t)],
            "uses_list": [claim_tokens.use_json(u) for u in claim_tokens.uses_of(s, t.id, 20)],
        }
        for t in claim_tokens.of_space(s, space.id)
    ]
    ctx["created"] = None  # set only in the answer to the create form
    return ctx


@page
async def tokens_page(request: Request) -> Response:
    user = await signed_in(request)
    sid = request.path_params["space_id"]
    ctx = await in_db(request, lambda s: _ctx(s, user, sid))
    ctx["flash"] = FLASH.get(request.query_params.get("done", ""))
    return render(request, "claim_tokens.html", ctx)


def _int(form: FormData, name: str, what: str) -> int | None:
    text = field(form, name)
    if not text:
        return None
    if not text.isdigit():
        raise UiError(400, f"{what} must be a whole number, or left empty.")
    return int(text)


@page
async def create_token(request: Request) -> Response:
    sid = request.path_params["space_id"]

    def create(s: Session, user: Principal, form: FormData) -> dict[str, Any]:
        hours = _int(form, "expires_in_hours", "Expires in (hours)")
        ephemeral = field(form, "ephemeral") == "yes"
        ttl_minutes = _int(form, "ephemeral_ttl_minutes", "Remove after offline (minutes)")
        body = {
            "name": field(form, "name"),
            "expires_in": None if hours is None else hours * 3600,
            "max_uses": _int(form, "max_uses", "Maximum uses"),
            "rooms": [str(r) for r in form.getlist("rooms") if str(r)],
            "labels": label_store.parse_pairs(
                [p for p in field(form, "labels").replace(",", "\n").splitlines() if p.strip()]
            ),
            "ephemeral": ephemeral,
            "ephemeral_ttl": None if ttl_minutes is None or not ephemeral else ttl_minutes * 60,
        }
        min_ttl = request.app.state.settings.min_ephemeral_ttl_seconds
        token, row = space_ops.create_claim_token(s, user, sid, body, utcnow(), min_ttl)
        ctx = _ctx(s, user, sid)
        ctx["created"] = {"token": token, "name": row.name, "prefix": row.prefix}
        return ctx

    ctx = await posted(request, create)
    return render(request, "claim_tokens.html", ctx, 201)


@page
async def revoke_token(request: Request) -> Response:
    sid, tid = request.path_params["space_id"], request.path_params["token_id"]
    await posted(request, lambda s, user, _: space_ops.revoke_claim_token(s, user, sid, tid))
    return redirect(f"/spaces/{sid}/claim-tokens?done=revoked")
