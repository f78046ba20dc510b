"""Claiming a node, step by step; shared by `tether-claim`, `tether-agent -W claim`
and claim-on-start. Each step that can fail returns the exit code of the
table in docs/claiming.md with a message naming what was wrong and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import socket
import ssl
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tether.atomic import write_atomic
from tether.claim import keys
from tether.claim.exit_codes import Exit
from tether.claim.request import ClaimRequest, send_claim
from tether.control import AgentNotRunning, send_command
from tether.net.pinning import PinError, ensure_pinned_ca
from tether.net.proxy import ProxyChoice, ProxyConfigError, claim_proxy
from tether.net.tls import (
    INSECURE_WARNING,
    TLSConfigError,
    client_ssl_context,
    parse_fingerprint,
    proxy_ssl_context,
)
from tether.node import cloud_d
from tether.node.config import AgentConfig, ConfigError, load_config
from tether.node.identity import MachineGuidError, load_or_create_machine_guid
from tether.paths import AgentPaths

SUCCESS_LINE = "Agent was successfully claimed."


@dataclass
class ClaimOptions:
    token: str | None = None
    rooms: list[str] | None = None
    url: str | None = None
    node_id: str | None = None
    hostname: str | None = None
    proxy: str | None = None
    proxy_source: str = "-proxy"  # where `proxy` came from (claim.conf, an environment variable)
    proxy_ca: str | None = None  # the https proxy's CA (PEM), kept as cloud.d/proxy_ca.pem
    ca_fingerprint: str | None = None  # sha256:HEX of the Cloud's CA
    noproxy: bool = False
    insecure: bool = False
    noreload: bool = False
    verbose: bool = False
    user: str | None = None
    timeout: float = 30.0


@dataclass
class ClaimResult:
    exit_code: Exit
    message: str
    claimed_id: str | None = None
    url: str | None = None
    proxy: str | None = None  # display form, password masked
    http_status: int | None = None
    error_key: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def claimed(self) -> bool:
        return self.exit_code in (Exit.OK, Exit.AGENT_NOT_TOLD)

    def as_json(self) -> dict[str, object]:
        return {
            "exit_code": int(self.exit_code),
            "claimed": self.claimed,
            "message": self.message,
            "claimed_id": self.claimed_id,
            "url": self.url,
            "proxy": self.proxy,
            "http_status": self.http_status,
            "error_key": self.error_key,
            "warnings": self.warnings,
        }


class _Stop(Exception):
    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise _Stop(
            Exit.BAD_ARGUMENT,
            f"-url={url!r} is not an https URL: give the Cloud's base URL, e.g. "
            "-url=https://cloud.example.com",
        )
    return url.strip().rstrip("/")


def _agent_user(opts: ClaimOptions, config: AgentConfig) -> pwd.struct_passwd | None:
    """The agent's user when one is set; stops with exit 6 when we are the wrong user."""
    name = (opts.user or config.get("global", "run as user")).strip()
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise _Stop(
            Exit.WRONG_USER,
            f"the agent's user {name!r} (-user= or [global] run as user) does not exist",
        ) from exc
    if os.geteuid() == 0:
        return entry
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me != name:
        raise _Stop(
            Exit.WRONG_USER,
            f"wrong user: this runs as {me!r} but the agent runs as {name!r}. Run it as "
            f"root (sudo) or as that user (sudo -u {name} ...).",
        )
    return None


def _machine_guid(paths: AgentPaths) -> str:
    try:
        return load_or_create_machine_guid(paths)
    except MachineGuidError as exc:
        raise _Stop(Exit.MACHINE_GUID, str(exc)) from exc


def _proxy(
    opts: ClaimOptions, config: AgentConfig, paths: AgentPaths, url: str, env: Mapping[str, str]
) -> ProxyChoice:
    try:
        proxy = claim_proxy(
            noproxy=opts.noproxy,
            cli_proxy=opts.proxy,
            config_proxy=config.get("cloud", "proxy"),
            config_file=paths.config_file,
            target_url=url,
            env=env,
        )
    except ProxyConfigError as exc:
        raise _Stop(Exit.BAD_ARGUMENT, str(exc)) from exc
    if proxy.source == "-proxy" and opts.proxy_source != "-proxy":
        proxy = dataclasses.replace(proxy, source=opts.proxy_source)
    return proxy


