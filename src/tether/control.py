"""The agent's control socket: the wire format and the client side.

One command per connection: the client writes one line (`ping`,
`reload-claiming-state`, `aclk-state json`, ...) and reads back one JSON line
`{"ok": bool, "message": str, "data": any}`, then the agent closes. The server
side lives in `tether.agent.control_server`.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_REPLY = 1 << 20


class AgentNotRunning(Exception):
    """No agent answers on the control socket."""


@dataclass
class ControlReply:
    ok: bool
    message: str
    data: Any = None


def encode_reply(reply: ControlReply) -> bytes:
    body = {"ok": reply.ok, "message": reply.message, "data": reply.data}
    return (json.dumps(body) + "\n").encode()


def send_command(socket_path: Path, command: str, timeout: float = 10.0) -> ControlReply:
    """Send one command to the running agent and return its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentNotRunning(
                f"no agent is listening on {socket_path}: is tether-agent running "
                "with the same --prefix?"
            ) from exc
        except PermissionError as exc:
            raise AgentNotRunning(
                f"permission denied on {socket_path}: run this as root or as the agent's user"
            ) from exc
        sock.sendall(command.strip().encode() + b"\n")
        chunks = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY:
                break
    finally:
        sock.close()
    raw = b"".join(chunks).decode(errors="replace").strip()
    if not raw:
        raise AgentNotRunning(f"the agent at {socket_path} closed without answering")
    obj = json.loads(raw)
    return ControlReply(bool(obj.get("ok")), str(obj.get("message", "")), obj.get("data"))
