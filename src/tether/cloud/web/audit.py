"""The audit log page: a Space admin reads who did what, filtered by action,
actor and time, newest first, a page at a time (tether.cloud.audit)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import audit
from tether.cloud.models import Space
from tether.cloud.web.common import UiError, page, signed_in, space_page


@page
async def audit_page(request: Request) -> Response:
    user = await signed_in(request)
    params = {k: v for k, v in request.query_params.items() if k in ("action", "actor", "since")}
    try:
        q = audit.parse(
            {**params, "before": request.query_params.get("before", ""), "limit": "100"}
        )
    except audit.BadFilter as exc:
        raise UiError(400, str(exc)) from None

    def fill(s: Session, space: Space, _role: str) -> dict[str, Any]:
        rows, next_before = audit.page(s, space.id, q)
        return {
            "title": f"Audit log of {space.name}",
            "entries": [audit.entry_json(e) for e in rows],
            "next_before": next_before,
            "filters": params,
            "actions": list(audit.ACTIONS),
        }

    return await space_page(request, user, "audit.html", fill, {}, needed="admin")
