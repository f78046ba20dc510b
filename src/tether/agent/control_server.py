"""The agent side of the control socket (wire format in `tether.control`).

The socket is a Unix stream socket at `paths.control_socket`, mode 0660 in a
0750 directory, so only the agent's user, its group and root can talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from tether.agent import planned_stop, rotate_key
from tether.agent.runtime import Agent
from tether.control import AgentNotRunning, ControlReply, encode_reply, send_command
from tether.node.config import ConfigError

log = logging.getLogger("tether.agent.control")
MAX_LINE = 4096


def _aclk_text(status: dict[str, object]) -> str:
    lines = [f"{k.replace('_', ' ')}: {'' if v is None else v}" for k, v in status.items()]
    return "\n".join(lines)


def handle_command(agent: Agent, line: str) -> ControlReply:
    words = line.split()
    if not words:
        return ControlReply(False, "empty command; try ping")
    cmd, args = words[0], words[1:]
    if cmd == "ping":
        return ControlReply(True, "pong")
    if cmd == "reload-claiming-state":
        # (An unclaimed agent first claimed from claim.conf: ControlServer._client.)
        state = agent.reload_claiming_state()
        data = {
            "enabled": state.enabled,
            "claimed_id": state.claimed_id,
            "cloud_base_url": state.cloud_base_url,
        }
        msg = f"claimed as {state.claimed_id}" if state.claimed_id else "not claimed"
        return ControlReply(
            True,
            f"claiming state reloaded: {msg}"
            + ("" if state.enabled else " (cloud disabled in cloud.conf)"),
            data,
        )
    if cmd == "aclk-state":
        status = agent.link_status()
        if args and args[0] == "json":
            return ControlReply(True, json.dumps(status), status)
        return ControlReply(True, _aclk_text(status), status)
    if cmd == "reload-health":
        try:
            agent.reload_health()
        except ConfigError as exc:
            return ControlReply(False, f"health not reloaded: {exc}")
        return ControlReply(True, "health configuration reloaded")
    if cmd == "reload-labels":
        changed, problems = agent.reload_labels()
        labels = agent.host_labels
        msg = f"host labels reloaded: {len(labels)} label(s)" + ("" if changed else ", unchanged")
        if problems:
            msg += "; skipped: " + "; ".join(problems)
        return ControlReply(True, msg, {"labels": labels, "changed": changed, "problems": problems})
    if cmd == "read-config":
        return ControlReply(True, agent.config.render())
    if cmd == "write-config":
        try:
            agent.config.save()
        except (OSError, ConfigError) as exc:
            return ControlReply(False, f"cannot write {agent.config.path}: {exc}")
        return ControlReply(True, f"configuration written to {agent.config.path}")
    if cmd == "shutdown-agent":
        try:
            stop = planned_stop.parse(args)
        except ValueError as exc:
            return ControlReply(False, f"not shutting down: {exc}")
        planned_stop.plan(agent, stop)  # the link's Goodbye says it
        agent.request_stop(f"shutdown requested with tether-cli shutdown-agent ({stop.reason})")
        return ControlReply(True, f"agent is shutting down ({planned_stop.describe(stop)})")
    return ControlReply(False, f"unknown command {cmd!r}; see tether-cli --help")


async def rotate_key_command(agent: Agent) -> ControlReply:
    """`rotate-key`: a new key for the node, registered with the Cloud."""
    from tether.agent.aclk import AclkClient  # the link module imports this one's users

    client = agent.link
    if not isinstance(client, AclkClient) or not agent.claim.claimed_id:
        return ControlReply(
            False, "the node is not claimed (or the link is off): nothing to rotate"
        )
    try:
        done = await rotate_key.rotate(client)
    except rotate_key.RotationFailed as exc:
        return ControlReply(
            False, f"key not rotated: {exc}" + (f". To fix: {exc.fix}" if exc.fix else "")
        )
    return ControlReply(
        True, f"key rotated: the Cloud holds {done['public_key_sha256'][:16]}... now", done
    )


class ControlServer:
    def __init__(self, agent: Agent, path: Path) -> None:
        self.agent = agent
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    def prepare(self) -> None:
        """Refuse to start over a live agent; clear a stale socket."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o750)  # noqa: S103 - the agent's group may use tether-cli
        if self.path.exists() or self.path.is_symlink():
            try:
                send_command(self.path, "ping", timeout=2)
            except (AgentNotRunning, OSError, ValueError):
                self.path.unlink()
            else:
                raise RuntimeError(
                    f"another tether-agent is already running with this prefix (it answers on "
                    f"{self.path}); stop it with tether-cli shutdown-agent first"
                )

    async def start(self) -> None:
        self.prepare()
        old = os.umask(0o117)  # the socket is born 0660, never wider
        try:
            self.server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)

    def chown(self, uid: int, gid: int) -> None:
        os.chown(self.path, uid, gid)
        os.chown(self.path.parent, uid, gid)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readline(), timeout=10)
            line = raw.decode(errors="replace").strip()
            if line.split()[:1] == ["rotate-key"]:  # async: it talks to the Cloud
                reply = await rotate_key_command(self.agent)
                writer.write(encode_reply(reply))
                await writer.drain()
                return
            if line.split()[:1] == ["reload-claiming-state"] and not self.agent.claim.claimed_id:
                # Unclaimed: claim.conf (or the environment) may ask for a claim
                # now. Blocking I/O, so off the event loop; a failure is logged.
                auto = self.agent.auto_claim
                if auto is not None:
                    await asyncio.to_thread(auto)
            try:
                reply = handle_command(self.agent, line)
            except Exception as exc:
                log.exception("control command %r failed", line.split()[:1])
                reply = ControlReply(False, f"command failed: {exc}")
            writer.write(encode_reply(reply))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), timeout=2)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
