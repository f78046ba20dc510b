"""`tether-cloud`: serve the Cloud, quickstart, and admin tasks.

Exit codes: 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tether.cloud.settings import DEFAULT_HOST, DEFAULT_PORT, CloudSettings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tether.cloud.models import Space, User

log = logging.getLogger("tether.cloud")


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit 1."""


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default="./tether-data",
        type=Path,
        help="where the database, CA and keys live (default ./tether-data)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL (default sqlite:///DATA_DIR/cloud.db), e.g. "
        "postgresql+psycopg://user@host:5432/tether",
    )


def _serve_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default '::', dual-stack IPv6+IPv4)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP (local development only: tokens travel in clear)",
    )
    p.add_argument(
        "--cert", type=Path, help="server certificate chain (PEM) instead of the private CA"
    )
    p.add_argument("--key", type=Path, help="private key for --cert (PEM)")
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="another DNS name or IP address nodes use to reach this Cloud, put in its "
        "certificate (repeatable; kept for later starts; `--san auto`: none)",
    )
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="https://NAME[:PORT] nodes and browsers use to reach this Cloud: in its "
        "certificate, every command it shows and the link URL (kept for later starts; "
        "`--public-url auto`: the address each page was asked through)",
    )
    p.add_argument(
        "--agent-bundle",
        "--bundle",
        type=Path,
        help="serve the agent from this bundle (made by `tether-cloud agent-bundle`, e.g. on "
        "a machine with an index) at /downloads/; default: built at first need into DATA_DIR",
    )
    p.add_argument(
        "--claim-failures-per-minute",
        type=int,
        default=10,
        help="failed claims allowed per source address per minute (default 10)",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a load balancer (address or network) allowed to send a PROXY protocol "
        "header (v1 or v2) naming the real client (repeatable; default: none, any "
        "PROXY header is refused)",
    )
    p.add_argument(
        "--require-proxy-header",
        action="store_true",
        help="refuse connections from a --trusted-proxy that send no PROXY header",
    )
    p.add_argument("--access-log", action="store_true", help="log every HTTP request")
    # Also after the subcommand (`serve -v`); SUPPRESS keeps a `-v` given before it.
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    p.add_argument(
        "--keepalive",
        type=float,
        default=20.0,
        help="link keepalive in seconds: the Cloud pings every interval and a node whose "
        "link dies is offline within 1.5 intervals (default 20)",
    )
    p.add_argument(
        "--nats-url",
        help="route relays and presence through NATS, e.g. nats://127.0.0.1:4222, so several "
        "Cloud processes sharing one PostgreSQL database serve every node",
    )
    p.add_argument(
        "--nats-subject-prefix",
        default="tether",
        help="NATS subject prefix (default tether; one per Cloud cluster sharing a NATS server)",
    )
    p.add_argument(
        "--relay-timeout",
        type=float,
        default=10.0,
        help="seconds a relayed query may take before the browser gets 504 (default 10)",
    )
    p.add_argument(
        "--relay-inflate-budget-mib",
        type=int,
        default=64,
        help="MiB of inflated (decompressed) relayed answers this process holds at once; "
        "past it relays get 503 ErrRelayBusy (default 64)",
    )
    p.add_argument(
        "--relay-max-answer-mib",
        type=int,
        default=16,
        help="MiB one relayed answer may inflate to, at most the budget; past it 502 "
        "ErrAnswerTooLarge (default 16)",
    )
    p.add_argument(
        "--challenge-ttl",
        type=float,
        default=50.0,
        help="seconds a node-auth challenge stays valid, at most 59 (default 50)",
    )
    p.add_argument(
        "--resume-token-ttl",
        type=float,
        default=600.0,
        help="seconds a resume token (reconnect without a challenge, docs/protocol.md) "
        "stays valid, 1 to 3600 (default 600)",
    )
    p.add_argument(
        "--auth-failures-per-minute",
        type=int,
        default=5,
        help="failed node authentications per node and address per minute before that "
        "address gets 429 for that node (an address across nodes gets 4x; default 5)",
    )
    p.add_argument(
        "--auth-requests-per-address-per-minute",
        type=int,
        default=6000,
        help="node-auth requests (challenges and answers) per address (IPv6 per /64) "
        "per minute before 429 (default 6000)",
    )
    p.add_argument(
        "--history-days",
        type=float,
        default=30.0,
        help="days of node events and claim audit kept (default 30)",
    )
    p.add_argument(
        "--node-events-per-node",
        type=int,
        default=1000,
        help="node events kept per node, newest first (default 1000)",
    )
    p.add_argument(
        "--claim-audit-rows",
        type=int,
        default=100_000,
        help="claim audit rows kept in all, newest first (default 100000)",
    )
    p.add_argument(
        "--audit-days",
        type=float,
        default=365.0,
        help="days of audit log kept (default 365)",
    )
    p.add_argument(
        "--audit-rows-per-space",
        type=int,
        default=100_000,
        help="audit log entries kept per Space, newest first (default 100000)",
    )
    p.add_argument(
        "--min-ephemeral-ttl",
        type=int,
        default=60,
        help="the shortest TTL (seconds) an ephemeral claiming token may set; lowered only "
        "by tests (default 60)",
    )
    p.add_argument(
        "--alert-grace-seconds",
        type=float,
        default=60.0,
        help="how long a node may be offline before its reachability alert, for Spaces, "
        "rooms and nodes that set none (default 60)",
    )
    p.add_argument(
        "--auth-cache-seconds",
        type=float,
        default=5.0,
        help="seconds a checked API token or session is trusted without the database; "
        "revocations and role changes clear it at once on every process (default 5)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to finish the TLS handshake, and then each request's "
        "head (request line and headers), before the Cloud closes the connection (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=20.0,
        help="seconds a client has to send a request's body once its head is in, "
        "else 408 and close (default 20)",
    )
    p.add_argument(
        "--max-unfinished-connections",
        type=int,
        default=1000,
        help="connections per process that may be in the middle of sending a request; "
        "past it the oldest of them is closed (default 1000)",
    )


