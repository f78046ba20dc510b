"""OpenAPI description built from the app's routes and their docstrings.

Request bodies and query parameters come from `BODIES` and `QUERIES` (a
writing route not listed there gets "any JSON object", optional), so a fuzzer
such as schemathesis (tests/fuzz/) sends each endpoint what it reads. Paths
are written as OpenAPI templates: Starlette's `{name:path}` becomes `{name}`.
"""

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

_NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
_ROLE = {"type": "string", "enum": ["admin", "manager", "member"]}

# The JSON body each writing endpoint reads: (method, Starlette path) -> schema.
# A body that may be left out is marked {"optional": True, "schema": ...}.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/auth/login"): {
        "type": "object",
        "properties": {"email": {"type": "string"}, "password": {"type": "string"}},
        "required": ["email", "password"],
    },
    ("POST", "/api/v1/me/api-tokens"): {
        "optional": True,
        "schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "scope": {"type": "string", "enum": ["read", "full"]},
                "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650},
            },
        },
    },
    ("POST", "/api/v1/spaces"): _NAME,
    ("PATCH", "/api/v1/spaces/{space_id}"): _NAME,
    ("POST", "/api/v1/spaces/{space_id}/members"): {
        "type": "object",
        "properties": {
            "email": {"type": "string"},
            "role": _ROLE,
            "expires_in": {"type": "integer", "minimum": 1, "maximum": 30 * 86400},
        },
        "required": ["email"],
    },
    ("PATCH", "/api/v1/spaces/{space_id}/members/{user_id}"): {
        "type": "object",
        "properties": {"role": _ROLE},
        "required": ["role"],
    },
    ("POST", "/api/v1/invitations/accept"): {
        "type": "object",
        "properties": {"token": {"type": "string"}},
        "required": ["token"],
    },
    ("POST", "/api/v1/spaces/{space_id}/rooms"): _NAME,
    ("PATCH", "/api/v1/spaces/{space_id}/rooms/{room_id}"): _NAME,
    ("POST", "/api/v1/spaces/{space_id}/claim-token"): {
        "optional": True,
        "schema": {"type": "object", "properties": {"expires_in": {"type": "integer"}}},
    },
    ("POST", "/api/v1/spaces/{space_id}/claim-tokens"): {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "expires_in": {"type": "integer"},
            "max_uses": {"type": "integer"},
            "rooms": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "ephemeral": {"type": "boolean"},
        },
        "required": ["name"],
    },
    ("PUT", "/api/v1/spaces/{space_id}/nodes/{node_id}/labels"): {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["labels"],
    },
    ("POST", "/api/v1/spaces/{space_id}/rooms/{room_id}/rules"): {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["include", "exclude"]},
            "key": {"type": "string"},
            "op": {"type": "string", "enum": ["equals", "starts_with", "ends_with", "contains"]},
            "value": {"type": "string"},
        },
        "required": ["key", "value"],
    },
    ("POST", "/api/v1/spaces/{space_id}/nodes/{node_id}/disconnect"): {
        "optional": True,
        "schema": {
            "type": "object",
            "properties": {"reconnect_after_seconds": {"type": "number"}},
        },
    },
    ("PUT", "/api/v1/spaces/nodes/{node_id}"): {
        "type": "object",
        "properties": {
            "node": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "hostname": {"type": "string"}},
                "required": ["hostname"],
            },
            "token": {"type": "string"},
            "rooms": {"type": "array", "items": {"type": "string"}},
            "publicKey": {"type": "string"},
            "mGUID": {"type": "string"},
        },
        "required": ["node", "token", "publicKey"],
    },
    ("POST", "/api/v1/auth/node/{claim_id}/password"): {
        "type": "object",
        "properties": {"response": {"type": "string"}, "challengeId": {"type": "string"}},
        "required": ["response"],
    },
}

# Query parameters an endpoint reads: (method, Starlette path) -> names (strings).
QUERIES: dict[tuple[str, str], list[str]] = {
    # Search, filters, sort and pages of the Nodes list (tether.cloud.node_list).
    ("GET", "/api/v1/spaces/{space_id}/nodes"): [
        "q",
        "state",
        "os",
        "agent_version",
        "label",
        "room",
        "severity",
        "sort",
        "order",
        "page",
        "per_page",
    ],
    # One chart across every live node of a room (tether.cloud.composite).
    ("GET", "/api/v2/rooms/{room_id}/composite"): ["chart", "after", "points", "deadline_ms"],
    # The relay passes its query on to the agent's API.
    ("GET", "/api/v2/nodes/{node_id}/{name:path}"): [
        "chart",
        "after",
        "before",
        "points",
        "format",
        "options",
    ],
}

_WRITING = {"POST", "PUT", "PATCH"}
_NO_BODY = {("POST", "/api/v1/auth/logout")}


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
        template = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            key = (method, route.path)
            operation: dict[str, Any] = {
                "summary": summary,
                "description": doc,
                "parameters": [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in params
                ]
                + [
                    {"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
                    for q in QUERIES.get(key, [])
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
            if method in _WRITING and key not in _NO_BODY:
                body = BODIES.get(key, {"optional": True, "schema": {"type": "object"}})
                optional = bool(body.get("optional"))
                operation["requestBody"] = {
                    "required": not optional,
                    "content": {
                        "application/json": {"schema": body["schema"] if optional else body}
                    },
                }
            paths.setdefault(template, {})[method.lower()] = operation
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
