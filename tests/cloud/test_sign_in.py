"""The one sign-in (API and web UI), in process: the limit policy with a fake
clock, IPv6 per /64, the same answer for unknown accounts, and no write lock
held while argon2 runs. The real app, its real SQLite database; the client
address is chosen through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.fixtures.api import claim_body
from tether.cloud import auth
from tether.cloud.app import create_app
from tether.cloud.auth import LOGIN_ATTEMPTS_PER_ACCOUNT, LOGIN_ATTEMPTS_PER_ADDRESS, LoginLimits
from tether.cloud.errors import ApiError
from tether.cloud.limits import Window
from tether.cloud.secrets import SecretBox, dummy_password_hash, verify_password
from tether.cloud.settings import CloudSettings
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store

EMAIL, PASSWORD, WRONG = "alice@example.org", "alice-password-1", "not-her-password"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Starlette]:
    app = create_app(CloudSettings(data_dir=tmp_path))
    with app.state.db.session(write_lock=True) as s:
        user = user_store.create_user(s, EMAIL, PASSWORD)
        space = space_store.create_space(s, "S", user)
        app.state.claim_token = claim_tokens.rotate(
            s, SecretBox(app.state.settings.secret_key_file), space.id, user.id
        )[0]
    yield app
    app.state.db.dispose()


def login(app: Starlette, address: str, email: str = EMAIL, password: str = WRONG) -> Any:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://cloud") as c:
            return await c.post("/api/v1/auth/login", json={"email": email, "password": password})

    return asyncio.run(go())


def refused(limits: LoginLimits, address: str, account: str) -> ApiError | None:
    try:
        limits.begin(address, account)
    except ApiError as exc:
        return exc
    return None


def test_attempts_in_flight_count_and_the_window_frees_them() -> None:
    clock = FakeClock()
    limits = LoginLimits(clock)
    # Ten attempts started, none finished yet (argon2 still running).
    for i in range(LOGIN_ATTEMPTS_PER_ADDRESS):
        assert refused(limits, "192.0.2.1", f"u{i}@x") is None
    exc = refused(limits, "192.0.2.1", "other@x")
    assert exc is not None and (exc.status, exc.key) == (429, "ErrRateLimited")
    assert exc.headers == {"Retry-After": "60"} and "from your address" in exc.message
    assert refused(limits, "192.0.2.2", "other@x") is None  # another address may
    clock.now += 60
    assert refused(limits, "192.0.2.1", "other@x") is None


def test_one_account_is_limited_across_addresses() -> None:
    limits = LoginLimits(FakeClock())
    for i in range(LOGIN_ATTEMPTS_PER_ACCOUNT):
        assert refused(limits, f"198.51.100.{i}", "victim@x") is None
    exc = refused(limits, "203.0.113.9", "victim@x")
    assert exc is not None and exc.status == 429 and "for this account" in exc.message
    # That refused attempt checked no password: it does not count for its address.
    assert limits.addresses.count("203.0.113.9") == 0
    assert refused(limits, "203.0.113.9", "someone-else@x") is None


def test_a_success_does_not_clear_the_failures_of_its_address() -> None:
    limits = LoginLimits(FakeClock())
    for i in range(LOGIN_ATTEMPTS_PER_ADDRESS - 1):
        assert refused(limits, "192.0.2.1", f"guess{i}@x") is None  # nine failures
    # The attacker signs in to their own account from the same address ...
    assert refused(limits, "192.0.2.1", "mine@x") is None
    limits.succeeded("192.0.2.1", "mine@x")
    # ... which takes back that sign-in only: one more guess, then 429.
    assert refused(limits, "192.0.2.1", "guess9@x") is None
    assert refused(limits, "192.0.2.1", "guess10@x") is not None


def test_ipv6_sign_ins_are_limited_per_64(app: Starlette) -> None:
    app.state.login_limits = LoginLimits(FakeClock())
    for i in range(1, LOGIN_ATTEMPTS_PER_ADDRESS + 1):
        r = login(app, f"2001:db8:0:1::{i:x}", email=f"u{i}@example.org")
        assert r.status_code == 401, r.text
    # Another host of the same /64 is the same client.
    r = login(app, "2001:db8:0:1:ffff::1", email="new@example.org")
    assert r.status_code == 429 and r.json()["errorMsgKey"] == "ErrRateLimited"
    assert r.headers["Retry-After"] == "60"
    assert login(app, "2001:db8:0:2::1", email="new@example.org").status_code == 401


def test_failed_claims_are_limited_per_64(app: Starlette) -> None:
    app.state.claim_limiter = Window(3, 60, FakeClock())

    async def claim(address: str, token: str) -> httpx.Response:
        node = str(uuid.uuid4())
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://cloud") as c:
            return await c.put(f"/api/v1/spaces/nodes/{node}", json=claim_body(node, token))

    bad = "tct_abcdefgh_" + "x" * 43
    for i in range(1, 4):
        assert asyncio.run(claim(f"2001:db8:0:1::{i}", bad)).status_code == 403
    r = asyncio.run(claim("2001:db8:0:1::99", app.state.claim_token))
    assert r.status_code == 429 and r.json()["errorMsgKey"] == "ErrTooManyRequests"
    assert asyncio.run(claim("2001:db8:0:2::1", app.state.claim_token)).status_code == 204


def test_unknown_account_answers_like_a_wrong_password(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which hashes argon2 checked, in order: an unknown account must cost one
    # full check too (against the dummy hash), or its faster answer tells.
    checked: list[str] = []

    def spy(stored: str, password: str) -> bool:
        checked.append(stored)
        return verify_password(stored, password)

    monkeypatch.setattr(auth, "verify_password", spy)

    def answer(email: str) -> dict[str, Any]:
        r = login(app, "192.0.2.1", email=email)
        app.state.login_limits = LoginLimits()  # stay under the limit
        assert r.status_code == 401
        body = r.json()
        return {k: body[k] for k in ("errorMsgKey", "errorMessage")}

    answers = [answer(EMAIL), answer("nobody@example.org")]
    assert (
        answers
        == [{"errorMsgKey": "ErrUnauthorized", "errorMessage": "Wrong email or password."}] * 2
    )
    assert len(checked) == 2 and checked[1] == dummy_password_hash() != checked[0]


def test_the_password_check_holds_no_write_lock(app: Starlette, tmp_path: Path) -> None:
    app.state.login_limits = LoginLimits(FakeClock())
    # Another writer holds SQLite's write lock (a slow claim, say) ...
    other = sqlite3.connect(tmp_path / "cloud.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        r = login(app, "192.0.2.1")
    finally:
        other.execute("ROLLBACK")
        other.close()
    # ... and a wrong password is still answered (not "database is locked"
    # after the busy timeout): the check needs no write lock.
    assert r.status_code == 401 and r.json()["errorMsgKey"] == "ErrUnauthorized"
    # The right one signs in (a short write, once the lock is free) and takes
    # back its attempt.
    r = login(app, "192.0.2.1", password=PASSWORD)
    assert r.status_code == 200 and r.json()["csrf_token"]
    assert app.state.login_limits.addresses.count("192.0.2.1") == 1