def _settings(a: argparse.Namespace) -> CloudSettings:
    """The one settings builder, for every command: each serve flag checked
    (a command without it, such as `init` or `admin`, gets the flag's default),
    then `--public-url`/`--san` resolved where the command has them."""
    budget_mib = _flag(a, "relay_inflate_budget_mib", 64, 1, 65536)
    settings = CloudSettings(
        data_dir=a.data_dir,
        host=getattr(a, "host", DEFAULT_HOST),
        port=getattr(a, "port", DEFAULT_PORT),
        database_url=a.database_url,
        insecure_http=getattr(a, "insecure_http", False),
        cert_file=getattr(a, "cert", None),
        key_file=getattr(a, "key", None),
        agent_bundle=getattr(a, "agent_bundle", None),
        claim_failures_per_minute=getattr(a, "claim_failures_per_minute", 10),
        trusted_proxies=_trusted_proxies(getattr(a, "trusted_proxy", [])),
        require_proxy_header=getattr(a, "require_proxy_header", False),
        keepalive_seconds=_flag(a, "keepalive", 20.0, 0.2, 3600),
        nats_url=getattr(a, "nats_url", None),
        nats_subject_prefix=getattr(a, "nats_subject_prefix", "tether"),
        relay_timeout_seconds=_flag(a, "relay_timeout", 10.0, 0.1, 600),
        alert_default_grace_seconds=_flag(a, "alert_grace_seconds", 60.0, 0, 86400),
        auth_cache_seconds=_flag(a, "auth_cache_seconds", 5.0, 0.1, 3600),
        relay_inflate_budget_bytes=budget_mib * 2**20,
        relay_max_answer_bytes=_flag(a, "relay_max_answer_mib", 16, 1, budget_mib) * 2**20,
        challenge_ttl_seconds=_flag(a, "challenge_ttl", 50.0, 1, 59),
        resume_token_ttl_seconds=_flag(a, "resume_token_ttl", 600.0, 1, 3600),
        auth_failures_per_minute=int(getattr(a, "auth_failures_per_minute", 5)),
        auth_requests_per_address_per_minute=int(
            getattr(a, "auth_requests_per_address_per_minute", 6000)
        ),
        history_days=_flag(a, "history_days", 30.0, 0.001, 36500, "days"),
        node_events_per_node=_flag(a, "node_events_per_node", 1000, 1, _MANY),
        claim_audit_rows=_flag(a, "claim_audit_rows", 100_000, 1, _MANY),
        audit_days=_flag(a, "audit_days", 365.0, 0.001, 36500, "days"),
        audit_rows_per_space=_flag(a, "audit_rows_per_space", 100_000, 1, _MANY),
        min_ephemeral_ttl_seconds=_flag(a, "min_ephemeral_ttl", 60, 1, 86400),
        header_timeout_seconds=_flag(a, "header_timeout", 10.0, 0.5, 600),
        body_timeout_seconds=_flag(a, "body_timeout", 20.0, 0.5, 3600),
        max_unfinished_connections=_flag(a, "max_unfinished_connections", 1000, 1),
    )
    if hasattr(a, "public_url"):  # serve, quickstart and init: the flags, else what was kept
        from tether.cloud.address import AddressError, resolve

        try:
            chosen = resolve(
                settings.data_dir,
                a.public_url,
                a.san,
                serves_tls=not settings.insecure_http,
                persist=True,
            )
        except AddressError as exc:
            raise CliError(str(exc)) from None
        settings.public_url = chosen.url
        settings.extra_sans = list(chosen.sans)
    return settings