def _proxy_ssl(opts: ClaimOptions, paths: AgentPaths) -> ssl.SSLContext:
    """TLS to an https proxy: -proxy-ca=FILE for this claim, else cloud.d/proxy_ca.pem."""
    if opts.proxy_ca:
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            ctx.load_verify_locations(cafile=opts.proxy_ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _Stop(
                Exit.BAD_ARGUMENT,
                f"-proxy-ca={opts.proxy_ca!r} cannot be used ({exc}): give a PEM file "
                "holding the proxy's CA certificate",
            ) from exc
        return ctx
    try:
        return proxy_ssl_context(paths)
    except TLSConfigError as exc:
        raise _Stop(Exit.CLAIM_DIR, str(exc)) from exc


def _pin_ca(
    fingerprint: str,
    url: str,
    paths: AgentPaths,
    proxy: ProxyChoice,
    proxy_ssl: ssl.SSLContext,
    say: Callable[[str], None],
    result: ClaimResult,
) -> str:
    try:
        pin = parse_fingerprint(fingerprint)
    except ValueError as exc:
        raise _Stop(Exit.BAD_ARGUMENT, f"-ca-fingerprint: {exc}") from exc
    try:
        cloud_d.ensure_cloud_dir(paths)
        fetched = ensure_pinned_ca(url, pin, paths.cloud_fullchain_file, proxy, proxy_ssl)
    except cloud_d.ClaimDirError as exc:
        raise _Stop(Exit.CLAIM_DIR, str(exc)) from exc
    except PinError as exc:
        raise _Stop(Exit.CANNOT_CONNECT, str(exc)) from exc
    if fetched:
        say(f"Saved the Cloud's CA (sha256:{pin}) to {paths.cloud_fullchain_file}")
        result.warnings.append(
            f"Trusting the Cloud's CA from {url}/ca.pem: its SHA-256 matches "
            f"-ca-fingerprint; saved to {paths.cloud_fullchain_file}."
        )
    return pin


def _kept(opts: ClaimOptions, proxy: ProxyChoice, pin: str | None) -> cloud_d.KeptSettings:
    """What the link must use too. A proxy from tether.conf stays there (the
    link reads it live); one given to the claim is recorded, resolved."""
    given = opts.noproxy or bool(opts.proxy and opts.proxy.strip())
    return cloud_d.KeptSettings(
        proxy=(proxy.url or "none") if given else None,
        proxy_source=proxy.source if given else None,
        insecure=opts.insecure,
        secret=given and proxy.password is not None,
        ca_fingerprint=pin,
    )


def claim(
    opts: ClaimOptions,
    paths: AgentPaths,
    config: AgentConfig | None = None,
    env: Mapping[str, str] = os.environ,
    say: Callable[[str], None] = lambda _msg: None,
) -> ClaimResult:
    """Claim this node. `say` gets progress lines when verbose (never the token)."""
    result = ClaimResult(Exit.OK, "")
    try:
        return _claim(opts, paths, config, env, say, result)
    except _Stop as stop:
        result.exit_code = stop.code
        result.message = stop.message
        return result


def _claim(
    opts: ClaimOptions,
    paths: AgentPaths,
    config: AgentConfig | None,
    env: Mapping[str, str],
    say: Callable[[str], None],
    result: ClaimResult,
) -> ClaimResult:
    if config is None:
        try:
            config = load_config(paths.config_file)
        except ConfigError as exc:
            raise _Stop(Exit.BAD_ARGUMENT, str(exc)) from exc
        except OSError as exc:
            raise _Stop(
                Exit.WRONG_USER,
                f"cannot read {paths.config_file} ({exc.strerror}): run as root or as the "
                "agent's user",
            ) from exc
    try:
        conf = cloud_d.read_cloud_conf(paths)
        stored_token = cloud_d.read_token(paths)
        stored_rooms = cloud_d.read_rooms(paths)
        previous_id = cloud_d.read_claimed_id(paths)
    except cloud_d.ClaimDirError as exc:
        raise _Stop(Exit.CLAIM_DIR, str(exc)) from exc
    if not cloud_d.cloud_enabled(conf):
        raise _Stop(
            Exit.CLOUD_DISABLED,
            f"the Cloud is disabled on this node ({paths.cloud_conf_file}: enabled = "
            f"{conf.get('enabled')}). Set enabled = yes there to claim.",
        )
    raw_url = opts.url or conf.get("cloud base url")
    if not raw_url:
        raise _Stop(
            Exit.BAD_ARGUMENT,
            "no Cloud URL: give -url=https://YOUR-CLOUD (there is no public Tether Cloud)",
        )
    url = _check_url(raw_url)
    result.url = url
    token = opts.token or stored_token
    if not token:
        raise _Stop(
            Exit.BAD_ARGUMENT,
            f"no claiming token: give -token=TOKEN (or put it in {paths.token_file}); a "
            "Space admin finds it on the Cloud's Connect Nodes page",
        )
    # cloud.d/rooms belong to the pending claim's token (cloud.d/token) only:
    # a claim with another token (another Space) never carries them.
    uses_stored_token = opts.token is None or opts.token == stored_token
    rooms = opts.rooms if opts.rooms is not None else (stored_rooms if uses_stored_token else [])
    owner = _agent_user(opts, config)
    proxy = _proxy(opts, config, paths, url, env)
    result.proxy = proxy.display()
    if opts.insecure:
        result.warnings.append(INSECURE_WARNING)
    proxy_ssl = _proxy_ssl(opts, paths)
    pin: str | None = None
    if opts.ca_fingerprint:
        pin = _pin_ca(opts.ca_fingerprint, url, paths, proxy, proxy_ssl, say, result)
    try:
        ssl_ctx = client_ssl_context(paths, insecure=opts.insecure, pinned=pin)
    except TLSConfigError as exc:
        raise _Stop(Exit.CLAIM_DIR, str(exc)) from exc

    guid = _machine_guid(paths)
    node_id = (opts.node_id or guid).strip()
    with contextlib.suppress(ValueError):
        # One spelling on disk and in the Cloud; a non-UUID goes as given and
        # the Cloud answers ErrInvalidNodeID (exit 8).
        node_id = str(uuid.UUID(node_id))
    hostname = opts.hostname
    if hostname is None:
        hostname = config.get("global", "hostname") or socket.gethostname()
    try:
        cloud_d.ensure_cloud_dir(paths)
        pair = keys.load(paths.private_key_file)
    except (cloud_d.ClaimDirError, keys.KeyFileError) as exc:
        raise _Stop(Exit.CLAIM_DIR, str(exc)) from exc
    # A new identity for an already claimed node gets a new key, kept in memory
    # until the Cloud accepts it, so a failed attempt leaves the old identity whole.
    new_identity = previous_id is not None and previous_id != node_id
    save_after = False
    if pair is None or new_identity:
        pair = keys.generate()
        save_after = previous_id is not None
        if not save_after:
            try:
                keys.save(pair, paths.private_key_file, paths.public_key_file)
            except OSError as exc:
                raise _Stop(Exit.CLAIM_DIR, f"cannot write the node key: {exc}") from exc
    say(f"Claiming node {node_id} (hostname {hostname!r}) into {url}")
    say(f"War Rooms: {', '.join(rooms) if rooms else '(none)'}")
    say(f"Proxy: {proxy.display()}")
    say("Key: " + ("new RSA-2048 key" if pair.created else f"reusing {paths.private_key_file}"))

    answer = send_claim(
        ClaimRequest(
            url=url,
            node_id=node_id,
            hostname=hostname,
            token=token,
            rooms=rooms,
            public_pem=pair.public_pem.decode(),
            machine_guid=guid,
        ),
        ssl_ctx,
        proxy,
        timeout=opts.timeout,
        proxy_ssl=proxy_ssl,
    )
    result.http_status = answer.http_status
    result.error_key = answer.error_key
    if answer.exit_code != Exit.OK:
        raise _Stop(answer.exit_code, answer.message)

    try:
        if save_after:
            keys.save(pair, paths.private_key_file, paths.public_key_file)
        if opts.proxy_ca:
            write_atomic(paths.proxy_ca_file, Path(opts.proxy_ca).read_bytes(), mode=0o644)
        cloud_d.write_claimed(paths, node_id, url, _kept(opts, proxy, pin))
        if owner is not None:
            cloud_d.chown_cloud_dir(paths, owner.pw_uid, owner.pw_gid)
    except OSError as exc:
        raise _Stop(
            Exit.CLAIM_DIR,
            f"the Cloud accepted the claim but {paths.cloud_dir} could not be written: {exc}",
        ) from exc
    result.claimed_id = node_id
    result.message = SUCCESS_LINE

    if opts.noreload:
        return result
    try:
        reply = send_command(paths.control_socket, "reload-claiming-state")
    except (AgentNotRunning, OSError, ValueError) as exc:
        result.exit_code = Exit.AGENT_NOT_TOLD
        result.warnings.append(
            f"The node is claimed, but the running agent could not be told ({exc}). "
            "Start tether-agent, or run `tether-cli reload-claiming-state` once it runs."
        )
        return result
    if not reply.ok:
        result.exit_code = Exit.AGENT_NOT_TOLD
        result.warnings.append(
            f"The node is claimed, but the agent refused to reload its claiming state: "
            f"{reply.message}. Restart tether-agent."
        )
    return result
