"""The claim request itself: `PUT {URL}/api/v1/spaces/nodes/{ID}` and its answer."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

from tether.claim.exit_codes import ERROR_KEYS, HINTS, STATUS_EXITS, Exit
from tether.net.diagnose import describe_connect_error, peer_certificate_issuer
from tether.net.proxy import ProxyChoice


@dataclass
class ClaimRequest:
    url: str  # Cloud base URL, https://host[:port]
    node_id: str
    hostname: str
    token: str
    rooms: list[str]
    public_pem: str
    machine_guid: str

    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/api/v1/spaces/nodes/{self.node_id}"

    def body(self) -> dict[str, object]:
        return {
            "node": {"id": self.node_id, "hostname": self.hostname},
            "token": self.token,
            "rooms": self.rooms,
            "publicKey": self.public_pem,
            "mGUID": self.machine_guid,
        }


@dataclass
class ClaimAnswer:
    exit_code: Exit
    message: str
    http_status: int | None = None
    error_key: str | None = None


def send_claim(
    req: ClaimRequest,
    ssl_ctx: ssl.SSLContext,
    proxy: ProxyChoice,
    timeout: float = 30.0,
    proxy_ssl: ssl.SSLContext | None = None,
) -> ClaimAnswer:
    try:
        with httpx.Client(
            verify=ssl_ctx, proxy=proxy.for_httpx(proxy_ssl), trust_env=False, timeout=timeout
        ) as client:
            resp = client.put(req.endpoint(), json=req.body())
    except (httpx.HTTPError, UnicodeError) as exc:
        issuer = None
        if isinstance(exc, httpx.ConnectError | httpx.ProxyError) and isinstance(
            _cert_error(exc), ssl.SSLCertVerificationError
        ):
            issuer = peer_certificate_issuer(req.url, proxy, proxy_ssl=proxy_ssl)
        return ClaimAnswer(
            Exit.CANNOT_CONNECT,
            "cannot connect to the Cloud: " + describe_connect_error(exc, req.url, proxy, issuer),
        )
    return interpret(resp)


def _cert_error(exc: BaseException) -> BaseException | None:
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def interpret(resp: httpx.Response) -> ClaimAnswer:
    if resp.status_code == 204:
        return ClaimAnswer(Exit.OK, "claimed", resp.status_code)
    key: str | None = None
    text = ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        key = str(body.get("errorMsgKey") or "") or None
        text = str(body.get("errorMessage") or "")
    code = ERROR_KEYS.get(key or "") or STATUS_EXITS.get(resp.status_code, Exit.UNKNOWN_HTTP)
    parts = [f"the Cloud refused the claim: HTTP {resp.status_code}"]
    if key:
        parts.append(f" {key}")
    # The Cloud's own sentence says what to do; our hint only when it sent none.
    detail = text or HINTS.get(key or "", "")
    if detail:
        parts.append(f": {detail}")
    if code == Exit.UNKNOWN_HTTP and not text:
        parts.append(
            f". Unexpected answer from {resp.request.url}: is -url= the base URL of a Tether Cloud?"
        )
    return ClaimAnswer(code, "".join(parts), resp.status_code, key)
