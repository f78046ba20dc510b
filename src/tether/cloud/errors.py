"""One JSON error shape for every API answer that is not a success.

`{"errorMsgKey": "ErrForbidden", "errorMessage": "what was wrong and what to do",
"errorCode": "<short id to quote in a bug report>"}` — the claim clients read
`errorMsgKey`; people read `errorMessage`.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class ApiError(Exception):
    def __init__(
        self, status: int, key: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.key = key
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, key: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    code = secrets.token_hex(4)
    body = {"errorMsgKey": key, "errorMessage": message, "errorCode": code}
    # The code is echoed as a header too, so the server can log what it sent.
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Error-Code": code})


async def api_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.key, exc.message, exc.headers)


def bad_request(message: str, key: str = "ErrBadRequest") -> ApiError:
    return ApiError(400, key, message)


def not_found(what: str) -> ApiError:
    return ApiError(404, "ErrNotFound", f"{what} not found, or you are not a member of its Space.")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "ErrForbidden", message)
