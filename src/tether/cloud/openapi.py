"""OpenAPI description built from the app's routes and their docstrings."""

from __future__ import annotations

import inspect
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "errorMsgKey": {"type": "string"},
        "errorMessage": {"type": "string"},
        "errorCode": {"type": "string"},
    },
}


ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _public(path: str) -> bool:
    return path.startswith(
        ("/api/v1/auth/", "/api/v1/spaces/nodes/", "/api/health", "/api/openapi")
    )


def build(routes: list[BaseRoute], title: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        doc = inspect.cleandoc(route.endpoint.__doc__ or "")
        summary = doc.partition("\n")[0]
        params = re.findall(r"{(\w+)(?::\w+)?}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = {
                "summary": summary,
                "description": doc,
                "parameters": [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in params
                ],
                "security": [] if _public(route.path) else [{"bearer": []}, {"cookie": []}],
                "responses": {
                    "2XX": {"description": "success"},
                    "default": {
                        "description": "error",
                        "content": {"application/json": {"schema": ERROR_REF}},
                    },
                },
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API token tat_..."},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "tether_session"},
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    """This document."""
    app = request.app
    return JSONResponse(build(app.routes, "Tether Cloud API", app.state.version))
