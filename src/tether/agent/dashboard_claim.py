"""`/api/v3/claim`: claiming from the agent's dashboard, the shape of Netdata
v2's API (`key`, `token`, `rooms`, `url`; GET query or POST form).

Without `key`: the claim status and `key_filename`, the file holding the
single-use key (`tether.agent.claim_key`). With it: every parameter is
checked against a strict character set, then the key (which changes after
every attempt), then the node is claimed and the link starts. Refusals say
what was wrong; a wrong key is 403.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.agent.claim_key import ClaimKey
from tether.agent.runtime import Agent
from tether.node.cloud_d import split_rooms

log = logging.getLogger("tether.agent")

# Strict on purpose: these reach files and a command's flags.
KEY_RE = re.compile(r"[0-9a-f]{32}")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,512}")
ROOMS_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(,[A-Za-z0-9_-]{1,64}){0,49}")
URL_RE = re.compile(
    r"https://([A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?/?"
)
FIELDS = {
    "key": (KEY_RE, "the 32 hex digits of the key file"),
    "token": (TOKEN_RE, "letters, digits, '-' and '_'"),
    "rooms": (ROOMS_RE, "War Room ids (letters, digits, '-', '_') separated by commas"),
    "url": (URL_RE, "https://HOST[:PORT] (letters, digits, '.', '-', or [IPv6])"),
}


def _answer(agent: Agent, key: ClaimKey, status: int = 200, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "success": False,
        "message": "",
        "key_filename": str(key.path),
        "can_be_claimed": agent.claim.enabled and not agent.claim.claimed_id,
        "claimed_id": agent.claim.claimed_id,
        "cloud_url": agent.claim.cloud_base_url,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


async def claim_endpoint(request: Request, agent: Agent, key: ClaimKey) -> Response:
    params: dict[str, str] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    if "key" not in params:
        return _answer(agent, key, message=f"give key= (the contents of {key.path})")
    for name, (pattern, what) in FIELDS.items():
        value = params.get(name, "")
        if name == "rooms" and value == "":
            continue  # no rooms: the Space's All nodes room only
        if not pattern.fullmatch(value):
            key.regenerate()  # an attempt all the same
            return _answer(agent, key, 400, message=f"{name} is not valid: use {what}")
    if not key.try_key(params["key"]):
        log.warning("claim from the dashboard refused: wrong key (from %s)", request.client)
        return _answer(
            agent,
            key,
            403,
            message=f"wrong key: read the new one from {key.path} (it changes after every try)",
        )
    if agent.claim.claimed_id:
        return _answer(agent, key, 409, message="this node is already claimed")
    run = agent.dashboard_claim
    if run is None:
        return _answer(agent, key, 503, message="claiming is not available in this agent")
    url = params["url"].rstrip("/")
    claimed, code, message = await asyncio.to_thread(
        run, params["token"], split_rooms(params.get("rooms", "")), url
    )
    if claimed:
        agent.reload_claiming_state()
    return _answer(
        agent, key, 200 if claimed else 502, success=claimed, message=message, exit_code=code
    )
