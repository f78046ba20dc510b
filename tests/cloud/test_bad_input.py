"""Bad input gets a clear 4xx, never a 500 or a dropped connection (issue 10, item 6).

Against a real Cloud over one raw keep-alive TLS connection: 20,000 nested
arrays (40 KB, under the 64 KiB body limit) used to raise RecursionError in
every JSON endpoint, and a 500 dropped the connection without saying so.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fixtures.api import claim
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import free_port, poll
from tests.fixtures.rawhttp import RawConnection
from tether.cloud.app import create_app
from tether.cloud.body import MAX_DEPTH, BadJson, int_field, nesting_depth, parse_json
from tether.cloud.errors import ApiError
from tether.cloud.settings import CloudSettings
from tether.protocol import auth

DEEP = b"[" * 20_000 + b"]" * 20_000
# The node auth answer is capped at 8 KiB: 4,000 levels still exceed Python's recursion limit.
DEEP_8K = b"[" * 4_000 + b"]" * 4_000


def _assert_depth_refused(r: object, what: str) -> None:
    status = getattr(r, "status", None)
    body = r.json()  # type: ignore[attr-defined]
    assert status == 400, f"{what}: {status} {body}"
    assert body["errorMsgKey"] == "ErrBadRequest", what
    assert f"more than {MAX_DEPTH} levels deep" in body["errorMessage"], (what, body)


def test_deep_json_is_400_everywhere_and_keeps_the_connection(cloud: Cloud) -> None:
    node_id = str(uuid.uuid4())
    assert claim(cloud, node_id).status_code == 204
    bearer = {"Authorization": f"Bearer {cloud.api_token}"}
    json_type = {"Content-Type": "application/json"}
    with RawConnection(cloud.url, cloud.ca_file) as c:
        # Unauthenticated: the claim, the sign-in, the node's auth answer.
        r = c.request("PUT", f"/api/v1/spaces/nodes/{uuid.uuid4()}", DEEP, json_type)
        _assert_depth_refused(r, "claim")
        _assert_depth_refused(c.request("POST", "/api/v1/auth/login", DEEP, json_type), "login")
        r = c.request("POST", auth.password_path(node_id), DEEP_8K, json_type)
        _assert_depth_refused(r, "node auth answer")
        # Authenticated: the REST API and the link's disconnect request.
        r = c.request("POST", "/api/v1/spaces", DEEP, {**json_type, **bearer})
        _assert_depth_refused(r, "create space")
        path = f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}/disconnect"
        _assert_depth_refused(c.request("POST", path, DEEP, {**json_type, **bearer}), "disconnect")
        # The same connection still serves the next request.
        r = c.request("GET", "/api/v1/me", headers=bearer)
        assert r.status == 200, r.body
        assert r.json()["email"] == cloud.admin_email


def test_expires_in_is_bounded(cloud: Cloud) -> None:
    path = f"/api/v1/spaces/{cloud.space_id}/claim-token"
    for bad in (10**12, 0, -5, 1.5, True, "60"):
        r = cloud.api("POST", path, json={"expires_in": bad})
        assert r.status_code == 400, (bad, r.text)
        body = r.json()
        assert body["errorMsgKey"] == "ErrBadRequest"
        assert body["errorMessage"].startswith(
            '"expires_in" must be a whole number from 1 to 315360000 seconds'
        ), body
    r = cloud.api("POST", path, json={"expires_in": 315_360_000})
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] is not None


def test_unexpected_error_is_json_with_connection_close(tmp_path: Path) -> None:
    """A bug (here: a route that raises) still answers a whole JSON 500 and
    says `Connection: close`, so a keep-alive client is not left with a
    connection dropped under its next request."""
    port = free_port()
    settings = CloudSettings(data_dir=tmp_path, host="127.0.0.1", port=port, insecure_http=True)
    app = create_app(settings)

    async def bug(_request: Request) -> Response:
        raise RuntimeError("a bug")

    app.router.routes.insert(0, Route("/api/test/bug", bug))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, 30, "the in-process Cloud to listen")
        url = f"http://127.0.0.1:{port}"
        with RawConnection(url) as c:
            assert c.request("GET", "/api/health").status == 200
            r = c.request("GET", "/api/test/bug")
            assert r.status == 500
            assert r.headers["content-type"] == "application/json"
            assert r.json()["errorMsgKey"] == "ErrInternalServerError"
            assert r.json()["errorCode"] == r.headers["x-error-code"]
            assert r.headers["connection"] == "close"
            assert c.closed_by_server()
        with RawConnection(url) as c:
            assert c.request("GET", "/api/health").status == 200
    finally:
        server.should_exit = True
        thread.join(15)


# -- in-process: the parser and the integer check ------------------------------------


def test_depth_limit_is_exact_and_ignores_strings() -> None:
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(BadJson, match="more than 32 levels"):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(BadJson, match="more than 32 levels"):
        parse_json(b'{"a":' * 40 + b"1" + b"}" * 40)
    # Brackets inside strings, escaped quotes and backslashes do not count.
    text = '["[[[[", "\\"[[[", "\\\\", {"k]": "{{{"}]'
    assert nesting_depth(text) == 2
    assert parse_json(("[" + text + "]").encode()) is not None
    assert nesting_depth('"' + '\\"' * 30_000) == 0  # an unterminated string: one pass
    with pytest.raises(BadJson, match="not UTF-8"):
        parse_json(b'["\xff"]')
    with pytest.raises(BadJson, match="not valid JSON"):
        parse_json(b"{")


def test_int_field_names_the_field_and_range() -> None:
    assert int_field({}, "n", 1, 10) is None
    assert int_field({"n": 10}, "n", 1, 10) == 10
    for bad in (0, 11, 10**12, 2.0, True, "5", [1]):
        with pytest.raises(ApiError) as info:
            int_field({"n": bad}, "n", 1, 10, " seconds")
        assert info.value.status == 400
        assert info.value.message.startswith('"n" must be a whole number from 1 to 10 seconds')
