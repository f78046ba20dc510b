"""The node's claim state as the claim command leaves it in `cloud.d/`.

`cloud.d/claimed_id` holds the node's claim id (one line); `cloud.d/cloud.conf`
is INI with `[global] enabled = yes|no` (missing file or key: enabled) and
`cloud base url = URL`. The agent re-reads both on `reload-claiming-state`.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass

from tether.paths import AgentPaths

TRUE = {"yes", "true", "1", "on"}
FALSE = {"no", "false", "0", "off"}


@dataclass
class ClaimState:
    enabled: bool
    claimed_id: str | None
    cloud_base_url: str | None


def _read_bool(raw: str, default: bool) -> bool:
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    return default


def load_claim_state(paths: AgentPaths) -> ClaimState:
    enabled = True
    base_url: str | None = None
    conf = paths.cloud_conf_file
    if conf.exists():
        parser = configparser.ConfigParser(
            interpolation=None, strict=False, inline_comment_prefixes=("#", ";")
        )
        try:
            parser.read_string(conf.read_text(), source=str(conf))
        except (configparser.Error, OSError, UnicodeDecodeError):
            parser = configparser.ConfigParser()
        if parser.has_option("global", "enabled"):
            enabled = _read_bool(parser.get("global", "enabled"), True)
        if parser.has_option("global", "cloud base url"):
            base_url = parser.get("global", "cloud base url").strip() or None
    claimed_id: str | None = None
    try:
        claimed_id = paths.claimed_id_file.read_text().strip().splitlines()[0].strip() or None
    except (FileNotFoundError, IndexError, NotADirectoryError):
        claimed_id = None
    except (OSError, UnicodeDecodeError):
        claimed_id = None
    return ClaimState(enabled=enabled, claimed_id=claimed_id, cloud_base_url=base_url)