_MANY = 100_000_000  # the most rows a count flag may keep

_Number = TypeVar("_Number", int, float)


def _flag(
    a: argparse.Namespace,
    dest: str,
    default: _Number,
    low: float,
    high: float | None = None,
    unit: str = "seconds",
) -> _Number:
    """The value of `--DEST` (`default` where the command has no such flag),
    checked to lie between `low` and `high` (without `high`: at least `low`);
    out of range is a CliError naming the flag. A float flag's message names
    its `unit`."""
    value: _Number = getattr(a, dest, default)
    flag = "--" + dest.replace("_", "-")
    if high is None:
        if value < low:
            raise CliError(f"{flag} must be at least {low} (got {value})")
    elif not low <= value <= high:
        if isinstance(default, float):
            raise CliError(f"{flag} must be between {low:g} and {high:g} {unit} (got {value:g})")
        raise CliError(f"{flag} must be between {low} and {high} (got {value})")
    return type(default)(value)


def _trusted_proxies(values: list[str]) -> tuple[str, ...]:
    from tether.cloud.proxy_listener import parse_networks

    try:
        return tuple(str(n) for n in parse_networks(values))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _open_db(settings: CloudSettings) -> Any:
    from tether.cloud.db import Database, migrate
    from tether.cloud.shared_config import startup_lock

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    if settings.db_url in _MIGRATED:  # quickstart opens it several times: once is enough
        return db
    try:
        # PostgreSQL: processes started at once migrate one after the other.
        with startup_lock(db.engine):
            migrate(db.engine)
    except Exception as exc:
        raise CliError(f"cannot open the database {_safe_url(settings.db_url)}: {exc}") from exc
    _MIGRATED.add(settings.db_url)
    return db


_MIGRATED: set[str] = set()  # database URLs this process brought to the newest schema


def _scale_out(settings: CloudSettings) -> bool:
    return bool(settings.nats_url) and not settings.db_url.startswith("sqlite")


def _share_files(settings: CloudSettings) -> bool:
    """Scale-out: the CA, server certificate and secret.key from the database
    into the data dir, or made here and stored there by the first process
    (tether.cloud.shared_config). True when this call made them."""
    from tether.cloud.secrets import SecretBox
    from tether.cloud.shared_config import SharedConfigError, share, startup_lock

    def make_local() -> None:
        _tls(settings)
        SecretBox(settings.secret_key_file)

    db = _open_db(settings)
    try:
        with startup_lock(db.engine):
            return share(db.engine, settings.data_dir, make_local).made
    except SharedConfigError as exc:
        raise CliError(str(exc)) from None
    finally:
        db.dispose()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<invalid database URL>"


@dataclass(frozen=True)
class _Served:
    """What the Cloud serves TLS with (all None/empty over plain HTTP)."""

    cert: str | None = None
    key: str | None = None
    ca_file: Path | None = None  # the private CA, when the Cloud made its own certificate
    ca_sha256: str | None = None
    names: tuple[str, ...] | None = None  # the names its certificate is valid for


def _tls(settings: CloudSettings) -> _Served:
    from tether.cloud.address import PublicAddress, certificate_names
    from tether.cloud.tls import TlsSetupError, cert_sha256, ensure_tls, server_names

    if settings.insecure_http:
        return _Served()
    if settings.cert_file or settings.key_file:
        if not (settings.cert_file and settings.key_file):
            raise CliError("--cert and --key go together")
        for f in (settings.cert_file, settings.key_file):
            if not f.is_file():
                raise CliError(f"{f} does not exist")
        if settings.extra_sans:
            log.warning("--san names are for the generated certificate; --cert is used as it is")
        try:
            names = tuple(server_names(settings.cert_file))
        except ValueError as exc:
            raise CliError(f"{settings.cert_file} is not a PEM certificate: {exc}") from None
        return _Served(str(settings.cert_file), str(settings.key_file), names=names)
    wanted = certificate_names(
        PublicAddress(settings.public_url, tuple(settings.extra_sans)), settings.host
    )
    try:
        files = ensure_tls(settings.data_dir, wanted)
    except TlsSetupError as exc:
        raise CliError(str(exc)) from None
    ca_sha = cert_sha256(files.ca_file)
    if files.created:
        log.info("created a private CA in %s (SHA-256 %s)", settings.data_dir, ca_sha)
    if files.reissued:
        log.info(
            "issued the server certificate for %s: %s; the CA is unchanged",
            ", ".join(files.names),
            files.reissued,
        )
    if files.missing:
        log.warning(
            "the server certificate lacks %s, and the CA key to issue a new one is not in %s",
            ", ".join(files.missing),
            settings.data_dir,
        )
    return _Served(str(files.cert_file), str(files.key_file), files.ca_file, ca_sha, files.names)


