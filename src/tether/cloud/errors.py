"""One JSON error shape for every API answer that is not a success.

`{"errorMsgKey": "ErrForbidden", "errorMessage": "what was wrong and what to do",
"errorCode": "<short id to quote in a bug report>"}` — the claim clients read
`errorMsgKey`; people read `errorMessage`.
"""

from __future__ import annotations

import logging
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("tether.cloud")


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


async def client_gone_handler(_request: Request, _exc: Exception) -> Response:
    """The client went away mid-body (or its body timed out and got a 408):
    nobody reads an answer, and it is no fault of the Cloud's to log."""
    return Response(status_code=400, headers={"Connection": "close"})


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    """The answer to an exception nothing else handled (Starlette's
    ServerErrorMiddleware calls this, then re-raises so uvicorn logs the
    traceback and closes the connection). JSON like every other error, with
    `Connection: close` so a keep-alive client knows the connection ends here
    instead of finding it dropped under its next request."""
    response = error_response(
        500,
        "ErrInternalServerError",
        "The Cloud failed to handle this request; it is not your fault. Try again; if it "
        "keeps failing, report the errorCode with the time to the Cloud's operator.",
        # This answer bypasses the app's middleware: set its headers here.
        {
            "Connection": "close",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )
    log.error(
        "internal error %s on %s %r: %s (traceback follows from uvicorn)",
        response.headers["X-Error-Code"],
        request.method,
        request.url.path[:200],  # %r: a path may hold decoded control characters
        type(exc).__name__,
    )
    return response


def bad_request(message: str, key: str = "ErrBadRequest") -> ApiError:
    return ApiError(400, key, message)


def not_found(what: str) -> ApiError:
    return ApiError(404, "ErrNotFound", f"{what} not found, or you are not a member of its Space.")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "ErrForbidden", message)
