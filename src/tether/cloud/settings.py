"""The Cloud's settings: one object built by the CLI and handed to the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 19443
DEFAULT_HOST = "::"  # dual-stack where the OS allows; falls back to 0.0.0.0


@dataclass
class CloudSettings:
    data_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str | None = None
    insecure_http: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    # --san and --public-url as resolved by tether.cloud.address (the flags, or
    # what public-address.json in data_dir kept from an earlier start).
    extra_sans: list[str] = field(default_factory=list)
    public_url: str | None = None
    # The agent bundle served at /downloads/ (tether.cloud.downloads); None: built
    # at first need into data_dir/agent-bundle.
    agent_bundle: Path | None = None
    # Failed claims allowed per source address per minute before 429.
    claim_failures_per_minute: int = 10
    session_days: int = 14
    # The link (see docs/protocol.md): the Cloud pings every keepalive seconds
    # and drops a link whose pong is keepalive/2 late, so a dead node goes
    # offline within 1.5 keepalive intervals.
    keepalive_seconds: float = 20.0
    # Several Cloud processes sharing PostgreSQL route relays through NATS.
    nats_url: str | None = None
    nats_subject_prefix: str = "tether"
    # How long a relayed query may take before the browser gets 504.
    relay_timeout_seconds: float = 10.0
    # How long a checked credential (and "user U may see node N") is trusted
    # without the database (tether.cloud.auth.AuthCache); changes clear it at
    # once on every process.
    auth_cache_seconds: float = 5.0
    # Relayed answers that travel zlib-compressed: the inflated bytes of all
    # answers in flight in this process (past it, 503 ErrRelayBusy) and the
    # most one answer may inflate to (past it, 502 ErrAnswerTooLarge).
    relay_inflate_budget_bytes: int = 64 * 2**20
    relay_max_answer_bytes: int = 16 * 2**20
    # Node authentication (tether.cloud.node_auth): challenge lifetime (under a
    # minute); failures per (node, address) per minute before that address gets
    # no challenges for that node (an address across nodes: 4x); node-auth
    # requests (challenges and answers) per address per minute.
    challenge_ttl_seconds: float = 50.0
    # Resume tokens (tether.cloud.secret_store.ResumeTokens): how long the one a
    # HelloAck or a restart's Disconnect hands out stays valid.
    resume_token_ttl_seconds: float = 600.0
    auth_failures_per_minute: int = 5
    auth_requests_per_address_per_minute: int = 6000
    # Backoff policy handed to agents with each link token.
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    # Bounded history (tether.cloud.retention): node_events and claim_audit rows
    # older than this are pruned, and beyond these counts the oldest go.
    history_days: float = 30.0
    node_events_per_node: int = 1000
    claim_audit_rows: int = 100_000
    # The audit log (tether.cloud.audit): entries older than this go, and
    # beyond this many per Space the oldest go.
    audit_days: float = 365.0
    audit_rows_per_space: int = 100_000
    # The shortest TTL an ephemeral claiming token may set (tether.cloud.stale_nodes);
    # lowered only by tests, which cannot wait a minute per case.
    min_ephemeral_ttl_seconds: int = 60
    # Slow clients (http_timeouts.py): a request head (and the TLS handshake)
    # must arrive within header_timeout, its body within body_timeout; at most
    # max_unfinished_connections per process may be mid-request (oldest closed).
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 20.0
    max_unfinished_connections: int = 1000
    # PROXY protocol (tether.cloud.proxy_listener): the balancers allowed to
    # send a header (CIDRs; empty: off), and whether they must.
    trusted_proxies: tuple[str, ...] = ()
    require_proxy_header: bool = False
    # Alerts (tether.cloud.alerts, docs/alerts.md): the grace of a Space that
    # sets none; the worker's longest sleep; each send's timeout; retries
    # (backoff base doubling up to max, then "failed"); a flapping node's
    # notifications per window before they are held for a summary.
    alert_default_grace_seconds: float = 60.0
    alert_tick_seconds: float = 1.0
    notify_timeout_seconds: float = 10.0
    notify_retry_base_seconds: float = 1.0
    notify_retry_max_seconds: float = 300.0
    notify_max_attempts: int = 8
    notify_flap_limit: int = 6
    notify_flap_window_seconds: float = 600.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'cloud.db'}"

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"

    @property
    def url(self) -> str:
        """The address users and agents reach this Cloud at."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("::", "0.0.0.0", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def served_cert_file(self) -> Path | None:
        """The server certificate this Cloud presents (None: plain HTTP)."""
        if self.insecure_http:
            return None
        return self.cert_file or self.data_dir / "server.pem"

    @property
    def secret_key_file(self) -> Path:
        return self.data_dir / "secret.key"