def _address_warnings(settings: CloudSettings, served: _Served) -> list[str]:
    from tether.cloud.address import warnings

    return warnings(settings.url, served.names, on_page=False)


def _serve(settings: CloudSettings, a: argparse.Namespace, on_ready: Callable[..., None]) -> int:
    from tether.cloud.app import create_app
    from tether.cloud.server import run

    if settings.require_proxy_header and not settings.trusted_proxies:
        raise CliError("--require-proxy-header needs --trusted-proxy CIDR (the balancers)")
    if _scale_out(settings):
        _share_files(settings)
    served = _tls(settings)
    if settings.nats_url:
        _check_nats(settings.nats_url)
    db = _open_db(settings)
    app = create_app(settings, db)
    if settings.insecure_http:
        log.warning("serving plain HTTP: claiming tokens and passwords travel unencrypted")
    try:
        return run(
            settings,
            app,
            cert_file=served.cert,
            key_file=served.key,
            access_log=a.access_log,
            on_ready=lambda: on_ready(served),
        )
    except OSError as exc:
        raise CliError(
            f"cannot listen on {settings.host} port {settings.port}: {exc.strerror}"
        ) from exc


def _check_nats(url: str) -> None:
    """Fail at start, with the address tried, when NATS cannot be reached."""
    import asyncio

    from tether.cloud.routing import NatsRouter, RoutingError

    async def probe() -> None:
        router = NatsRouter(url, connect_timeout=3.0)
        await router.start()
        await router.close()

    try:
        asyncio.run(probe())
    except (RoutingError, ValueError) as exc:
        raise CliError(str(exc)) from None


def cmd_serve(a: argparse.Namespace) -> int:
    settings = _settings(a)

    def ready(served: _Served) -> None:
        log.info(
            "Tether Cloud listening at %s (database %s)", settings.url, _safe_url(settings.db_url)
        )
        if served.ca_file:
            log.info("CA file for agents (cloud.d/cloud_fullchain.pem): %s", served.ca_file)
            log.info("CA SHA-256 fingerprint: %s", served.ca_sha256)
        if served.names:
            log.info("certificate names: %s", ", ".join(served.names))
        for warning in _address_warnings(settings, served):
            log.warning("%s", warning)

    return _serve(settings, a, ready)


def cmd_init(a: argparse.Namespace) -> int:
    """Prepare a scale-out Cloud once: migrations, the CA, server certificate
    and secret.key in the database, the first admin. Safe to run again and
    from several machines at once (docs/operations.md, Scale-out)."""
    from tether.cloud.bootstrap import prepare
    from tether.cloud.secrets import SecretBox
    from tether.cloud.shared_config import startup_lock

    settings = _settings(a)
    if settings.db_url.startswith("sqlite"):
        raise CliError(
            "init prepares a scale-out Cloud: give --database-url postgresql+psycopg://... "
            "(a single process on SQLite needs no init: `tether-cloud quickstart`)"
        )
    _check_nats(a.nats_url)
    made = _share_files(settings)
    served = _tls(settings)
    db = _open_db(settings)
    try:
        with startup_lock(db.engine):  # one first admin, whoever runs init at once
            prep = prepare(db, SecretBox(settings.secret_key_file), settings.data_dir)
    finally:
        db.dispose()
    out = {
        "database_url": _safe_url(settings.db_url),
        "nats_url": a.nats_url,
        "files_made": made,
        "ca_sha256": served.ca_sha256,
        "admin_email": prep.admin_email,
        "admin_password": prep.admin_password,
        "space_id": prep.space_id,
        "api_token_file": str(prep.api_token_file),
    }
    if a.json:
        print(json.dumps(out))
        return 0
    state = "made and stored in the database" if made else "already in the database"
    print(f"CA, server certificate and secret.key: {state}")
    if served.ca_sha256:
        print(f"CA SHA-256: {served.ca_sha256}")
    if prep.admin_password:
        print(f"Sign in as {prep.admin_email}, password {prep.admin_password} (shown only once)")
    else:
        print(f"Admin {prep.admin_email} exists (password unchanged)")
    print(
        "Start every process with: tether-cloud serve --database-url URL "
        f"--nats-url {a.nats_url} [--public-url https://BALANCER:PORT]"
    )
    return 0


