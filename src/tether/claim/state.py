"""The claim's files in cloud.d: what is read before a claim, what is written after.

Only a successful claim writes `claimed_id` and `cloud.conf`, each atomically,
so a failed claim never leaves a node half-claimed.
"""

from __future__ import annotations

import configparser
import contextlib
import os
from pathlib import Path

from tether.atomic import write_atomic
from tether.paths import AgentPaths

FALSE_WORDS = {"no", "false", "0", "off", "disabled"}


class ClaimDirError(Exception):
    """cloud.d cannot be created, read or written; the message names the path."""


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
    """`[global]` of cloud.d/cloud.conf, or {} when absent."""
    text = _read_text(paths.cloud_conf_file)
    if text is None:
        return {}
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text, source=str(paths.cloud_conf_file))
    except configparser.Error as exc:
        raise ClaimDirError(f"cannot parse {paths.cloud_conf_file}: {exc}") from exc
    if not parser.has_section("global"):
        return {}
    return {k: v.strip() for k, v in parser.items("global")}


def cloud_disabled(conf: dict[str, str]) -> bool:
    return conf.get("enabled", "yes").strip().lower() in FALSE_WORDS


def read_token(paths: AgentPaths) -> str | None:
    text = _read_text(paths.token_file)
    token = text.strip() if text else ""
    return token or None


def read_rooms(paths: AgentPaths) -> list[str]:
    text = _read_text(paths.rooms_file) or ""
    return split_rooms(text)


def split_rooms(text: str) -> list[str]:
    return [r.strip() for r in text.replace("\n", ",").split(",") if r.strip()]


def read_claimed_id(paths: AgentPaths) -> str | None:
    text = _read_text(paths.claimed_id_file)
    value = text.strip() if text else ""
    return value or None


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


def cloud_conf_text(url: str) -> str:
    return f"[global]\n    enabled = yes\n    cloud base url = {url}\n"


def write_claimed(paths: AgentPaths, node_id: str, url: str, rooms: list[str]) -> None:
    """Record a successful claim. claimed_id goes last: it is what marks the node claimed."""
    write_atomic(paths.cloud_conf_file, cloud_conf_text(url), mode=0o640)
    if rooms:
        write_atomic(paths.rooms_file, ",".join(rooms) + "\n", mode=0o640)
    # The token did its job; a stored copy would only be a secret lying around.
    with contextlib.suppress(FileNotFoundError):
        paths.token_file.unlink()
    write_atomic(paths.claimed_id_file, node_id + "\n", mode=0o640)


def chown_cloud_dir(paths: AgentPaths, uid: int, gid: int) -> None:
    """Hand cloud.d and its files to the agent's user (when claiming as root)."""
    d = paths.cloud_dir
    os.chown(d, uid, gid)
    for child in d.iterdir():
        if child.is_file() and not child.is_symlink():
            os.chown(child, uid, gid)
