"""Helpers for Cloud tests: RSA keys and claim requests like tether-claim sends."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fixtures.cloud import Cloud
from tests.fixtures.invitations import join


def _pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@functools.cache
def rsa_pem(bits: int = 2048, n: int = 0) -> str:
    """A public key PEM; `n` picks a different key of the same size."""
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_pem() -> str:
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def claim_body(
    node_id: str,
    token: str,
    rooms: list[str] | None = None,
    hostname: str = "web-1",
    key: str | None = None,
) -> dict[str, Any]:
    return {
        "node": {"id": node_id, "hostname": hostname},
        "token": token,
        "rooms": rooms or [],
        "publicKey": rsa_pem() if key is None else key,
        "mGUID": str(uuid.uuid4()),
    }


def claim(
    cloud: Cloud, node_id: str | None = None, token: str | None = None, **kw: Any
) -> httpx.Response:
    node_id = node_id or str(uuid.uuid4())
    body = claim_body(node_id, cloud.claim_token if token is None else token, **kw)
    return cloud.api("PUT", f"/api/v1/spaces/nodes/{node_id}", token="", json=body)


def nodes(cloud: Cloud, token: str | None = None) -> list[dict[str, Any]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes", token=token)
    assert r.status_code == 200, r.text
    return list(r.json())


def new_member(cloud: Cloud, role: str = "member") -> str:
    """Create a user, invite them to the Cloud's Space with `role` and accept
    as them (`role=""`: no Space); return their API token."""
    import json

    email = f"u{uuid.uuid4().hex[:8]}@example.org"
    r = cloud.cli("admin", "create-user", "--email", email, "--api-token", "--json")
    assert r.returncode == 0, r.stderr
    token = str(json.loads(r.stdout)["api_token"])
    if role:
        join(cloud, email, token, role)
    return token