def _node_commands(url: str, token: str, room: str, served: _Served) -> list[str]:
    """The Linux commands Connect Nodes shows, for the quickstart to print."""
    from tether.cloud.web import commands

    ca = None
    if served.ca_file and served.ca_sha256:
        ca = commands.CloudCa(f"{url}/ca.pem", served.ca_sha256)
    steps = commands.build("linux", url, token, [room], ca).steps
    lines: list[str] = []
    for step in steps:
        lines.append(f"  {step.title}:")
        lines += [f"    {line}" for line in step.text.splitlines()]
    return lines


def cmd_quickstart(a: argparse.Namespace) -> int:
    from tether.cloud.bootstrap import prepare
    from tether.cloud.secrets import SecretBox
    from tether.cloud.shared_config import startup_lock

    settings = _settings(a)
    if _scale_out(settings):
        _share_files(settings)
    served = _tls(settings)
    db = _open_db(settings)
    try:
        with startup_lock(db.engine):  # processes started at once make one admin
            prep = prepare(db, SecretBox(settings.secret_key_file), settings.data_dir)
    finally:
        db.dispose()
    url = settings.url
    warnings = _address_warnings(settings, served)
    info = {
        "url": url,
        "public_url": settings.public_url,
        "tls_names": list(served.names) if served.names is not None else None,
        "warnings": warnings,
        "ca_file": str(served.ca_file) if served.ca_file else None,
        "ca_sha256": served.ca_sha256,
        "space_id": prep.space_id,
        "room_ids": prep.room_ids,
        "claim_token": prep.claim_token,
        "api_token": prep.api_token,
        "api_token_file": str(prep.api_token_file),
        "admin_email": prep.admin_email,
        "admin_password": prep.admin_password,
        "database_url": _safe_url(settings.db_url),
        "data_dir": str(settings.data_dir),
    }
    # With --json the secrets go only into the JSON on stdout (what scripts
    # read); stderr is a log and gets the same text without them.
    human = sys.stderr if a.json else sys.stdout
    secret_ok = not a.json

    def report(*_: Any) -> None:
        if a.json:
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
        lines = [f"Tether Cloud is {'ready' if not a.no_serve else 'prepared'}: {url}"]
        if prep.admin_password:
            shown = prep.admin_password if secret_ok else "in the JSON on stdout"
            lines.append(
                f"  Sign in as {prep.admin_email}, password {shown} (shown only this once)"
            )
        else:
            lines.append(
                f"  Sign in as {prep.admin_email} (password unchanged; reset it with "
                f"`tether-cloud admin set-password --data-dir {settings.data_dir} "
                f"--email {prep.admin_email}`)"
            )
        if prep.api_token_new and secret_ok:
            lines.append(f"  API token: {prep.api_token} (kept in {prep.api_token_file})")
        else:
            lines.append(f"  API token: in {prep.api_token_file}")
        if served.ca_file:
            lines.append(f"  CA file: {served.ca_file}")
            lines.append(f"  CA SHA-256: {served.ca_sha256}")
        if served.names:
            lines.append(f"  Certificate valid for: {', '.join(served.names)}")
        lines += [f"  WARNING: {w}" for w in warnings]
        token = prep.claim_token if secret_ok else "CLAIM_TOKEN"
        lines.append("Connect a Linux node (the commands Connect Nodes shows):")
        lines += _node_commands(url, token, prep.room_ids[1], served)
        if not secret_ok:
            lines.append("  (CLAIM_TOKEN: claim_token in the JSON on stdout)")
        print("\n".join(lines), file=human, flush=True)

    if a.no_serve:
        report()
        return 0
    return _serve(settings, a, report)


def _user(s: Session, email: str, hint: str = "") -> User:
    """The account with this email, else a CliError naming it (and `hint`)."""
    from tether.cloud.store import users as user_store

    user = user_store.by_email(s, email)
    if user is None:
        raise CliError(f"no user with email {email}{hint}")
    return user


