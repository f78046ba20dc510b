"""Read a request body with a size cap, so no client can make the Cloud buffer
an unbounded upload."""

from __future__ import annotations

from starlette.requests import Request

from tether.cloud.errors import ApiError

MAX_JSON = 64 * 1024


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
