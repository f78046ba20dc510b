"""Reading request bodies: a size cap, so no client can make the Cloud buffer an
unbounded upload, and for JSON a nesting-depth cap and bounded integers, so
no body can make a handler fail with a 500.

Every JSON endpoint reads its body with `read_json` (or `parse_json` /
`check_depth` where it reads the bytes itself). Python's `json` and msgspec
both recurse once per nesting level, so 20,000 nested `[` raise
RecursionError; the depth is therefore checked first, by a scan that does not
recurse.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from starlette.requests import Request

from tether.cloud.errors import ApiError, bad_request

MAX_JSON = 64 * 1024
MAX_DEPTH = 32

# A JSON string, or what is left of an unterminated one: it always matches from
# a quote, so one left-to-right pass drops every string (no rescans).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class BadJson(ValueError):
    """A body the Cloud does not accept as JSON; the message says why."""


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text`, without recursing: brackets
    outside strings, counted in C (re, map, accumulate). Exact for valid JSON;
    on invalid JSON it may overcount, never undercount before the point where
    a parser fails."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode()
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_depth(raw: bytes | str, limit: int = MAX_DEPTH) -> None:
    """BadJson if `raw` nests deeper than `limit` levels."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if nesting_depth(text) > limit:
        raise BadJson(
            f"The JSON body nests arrays and objects more than {limit} levels deep; "
            f"send at most {limit} levels."
        )


def parse_json(raw: bytes, depth: int = MAX_DEPTH) -> Any:
    """The JSON value of `raw` (UTF-8, at most `depth` levels), else BadJson."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson("The body is not UTF-8; send JSON encoded as UTF-8.") from None
    check_depth(text, depth)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadJson(f"The body is not valid JSON ({exc}).") from None


async def read_limited(request: Request, limit: int = MAX_JSON) -> bytes:
    too_large = ApiError(
        413, "ErrRequestTooLarge", f"The request body is larger than {limit} bytes."
    )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_JSON, *, optional: bool = False) -> Any:
    """The request's JSON body: 413 `ErrRequestTooLarge` over `limit` bytes, 400
    `ErrBadRequest` when it is not JSON or nests deeper than MAX_DEPTH. With
    `optional`, an empty body is None."""
    raw = await read_limited(request, limit)
    if optional and not raw.strip():
        return None
    try:
        return parse_json(raw)
    except BadJson as exc:
        raise bad_request(str(exc)) from None


def int_field(body: dict[str, Any], name: str, low: int, high: int, unit: str = "") -> int | None:
    """`body[name]` as a whole number from `low` to `high` (None when absent),
    else 400 naming the field and its range. JSON has no integer size limit:
    an unbounded one overflows dates and counters further on."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(
            f'"{name}" must be a whole number from {low} to {high}{unit}; got {value!r:.40}.'
        )
    return value