def _space(s: Session, space_id: str) -> Space:
    """The Space with this id, else a CliError naming it."""
    from tether.cloud.models import Space

    space = s.get(Space, space_id)
    if space is None:
        raise CliError(f"no space with id {space_id}")
    return space


def _read_password(a: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated)."""
    from tether.cloud.secrets import new_password

    if a.password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
        if not pw:
            raise CliError("no password on stdin")
        return pw, False
    if a.password:
        return a.password, False
    return new_password(), True


def cmd_create_user(a: argparse.Namespace) -> int:
    from tether.cloud.store import users as user_store

    db = _open_db(_settings(a))
    password, generated = _read_password(a)
    try:
        with db.session(write_lock=True) as s:
            user = user_store.create_user(s, a.email, password, a.name or "")
            token = user_store.create_api_token(s, user, "cli")[0] if a.api_token else None
            out = {
                "user_id": user.id,
                "email": user.email,
                "password": password if generated else None,
                "api_token": token,
            }
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if a.json:
        print(json.dumps(out))
    else:
        print(f"created user {out['email']} ({out['user_id']})")
        if generated:
            print(f"password: {password} (shown only this once)")
        if token:
            print(f"API token: {token}")
    return 0


def cmd_set_password(a: argparse.Namespace) -> int:
    from tether.cloud.store import users as user_store

    db = _open_db(_settings(a))
    password, generated = _read_password(a)
    try:
        with db.session(write_lock=True) as s:
            user = _user(s, a.email)
            user_store.set_password(s, user, password)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(f"password of {a.email} changed; its browser sessions were signed out")
    if generated:
        print(f"new password: {password} (shown only this once)")
    return 0


def cmd_create_api_token(a: argparse.Namespace) -> int:
    from tether.cloud.store import users as user_store

    db = _open_db(_settings(a))
    with db.session(write_lock=True) as s:
        user = _user(s, a.email)
        token, row = user_store.create_api_token(s, user, a.name)
    print(json.dumps({"api_token": token, "prefix": row.prefix}) if a.json else token)
    return 0


def cmd_create_space(a: argparse.Namespace) -> int:
    from tether.cloud.secrets import SecretBox
    from tether.cloud.store import claim_tokens
    from tether.cloud.store import spaces as space_store

    settings = _settings(a)
    db = _open_db(settings)
    try:
        with db.session(write_lock=True) as s:
            owner = _user(s, a.owner, "; create it with `admin create-user`")
            space = space_store.create_space(s, a.name, owner)
            claim_tokens.rotate(s, SecretBox(settings.secret_key_file), space.id, owner.id)
            room_id = space_store.all_nodes_room(s, space.id).id
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    out = {"space_id": space.id, "name": space.name, "all_nodes_room_id": room_id}
    print(json.dumps(out) if a.json else f"created space {space.name} ({space.id})")
    return 0


def cmd_add_member(a: argparse.Namespace) -> int:
    from tether.cloud import audit
    from tether.cloud.store import spaces as space_store

    db = _open_db(_settings(a))
    try:
        with db.session(write_lock=True) as s:
            user = _user(s, a.email)
            _space(s, a.space)
            before = space_store.role_of(s, a.space, user.id)
            space_store.set_member(s, a.space, user, a.role)
            if before != a.role:
                action = "member.added" if before is None else "member.role_changed"
                audit.record(s, a.space, "cli", action, user.email, {"from": before, "to": a.role})
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(f"{a.email} is now {a.role} of space {a.space}")
    return 0


def cmd_token(a: argparse.Namespace) -> int:
    from tether.cloud.secrets import SecretBox, iso
    from tether.cloud.store import claim_tokens

    settings = _settings(a)
    db = _open_db(settings)
    box = SecretBox(settings.secret_key_file)
    with db.session(write_lock=True) as s:
        _space(s, a.space)
        if a.token_cmd == "rotate":  # noqa: S105 (a subcommand name, not a secret)
            expires = (
                dt.datetime.now(dt.UTC) + dt.timedelta(seconds=a.expires_in)
                if a.expires_in
                else None
            )
            token, row = claim_tokens.rotate(s, box, a.space, None, expires)
        else:
            token, row = claim_tokens.ensure(s, box, a.space, None)
        out = {
            "token": token,
            "prefix": row.prefix,
            "created_at": iso(row.created_at),
            "expires_at": iso(row.expires_at),
        }
    print(json.dumps(out) if a.json else token)
    return 0


def cmd_named_token(a: argparse.Namespace) -> int:
    """`token create|list|revoke`: a Space's named claiming tokens."""
    from tether.cloud import audit, stale_nodes
    from tether.cloud.models import utcnow
    from tether.cloud.store import claim_tokens
    from tether.cloud.store import labels as label_store

    db = _open_db(_settings(a))
    now = utcnow()
    action = str(a.token_cmd)
    try:
        with db.session(write_lock=action != "list") as s:
            _space(s, a.space)
            if action == "create":
                expires = now + dt.timedelta(seconds=a.expires_in) if a.expires_in else None
                if a.ttl is not None and not a.ephemeral:
                    raise CliError("--ttl needs --ephemeral")
                ttl = stale_nodes.check_ttl(a.ttl) if a.ephemeral and a.ttl is not None else None
                token, row = claim_tokens.create(
                    s,
                    a.space,
                    a.name,
                    None,
                    expires_at=expires,
                    max_uses=a.max_uses,
                    rooms=a.room,
                    labels=label_store.parse_pairs(a.label),
                    ephemeral=a.ephemeral,
                    ephemeral_ttl=ttl,
                )
                audit.record(s, a.space, "cli", "token.created", row.name, {"prefix": row.prefix})
                out: object = {**claim_tokens.token_json(row, now), "token": token}
                text = token
                note = f"claiming token {row.name!r} ({row.prefix}): shown only this once"
                print(note, file=sys.stderr)
            elif action == "list":
                rows = claim_tokens.of_space(s, a.space, include_revoked=a.all)
                out = [claim_tokens.token_json(r, now) for r in rows]
                text = "\n".join(
                    f"{r.prefix}  {claim_tokens.state(r, now):8}  uses {r.uses}/"
                    f"{r.max_uses if r.max_uses is not None else '-'}  {r.name}"
                    + ("  (default)" if r.is_default else "")
                    for r in rows
                )
            else:
                found = claim_tokens.find(s, a.space, a.token)
                if found is None:
                    raise CliError(
                        f"no claiming token {a.token!r} in space {a.space}; "
                        "see `tether-cloud token list`"
                    )
                if claim_tokens.revoke(s, found, "tether-cloud token revoke", now):
                    audit.record(
                        s, a.space, "cli", "token.revoked", found.name, {"prefix": found.prefix}
                    )
                out = claim_tokens.token_json(found, now)
                text = f"revoked claiming token {found.name!r} ({found.prefix})"
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(out) if a.json else text)
    return 0


