"""The relay's handling of a node's answer, in-process: which content types are
kept, which answers are refused, and the inflate budget (no Cloud needed:
these are pure functions and one ASGI response)."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import pytest

from tests.fixtures.hostile import zlib_of_zeros
from tether.cloud.headers import secured
from tether.cloud.limits import Budget
from tether.cloud.relay import (
    InflatedResponse,
    RelayBusy,
    content_type_of,
    inflate,
    refusal,
)
from tether.protocol.frames import (
    INFLATE_PIECE,
    BodyTooLarge,
    ProtocolError,
    QueryResponse,
    inflate_pieces,
)

MiB = 2**20


def zlib_response(body: bytes) -> QueryResponse:
    return QueryResponse(id=1, status=200, body=body, encoding="zlib")


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=UTF-8", "application/json; charset=utf-8"),
        ("application/json; charset=utf-7", "application/json"),
        ("text/plain; version=0.0.4; charset=utf-8", "text/plain; version=0.0.4; charset=utf-8"),
        ("text/plain; version=<script>", "text/plain"),
        ("text/csv; charset=utf-8", "text/csv; charset=utf-8"),
        ("text/html", "application/octet-stream"),
        ("text/html; charset=utf-8", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("application/xhtml+xml", "application/octet-stream"),
        ("text/xml", "application/octet-stream"),
        ("application/javascript", "application/octet-stream"),
        ("", "application/octet-stream"),
        ("application/json, text/html", "application/octet-stream"),
        ("application/jsonp", "application/octet-stream"),
    ],
)
def test_only_the_agent_apis_content_types_are_kept(sent: str, relayed: str) -> None:
    assert content_type_of(sent) == relayed


@pytest.mark.parametrize("status", [0, 100, 101, 199, 600, 700, -1, 2**31])
def test_a_status_outside_200_to_599_is_refused(status: int) -> None:
    problem = refusal(QueryResponse(id=1, status=status))
    assert problem is not None and f"status {status}" in problem


@pytest.mark.parametrize("ctype", ["text/plain\r\nX: y", "a\nb", "json\x00", "x\x7f", "x\x85"])
def test_control_characters_in_the_content_type_are_refused(ctype: str) -> None:
    problem = refusal(QueryResponse(id=1, status=200, content_type=ctype))
    assert problem is not None and "control characters" in problem


def test_good_answers_are_not_refused() -> None:
    assert refusal(QueryResponse(id=1, status=200)) is None
    assert refusal(QueryResponse(id=1, status=599, content_type="text/html")) is None


def test_a_bomb_is_inflated_in_pieces_and_refused_at_the_cap_not_inflated_whole() -> None:
    bomb = zlib_response(zlib_of_zeros(256 * MiB))  # 256 MiB from about 256 KiB
    made = 0
    with pytest.raises(BodyTooLarge, match=f"past {4 * MiB} bytes"):
        for piece in inflate_pieces(bomb, 4 * MiB):
            assert len(piece) <= INFLATE_PIECE
            made += len(piece)
    assert made <= 4 * MiB  # the piece past the cap is never handed out
    body = b"".join(inflate_pieces(zlib_response(zlib.compress(b"abc" * MiB)), 3 * MiB))
    assert body == b"abc" * MiB  # exactly at the cap is fine


def test_corrupt_and_truncated_bodies_are_refused() -> None:
    packed = zlib.compress(b"x" * MiB)
    with pytest.raises(ProtocolError, match="truncated"):
        list(inflate_pieces(zlib_response(packed[: len(packed) // 2])))
    with pytest.raises(ProtocolError, match="truncated"):
        list(inflate_pieces(zlib_response(b"")))
    with pytest.raises(ProtocolError, match="corrupt"):
        list(inflate_pieces(zlib_response(b"not zlib at all")))


def test_inflate_takes_each_piece_from_the_budget_and_gives_all_back_on_failure() -> None:
    budget = Budget(10 * MiB)
    ok = zlib_response(zlib_of_zeros(6 * MiB))
    pieces = asyncio.run(inflate(ok, 16 * MiB, budget))
    assert sum(map(len, pieces)) == 6 * MiB == budget.held
    # 6 MiB are held: another 6 do not fit, and what it took is given back.
    with pytest.raises(RelayBusy):
        asyncio.run(inflate(ok, 16 * MiB, budget))
    assert budget.held == 6 * MiB
    # Past the cap, or corrupt: nothing stays held either.
    with pytest.raises(BodyTooLarge):
        asyncio.run(inflate(zlib_response(zlib_of_zeros(64 * MiB)), 2 * MiB, budget))
    with pytest.raises(ProtocolError):
        asyncio.run(inflate(zlib_response(b"\x78\x9c garbage"), 2 * MiB, budget))
    assert budget.held == 6 * MiB
    # Only checking (the deflate pass-through) holds nothing.
    assert asyncio.run(inflate(ok, 16 * MiB, None)) == []
    with pytest.raises(BodyTooLarge):
        asyncio.run(inflate(zlib_response(zlib_of_zeros(64 * MiB)), 2 * MiB, None))


def test_an_inflated_answer_gives_its_bytes_back_once_sent_or_failed() -> None:
    budget = Budget(10 * MiB)
    pieces = asyncio.run(inflate(zlib_response(zlib_of_zeros(MiB)), 16 * MiB, budget))
    response = InflatedResponse(pieces, budget, 200, {}, "application/json")
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http"}, receive, send))
    assert budget.held == 0
    assert dict(sent[0]["headers"])[b"content-length"] == str(MiB).encode()
    assert b"".join(m["body"] for m in sent[1:]) == b"\0" * MiB
    assert [m["more_body"] for m in sent[1:]] == [True] * (len(sent) - 2) + [False]

    pieces = asyncio.run(inflate(zlib_response(zlib_of_zeros(MiB)), 16 * MiB, budget))
    response = InflatedResponse(pieces, budget, 200, {}, "application/json")

    async def broken(message: Any) -> None:
        raise OSError("client went away")

    with pytest.raises(OSError):
        asyncio.run(response({"type": "http"}, receive, broken))
    assert budget.held == 0


def test_security_headers_replace_an_api_answers_own_and_default_elsewhere() -> None:
    own = [(b"content-type", b"text/html"), (b"cache-control", b"max-age=600")]
    api = dict(secured(own, api=True, https=True))
    assert api[b"content-security-policy"] == b"sandbox; default-src 'none'"
    assert api[b"x-content-type-options"] == b"nosniff"
    assert api[b"cache-control"] == b"no-store"
    assert api[b"strict-transport-security"] == b"max-age=31536000"
    page = [(b"content-security-policy", b"default-src 'self'")]
    ui = dict(secured(page, api=False, https=False))
    assert ui[b"content-security-policy"] == b"default-src 'self'"  # the page's own
    assert ui[b"x-frame-options"] == b"DENY" and ui[b"x-content-type-options"] == b"nosniff"
    assert b"strict-transport-security" not in ui
    bare = dict(secured([], api=False, https=True))
    assert bare[b"content-security-policy"] == b"default-src 'none'; frame-ancestors 'none'"
