"""Where the agent keeps its files, relative to one prefix.

Every Tether command on a node (agent, claim, cli) resolves paths the same way:
`--prefix DIR`, else `TETHER_PREFIX`, else `/` (the packaged layout). The
layout mirrors the reference with `tether` in place of `netdata`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PREFIX_ENV = "TETHER_PREFIX"


def resolve_prefix(cli_prefix: str | os.PathLike[str] | None = None) -> Path:
    if cli_prefix:
        return Path(cli_prefix).expanduser().resolve()
    env = os.environ.get(PREFIX_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path("/")


@dataclass(frozen=True)
class AgentPaths:
    prefix: Path

    @classmethod
    def from_prefix(cls, cli_prefix: str | os.PathLike[str] | None = None) -> AgentPaths:
        return cls(resolve_prefix(cli_prefix))

    @property
    def config_dir(self) -> Path:
        return self.prefix / "etc" / "tether"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "tether.conf"

    @property
    def lib_dir(self) -> Path:
        return self.prefix / "var" / "lib" / "tether"

    @property
    def machine_guid_file(self) -> Path:
        return self.lib_dir / "registry" / "tether.public.unique.id"

    @property
    def cloud_dir(self) -> Path:
        return self.lib_dir / "cloud.d"

    @property
    def claimed_id_file(self) -> Path:
        return self.cloud_dir / "claimed_id"

    @property
    def cloud_conf_file(self) -> Path:
        return self.cloud_dir / "cloud.conf"

    @property
    def private_key_file(self) -> Path:
        return self.cloud_dir / "private.pem"

    @property
    def public_key_file(self) -> Path:
        return self.cloud_dir / "public.pem"

    @property
    def token_file(self) -> Path:
        return self.cloud_dir / "token"

    @property
    def rooms_file(self) -> Path:
        return self.cloud_dir / "rooms"

    @property
    def cloud_fullchain_file(self) -> Path:
        return self.cloud_dir / "cloud_fullchain.pem"

    @property
    def proxy_ca_file(self) -> Path:
        return self.cloud_dir / "proxy_ca.pem"

    @property
    def claim_conf_file(self) -> Path:
        return self.config_dir / "claim.conf"

    @property
    def claim_key_file(self) -> Path:
        return self.lib_dir / "tether_random_session_id"

    @property
    def log_dir(self) -> Path:
        return self.prefix / "var" / "log" / "tether"

    @property
    def error_log(self) -> Path:
        return self.log_dir / "error.log"

    @property
    def run_dir(self) -> Path:
        return self.prefix / "var" / "run" / "tether"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "tether.sock"