def cmd_stale_policy(a: argparse.Namespace) -> int:
    """`space stale-policy`: show or set what happens to nodes long offline."""
    from tether.cloud import stale_nodes

    db = _open_db(_settings(a))
    changing = a.off or a.after_days is not None
    try:
        with db.session(write_lock=changing) as s:
            space = _space(s, a.space)
            if changing:
                days, action = stale_nodes.check_policy(None if a.off else a.after_days, a.action)
                stale_nodes.set_policy(s, space, days, action, "cli")
            out = stale_nodes.policy_json(space)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if a.json:
        print(json.dumps(out))
    elif out["after_days"] is None:
        print(f"space {a.space}: no stale policy (nodes stay however long they are offline)")
    else:
        print(f"space {a.space}: nodes not live for {out['after_days']} days: {out['action']}")
    return 0


def cmd_agent_bundle(a: argparse.Namespace) -> int:
    from tether.cloud.downloads import BundleError, cmd_agent_bundle

    try:
        print(cmd_agent_bundle(a.output, a.platform, a.python))
    except BundleError as exc:
        raise CliError(str(exc)) from exc
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether-cloud", description="The Tether Cloud.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("serve", help="run the Cloud")
    _serve_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "init",
        help="prepare a scale-out Cloud once: the CA, certificate, secret key and first "
        "admin, in the database",
        description="Run once (safe again, and on several machines at once) before starting "
        "several `serve` processes with the same --database-url and --nats-url: migrates the "
        "database and stores the CA, the server certificate and secret.key in it, and makes "
        "the first admin (its password printed once).",
    )
    _data_args(p)
    p.add_argument("--nats-url", required=True, help="the NATS server every process uses")
    p.add_argument("--public-url", metavar="URL", help="the balancer's https://NAME[:PORT]")
    p.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("quickstart", help="prepare an admin, a Space and tokens, then serve")
    _serve_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout when ready")
    p.add_argument("--no-serve", action="store_true", help="only prepare, do not serve")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "agent-bundle",
        help="make the agent wheel and a wheelhouse of its dependencies (needs an index)",
        description="Make an agent bundle for /downloads/ and kickstart.sh: the agent wheel "
        "and every dependency as wheels for this machine, plus binary wheels for each "
        "--platform. Serve it with `serve --agent-bundle DIR` (also on an air-gapped Cloud).",
    )
    p.add_argument("--output", type=Path, required=True, help="a new directory for the bundle")
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        help="also wheels for this pip platform tag, e.g. manylinux2014_aarch64 (repeatable)",
    )
    p.add_argument(
        "--python",
        action="append",
        default=[],
        help="Python version of those wheels, e.g. 3.11 (repeatable; default this one's)",
    )
    p.set_defaults(func=cmd_agent_bundle)

    admin = sub.add_parser("admin", help="accounts and Spaces").add_subparsers(
        dest="admin_cmd", required=True
    )

    def pw(p: argparse.ArgumentParser) -> None:
        p.add_argument("--password", help="the password (visible to `ps`; prefer --password-stdin)")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    p = admin.add_parser("create-user", help="create a user (a random password if none given)")
    _data_args(p)
    p.add_argument("--email", required=True)
    p.add_argument("--name")
    pw(p)
    p.add_argument("--api-token", action="store_true", help="also create an API token")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_create_user)

    p = admin.add_parser("set-password", help="reset a user's password")
    _data_args(p)
    p.add_argument("--email", required=True)
    pw(p)
    p.set_defaults(func=cmd_set_password)

    p = admin.add_parser("create-api-token", help="create an API token for a user")
    _data_args(p)
    p.add_argument("--email", required=True)
    p.add_argument("--name", default="cli")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_create_api_token)

    p = admin.add_parser("create-space", help="create a Space owned by a user")
    _data_args(p)
    p.add_argument("--name", required=True)
    p.add_argument("--owner", required=True, help="email of the Space's first admin")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_create_space)

    p = admin.add_parser(
        "add-member",
        help="add a user to a Space with a role at once, without an invitation "
        "(the operator's path; Space admins invite through the API or the UI)",
    )
    _data_args(p)
    p.add_argument("--space", required=True, help="Space id")
    p.add_argument("--email", required=True)
    p.add_argument("--role", choices=["admin", "manager", "member"], default="member")
    p.set_defaults(func=cmd_add_member)

    tok = sub.add_parser("token", help="a Space's claiming tokens").add_subparsers(
        dest="token_cmd", required=True
    )
    p = tok.add_parser("show", help="print the active claiming token")
    _data_args(p)
    p.add_argument("--space", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token)
    p = tok.add_parser("rotate", help="revoke the claiming token and make a new one")
    _data_args(p)
    p.add_argument("--space", required=True)
    p.add_argument("--expires-in", type=int, help="seconds until the new token expires")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token)
    p = tok.add_parser("create", help="make a named claiming token (its secret is shown once)")
    _data_args(p)
    p.add_argument("--space", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--expires-in", type=int, help="seconds until the token expires")
    p.add_argument("--max-uses", type=int, help="how many nodes it may enroll (default: any)")
    p.add_argument("--room", action="append", default=[], help="a room id or name (repeatable)")
    p.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
    p.add_argument(
        "--ephemeral",
        action="store_true",
        help="its nodes are removed once offline for --ttl (default 3600 s)",
    )
    p.add_argument("--ttl", type=int, help="--ephemeral: seconds offline before removal (>= 60)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_named_token)
    p = tok.add_parser("list", help="the Space's claiming tokens (never their secrets)")
    _data_args(p)
    p.add_argument("--space", required=True)
    p.add_argument("--all", action="store_true", help="revoked ones too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_named_token)
    space_cmd = sub.add_parser("space", help="a Space's policies").add_subparsers(
        dest="space_cmd", required=True
    )
    p = space_cmd.add_parser(
        "stale-policy", help="show or set what happens to nodes not live for N days"
    )
    _data_args(p)
    p.add_argument("--space", required=True)
    p.add_argument("--after-days", type=int, help="days not live before the action (1..3650)")
    p.add_argument("--action", choices=["remove", "mark"], default="mark")
    p.add_argument("--off", action="store_true", help="turn the policy off")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stale_policy)

    p = tok.add_parser("revoke", help="refuse new claims with a token; its nodes stay")
    _data_args(p)
    p.add_argument("--space", required=True)
    p.add_argument("--token", required=True, help="the token's id, prefix or name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_named_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    from tether.cloud.log_secrets import keep_secrets_out

    keep_secrets_out()  # no bearer header or cookie in the log, even with -v
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"tether-cloud: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
