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
    extra_sans: list[str] = field(default_factory=list)
    public_url: str | None = None
    # Failed claims allowed per source address per minute before 429.
    claim_failures_per_minute: int = 10
    session_days: int = 14

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
    def secret_key_file(self) -> Path:
        return self.data_dir / "secret.key"
