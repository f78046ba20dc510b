"""`tether-cli doctor` and `tether-claim -doctor`: check every hop to the Cloud.

The settings are the ones the claim (`-doctor` with the claim's flags) or the
link (`tether-cli doctor`: cloud.d/cloud.conf, else claim.conf, else
`[cloud] proxy`) would use. The network hops are `tether.net.doctor`'s; a
claimed node adds its authentication (challenge and password, with
`cloud.d/private.pem`) and the WebSocket upgrade, which is closed before
Hello, so the running agent's link is not replaced.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import msgspec
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tether.net.doctor import HopFailed, Report, Target, check_network
from tether.net.pinning import PinError, fetch_ca, matching_cert
from tether.net.proxy import ProxyChoice, ProxyConfigError, claim_proxy, resolve_proxy
from tether.net.tls import (
    TLSConfigError,
    client_ssl_context,
    parse_fingerprint,
    pem_fingerprints,
    proxy_ssl_context,
)
from tether.node import cloud_d
from tether.node.claim_conf import ClaimConfError, load_claim_conf
from tether.node.config import AgentConfig
from tether.paths import AgentPaths
from tether.protocol import auth


class DoctorSetupError(Exception):
    """The settings themselves cannot be used (no URL, a bad proxy setting)."""


@dataclass
class Settings:
    url: str
    proxy_setting: str | None  # None: tether.conf's [cloud] proxy
    proxy_source: str
    noproxy: bool = False
    insecure: bool = False
    pin: str | None = None  # 64 hex digits
    proxy_ca: str | None = None
    claimed_id: str | None = None


def node_settings(paths: AgentPaths, url: str | None = None) -> Settings:
    """What the link uses (claimed) or claim.conf would claim with (unclaimed)."""
    try:
        state = cloud_d.load_claim_state(paths)
        conf = load_claim_conf(paths.claim_conf_file)
    except ClaimConfError as exc:
        raise DoctorSetupError(str(exc)) from exc
    if state.claimed_id and state.cloud_base_url and not url:
        pin = state.ca_fingerprint
        return Settings(
            url=state.cloud_base_url,
            proxy_setting=state.proxy,
            proxy_source=f"{state.proxy_source or 'the claim'} at claim time, kept in "
            f"{paths.cloud_conf_file}",
            insecure=state.insecure,
            pin=parse_fingerprint(pin) if pin else None,
            claimed_id=state.claimed_id,
        )
    chosen = url or (conf.url if conf else None) or state.cloud_base_url
    if not chosen:
        raise DoctorSetupError(
            "no Cloud URL: this node is not claimed and has no claim.conf; give --url=https://CLOUD"
        )
    return Settings(
        url=chosen.rstrip("/"),
        proxy_setting=conf.proxy if conf else None,
        proxy_source=f"proxy in {paths.claim_conf_file}" if conf and conf.proxy else "",
        insecure=bool(conf and conf.insecure),
        claimed_id=None,
    )


def _choose_proxy(
    s: Settings, config: AgentConfig, paths: AgentPaths, env: Mapping[str, str]
) -> ProxyChoice:
    try:
        if s.proxy_setting is not None and not s.noproxy:
            return resolve_proxy(s.proxy_setting, s.url, env, source=s.proxy_source or "-proxy")
        return claim_proxy(
            noproxy=s.noproxy,
            cli_proxy=None,
            config_proxy=config.get("cloud", "proxy"),
            config_file=paths.config_file,
            target_url=s.url,
            env=env,
        )
    except ProxyConfigError as exc:
        raise DoctorSetupError(str(exc)) from exc


def _cloud_context(
    s: Settings, paths: AgentPaths, proxy: ProxyChoice, proxy_ssl: ssl.SSLContext
) -> tuple[ssl.SSLContext | None, str]:
    """The TLS context to verify the Cloud with, or (None, why it cannot be made)."""
    try:
        if s.pin is None:
            return client_ssl_context(paths, insecure=s.insecure), ""
        chain = paths.cloud_fullchain_file
        if chain.exists() and s.pin in pem_fingerprints(chain.read_bytes()):
            return client_ssl_context(paths, pinned=s.pin), ""
        # Not saved yet (before the claim): what the Cloud serves must match.
        cert = matching_cert(fetch_ca(s.url, proxy, proxy_ssl), s.pin, s.url)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=cert.decode())
        return ctx, ""
    except (TLSConfigError, PinError) as exc:
        return None, f"pinned CA: {exc}"


def run_doctor(
    s: Settings,
    paths: AgentPaths,
    config: AgentConfig,
    env: Mapping[str, str] = os.environ,
    timeout: float = 10.0,
) -> Report:
    proxy = _choose_proxy(s, config, paths, env)
    try:
        if s.proxy_ca:
            proxy_ssl = ssl.create_default_context(cafile=s.proxy_ca)
        else:
            proxy_ssl = proxy_ssl_context(paths)
    except (TLSConfigError, OSError, ssl.SSLError) as exc:
        raise DoctorSetupError(f"the proxy's CA cannot be used: {exc}") from exc
    ctx, why = _cloud_context(s, paths, proxy, proxy_ssl)
    target = Target(s.url, proxy, ctx, proxy_ssl, why, timeout)
    report = Report()
    verified = check_network(report, target)
    if s.claimed_id is None:
        report.skip("auth", "not claimed: the node's authentication is checked once claimed")
        report.skip("websocket", "not claimed")
        return report
    link: list[auth.PasswordReply] = []
    report.run("auth", lambda: _auth_hop(target, verified, s.claimed_id or "", paths, link))
    report.run("websocket", lambda: _websocket_hop(target, verified, link))
    return report


def _auth_hop(
    t: Target,
    ctx: ssl.SSLContext | None,
    claimed_id: str,
    paths: AgentPaths,
    out: list[auth.PasswordReply],
) -> str:
    assert ctx is not None
    try:
        private_pem = paths.private_key_file.read_bytes()
    except OSError as exc:
        raise HopFailed(
            f"cannot read the node's key {paths.private_key_file}: {exc.strerror or exc}",
            "run the doctor as root or as the agent's user",
        ) from None
    try:
        with httpx.Client(
            verify=ctx, proxy=t.proxy.for_httpx(t.proxy_ssl), trust_env=False, timeout=t.timeout
        ) as c:
            r = c.get(t.url + auth.challenge_path(claimed_id))
            _raise_for_auth(r)
            ch = msgspec.json.decode(r.content, type=auth.ChallengeReply)
            answer = auth.decrypt_challenge(private_pem, auth.b64decode(ch.challenge))
            body = msgspec.json.encode(
                auth.PasswordRequest(
                    response=auth.b64encode(answer), challenge_id=ch.challenge_id or None
                )
            )
            r = c.post(
                t.url + auth.password_path(claimed_id),
                content=body,
                headers={"Content-Type": "application/json"},
            )
            _raise_for_auth(r)
            out.append(msgspec.json.decode(r.content, type=auth.PasswordReply))
    except auth.AuthError as exc:
        raise HopFailed(f"node {claimed_id}: {exc}", auth.REMOVED_FIX) from None
    except (httpx.HTTPError, msgspec.MsgspecError) as exc:
        raise HopFailed(f"authentication did not complete: {exc}", "run the doctor again") from None
    return f"node {claimed_id} authenticated with cloud.d/private.pem; got a link token"


def _raise_for_auth(r: httpx.Response) -> None:
    if r.status_code == 200:
        return
    key = None
    try:
        key = msgspec.json.decode(r.content, type=auth.ErrorReply).error_msg_key
    except msgspec.MsgspecError:
        pass
    kind = auth.classify_auth_error(r.status_code, key)
    raise HopFailed(
        f"the Cloud refused the node: {kind.key} (HTTP {r.status_code}): {kind.meaning}",
        kind.fix,
    )


def _websocket_hop(t: Target, ctx: ssl.SSLContext | None, link: list[auth.PasswordReply]) -> str:
    reply = link[0]
    try:
        ws = connect(
            reply.link_url,
            ssl=ctx if reply.link_url.startswith("wss://") else None,
            additional_headers={"Authorization": f"Bearer {reply.link_token}"},
            open_timeout=t.timeout,
            compression=None,
            user_agent_header="tether-doctor",
            **t.proxy.for_websockets(t.proxy_ssl),
        )
    except InvalidStatus as exc:
        raise HopFailed(
            f"the Cloud refused the WebSocket upgrade at {reply.link_url}: HTTP "
            f"{exc.response.status_code}",
            "a proxy in between may not pass WebSockets; check it, then run the doctor again",
        ) from None
    except (OSError, TimeoutError, Exception) as exc:
        raise HopFailed(
            f"WebSocket upgrade at {reply.link_url} failed: {exc}",
            "a proxy in between may not pass WebSockets; check it",
        ) from None
    # Closed before Hello: the Cloud counts no connection, the agent's link stays.
    ws.close()
    return f"upgraded {reply.link_url} (HTTP 101); closed again before Hello"
