"""Scale-out: a change of who may do what, made through one Cloud process, is
obeyed by the other at once, not when its cache of checked credentials expires
(here 300 s, so only the announcement over NATS can explain a quick refusal)."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import KEEPALIVE
from tests.fixtures.scaleout import pair


def test_a_token_revoked_on_one_process_is_refused_by_the_other(
    start_cloud: Callable[..., Cloud], pg_url: str
) -> None:
    a, b = pair(start_cloud, pg_url, KEEPALIVE, "--auth-cache-seconds", "300")
    made = a.api("POST", "/api/v1/me/api-tokens", json={"name": "script"})
    assert made.status_code == 201, made.text
    token, prefix = made.json()["token"], made.json()["prefix"]
    # B checks the token once and trusts it for 300 s from now on ...
    for _ in range(2):
        assert b.api("GET", "/api/v1/me", token=token).status_code == 200
    # ... until A revokes it.
    assert a.api("DELETE", f"/api/v1/me/api-tokens/{prefix}").status_code == 204
    refused = poll(
        lambda: (r := b.api("GET", "/api/v1/me", token=token)).status_code == 401 and r,
        10,
        "the revoked token refused by the other process",
    )
    assert refused.json()["errorMsgKey"] == "ErrUnauthorized"
    # The admin's own token, checked on B before, still works there.
    assert b.api("GET", "/api/v1/me").status_code == 200
