"""The node's machine GUID: created once, reused for the node's whole life.

The agent and the claim command both call `load_or_create_machine_guid`, so
they agree on one identity.
"""

from __future__ import annotations

import getpass
import os
import uuid

from tether.atomic import write_atomic
from tether.paths import AgentPaths


class MachineGuidError(Exception):
    """The GUID file cannot be read or written; the message names the file."""


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.geteuid()}"


def load_or_create_machine_guid(paths: AgentPaths) -> str:
    path = paths.machine_guid_file
    try:
        existing = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        existing = ""  # not created yet (or its directory is missing): create it below
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise MachineGuidError(
            f"Cannot read the machine GUID in {path} ({exc.__class__.__name__}). Make sure the "
            f"user running this ({_user()}) can read it: run as root or as the agent's user."
        ) from exc
    if existing:
        try:
            return str(uuid.UUID(existing))
        except ValueError as exc:
            raise MachineGuidError(
                f"{path} does not hold a valid machine GUID ({existing[:40]!r}). Restore it "
                "from a backup, or remove it to give this node a new identity."
            ) from exc
    guid = str(uuid.uuid4())
    try:
        write_atomic(path, guid + "\n", mode=0o644)
    except OSError as exc:
        raise MachineGuidError(
            f"Failed to write new machine GUID. Make sure the user running this ({_user()}) "
            f"can write to {path} (it needs write and execute rights on {path.parent}): "
            f"run as root or as the agent's user. ({exc.strerror or exc})"
        ) from exc
    return guid
