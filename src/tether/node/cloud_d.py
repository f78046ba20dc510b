"""The node's claim files in `cloud.d/`: the one reader and writer.

- `claimed_id`: the node's claim id (first line); present means claimed;
- `cloud.conf`: INI, `[global] enabled = yes|no` (missing file or key: yes;
  the words are `tether.node.config.parse_bool`'s), `cloud base url = URL`,
  and what else the claim used so the link uses the same: `proxy` (a resolved
  proxy URL or `none`, written only when the claim's proxy did not come from
  tether.conf), `proxy source` (where the claim got it) and `insecure`;
  mode 0600 when the proxy holds a password, else 0640;
- `token`, `rooms`: a pending claim (a token and its War Rooms) left for a
  later claim; the rooms go only with that token, and both go after a claim;
- `private.pem`, `public.pem` (written by `tether.claim.keys`) and
  `cloud_fullchain.pem` (put there by the admin, read by `tether.net.tls`):
  their paths are in `tether.paths.AgentPaths`.

Only a successful claim writes `claimed_id` and `cloud.conf`, each atomically,
so a failed claim never leaves a node half-claimed. The claim stops on a file
it cannot read (`ClaimDirError`); the agent (`load_claim_state`) reads such a
file as absent and keeps serving locally.
"""

from __future__ import annotations

import configparser
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from tether.atomic import write_atomic
from tether.node.config import parse_bool
from tether.paths import AgentPaths


class ClaimDirError(Exception):
    """cloud.d cannot be created, read or written; the message names the path."""


@dataclass
class ClaimState:
    """What the agent acts on: whether to keep a link, as which node, to where."""

    enabled: bool
    claimed_id: str | None
    cloud_base_url: str | None
    # What the claim used, kept for the link (None: [cloud] proxy of tether.conf).
    proxy: str | None = None
    proxy_source: str | None = None
    insecure: bool = False
    ca_fingerprint: str | None = None  # "sha256:HEX" when the claim pinned the CA


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        raise ClaimDirError(f"{path.parent} exists but is not a directory: move it away") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ClaimDirError(f"cannot read {path}: {exc}") from exc


def read_cloud_conf(paths: AgentPaths) -> dict[str, str]:
    """`[global]` of cloud.d/cloud.conf, values stripped, or {} when absent."""
    text = _read_text(paths.cloud_conf_file)
    if text is None:
        return {}
    # Not strict, like tether.conf: a key given twice takes its last value.
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, inline_comment_prefixes=("#", ";")
    )
    try:
        parser.read_string(text, source=str(paths.cloud_conf_file))
    except configparser.Error as exc:
        raise ClaimDirError(f"cannot parse {paths.cloud_conf_file}: {exc}") from exc
    if not parser.has_section("global"):
        return {}
    return {k: v.strip() for k, v in parser.items("global")}


def cloud_enabled(conf: dict[str, str]) -> bool:
    """`[global] enabled` of cloud.conf as read by `read_cloud_conf`."""
    return parse_bool(conf.get("enabled"), True)


def read_claimed_id(paths: AgentPaths) -> str | None:
    text = (_read_text(paths.claimed_id_file) or "").strip()
    if not text:
        return None
    return text.splitlines()[0].strip()


def load_claim_state(paths: AgentPaths) -> ClaimState:
    """The agent's view of cloud.d; re-read on `reload-claiming-state`. A file
    that cannot be read or parsed counts as absent."""
    try:
        conf = read_cloud_conf(paths)
    except ClaimDirError:
        conf = {}
    try:
        claimed_id = read_claimed_id(paths)
    except ClaimDirError:
        claimed_id = None
    return ClaimState(
        enabled=cloud_enabled(conf),
        claimed_id=claimed_id,
        cloud_base_url=conf.get("cloud base url") or None,
        proxy=conf.get("proxy") or None,
        proxy_source=conf.get("proxy source") or None,
        insecure=parse_bool(conf.get("insecure"), False),
        ca_fingerprint=conf.get("ca fingerprint") or None,
    )


def read_token(paths: AgentPaths) -> str | None:
    text = _read_text(paths.token_file)
    token = text.strip() if text else ""
    return token or None


def read_rooms(paths: AgentPaths) -> list[str]:
    text = _read_text(paths.rooms_file) or ""
    return split_rooms(text)


def split_rooms(text: str) -> list[str]:
    """War Room ids separated by commas or newlines (the rooms file, `-rooms=`)."""
    return [r.strip() for r in text.replace("\n", ",").split(",") if r.strip()]


def ensure_cloud_dir(paths: AgentPaths) -> None:
    d = paths.cloud_dir
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o770)
    except FileExistsError as exc:
        raise ClaimDirError(f"{d} exists but is not a directory: move it away") from exc
    except OSError as exc:
        raise ClaimDirError(f"cannot create {d}: {exc.strerror}") from exc
    if not d.is_dir():
        raise ClaimDirError(f"{d} exists but is not a directory: move it away")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ClaimDirError(
            f"cannot write to {d}: run this as root or as the user that runs the agent"
        )


@dataclass(frozen=True)
class KeptSettings:
    """What a claim used besides the URL, written to cloud.conf for the link."""

    proxy: str | None = None  # URL or "none"; None: the link reads tether.conf
    proxy_source: str | None = None
    insecure: bool = False
    secret: bool = False  # the proxy URL holds a password: cloud.conf is 0600
    ca_fingerprint: str | None = None  # pinned SHA-256 (hex) of the CA in cloud_fullchain.pem


def cloud_conf_text(url: str, kept: KeptSettings | None = None) -> str:
    lines = ["[global]", "    enabled = yes", f"    cloud base url = {url}"]
    if kept is not None and kept.proxy is not None:
        lines.append(f"    proxy = {kept.proxy}")
        if kept.proxy_source:
            lines.append(f"    proxy source = {kept.proxy_source}")
    if kept is not None and kept.insecure:
        lines.append("    insecure = yes")
    if kept is not None and kept.ca_fingerprint:
        lines.append(f"    ca fingerprint = sha256:{kept.ca_fingerprint}")
    return "\n".join(lines) + "\n"


def write_claimed(
    paths: AgentPaths, node_id: str, url: str, kept: KeptSettings | None = None
) -> None:
    """Record a successful claim. claimed_id goes last: it is what marks the node claimed."""
    mode = 0o600 if kept is not None and kept.secret else 0o640
    write_atomic(paths.cloud_conf_file, cloud_conf_text(url, kept), mode=mode)
    # The pending claim did its job; a stored token would only be a secret
    # lying around, and its rooms belong to its Space only.
    for done in (paths.token_file, paths.rooms_file):
        with contextlib.suppress(FileNotFoundError):
            done.unlink()
    write_atomic(paths.claimed_id_file, node_id + "\n", mode=0o640)


def chown_cloud_dir(paths: AgentPaths, uid: int, gid: int) -> None:
    """Hand cloud.d and its files to the agent's user (when claiming as root)."""
    d = paths.cloud_dir
    os.chown(d, uid, gid)
    for child in d.iterdir():
        if child.is_file() and not child.is_symlink():
            os.chown(child, uid, gid)
