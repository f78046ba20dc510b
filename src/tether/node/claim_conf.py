"""`claim.conf` in the agent's config directory, as Netdata v2 agents have it:

    [global]
        url = https://CLOUD
        token = TOKEN
        rooms = ROOM1,ROOM2
        proxy = none | env | socks5://... | socks5h://... | http://... | https://...
        insecure = no

Read at start and on `tether-cli reload-claiming-state`; an unclaimed node
claims with it (`tether.claim.on_start`). It holds a claiming token, so it
should be readable by the agent's user only (0600): `group_or_world_readable`
lets the claim warn when it is not.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

from tether.node.cloud_d import split_rooms
from tether.node.config import parse_bool


class ClaimConfError(Exception):
    """claim.conf cannot be read or parsed; the message names the file."""


@dataclass(frozen=True)
class ClaimConf:
    path: Path
    url: str | None
    token: str | None
    rooms: list[str] | None
    proxy: str | None
    insecure: bool
    group_or_world_readable: bool


def load_claim_conf(path: Path) -> ClaimConf | None:
    """The file's `[global]` keys, or None when there is no claim.conf."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClaimConfError(f"cannot read {path}: {exc}") from exc
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, inline_comment_prefixes=("#", ";")
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ClaimConfError(f"cannot parse {path}: {exc}") from exc
    values = (
        {k: v.strip() for k, v in parser.items("global")} if parser.has_section("global") else {}
    )
    rooms = values.get("rooms")
    return ClaimConf(
        path=path,
        url=values.get("url") or None,
        token=values.get("token") or None,
        rooms=split_rooms(rooms) if rooms else None,
        proxy=values.get("proxy") or None,
        insecure=parse_bool(values.get("insecure"), False),
        group_or_world_readable=bool(mode & 0o077),
    )
