"""`LinkService`: the Cloud's link as one object (app.state.links): the
live-link table and endpoint (endpoint.py) with its sweeper (sweeper.py),
started and stopped with the app, and the commands other parts give it
(close a removed node's link, ask a node to disconnect)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from starlette.concurrency import run_in_threadpool

from tether.cloud.link import presence, processes
from tether.cloud.link.endpoint import Endpoint
from tether.cloud.link.sweeper import Sweeper, close_removed
from tether.cloud.routing import DISCONNECT, REMOVE, ControlCommand
from tether.protocol import auth, states
from tether.protocol.frames import Disconnect
from tether.protocol.link import CLOSE_NORMAL, LinkState

log = logging.getLogger("tether.cloud.link")

# At a stop, how long the link handlers may take to see their close before
# uvicorn aborts what is left (the close frames are sent by then).
STOP_LINGER_SECONDS = 0.5


class LinkService(Endpoint):
    """The live-link table of this Cloud process and its endpoint (Endpoint),
    started and stopped with its sweeper, and the commands other parts give it."""

    _sweeping: asyncio.Task[None] | None = None
    _lease: processes.Lease | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.router.set_control_handler(self._on_control)
        await self.router.start()
        description = f"{socket.gethostname()} pid {os.getpid()}"
        # The lease first: a process beating without one would look dead.
        self._lease = processes.Lease(self.db, self.process_id)
        await run_in_threadpool(self._lease.keep)
        await run_in_threadpool(processes.db_heartbeat, self.db, self.process_id, description)
        if self.settings.nats_url:
            grace = processes.grace_seconds(self.keepalive)
            changed = await run_in_threadpool(presence.db_reap_dead_processes, self.db, grace)
        else:
            changed = await run_in_threadpool(
                presence.db_mark_all_offline, self.db, "Cloud restarted"
            )
        if changed:
            log.info(
                "%d node(s) whose links died with an earlier Cloud process are offline",
                len(changed),
            )
        self._sweeping = Sweeper(self).start(description, self._lease)

    async def stop(self) -> None:
        """Close every link (Disconnect with the Cloud's reconnect spread, then
        1012) while the nodes are recorded offline in one bulk transaction,
        stop routing. Idempotent. Must finish well inside the shutdown hooks'
        limit (server.py), or the offline write would be cancelled."""
        if self.closing:
            return
        self.closing = True
        if self._sweeping is not None:
            self._sweeping.cancel()
        links = list(self.links.values())
        # Spread the fleet's return over the time this Cloud needs to take it
        # back (tether.cloud.link.admission), so it comes back without waves.
        self._restart_spread = self.admission.restart_spread(len(links))
        for link in links:
            link.recorded_offline = True  # done in bulk below
        sessions = {link.node_id: link.session_id for link in links}
        # Each link that can resume gets a fresh resume token in its Disconnect
        # (the one from its HelloAck may have expired), all in one write.
        began = time.monotonic()
        tokens: dict[str, str] = {}
        resuming = [
            link.node_id for link in links if auth.RESUME_CAPABILITY in link.hello.capabilities
        ]
        if resuming:
            try:
                tokens = await self.secret_store.issue_resume_tokens(resuming)
            except Exception:
                log.exception(
                    "could not issue resume tokens at shutdown; nodes will use the challenge"
                )
        issued = time.monotonic()
        # The offline write runs in a thread while the loop sends the Disconnects.
        write = asyncio.ensure_future(self._record_stop(sessions))
        await asyncio.gather(
            *(self._close_for_restart(link, tokens.get(link.node_id, "")) for link in links)
        )
        closed = time.monotonic()
        await write
        if links:
            log.info(
                "closed %d link(s) for the Cloud restart (reconnect spread %.1f s): resume "
                "tokens %.2f s, Disconnects and closes %.2f s, offline write done %.2f s later",
                len(links),
                self._restart_spread,
                issued - began,
                closed - issued,
                time.monotonic() - closed,
            )
        # Give the link handlers a moment to see their close (they skip the
        # database now); uvicorn aborts the connections still open after that.
        # Links half-way through their handshake close themselves on seeing
        # `closing` (and record themselves offline).
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_LINGER_SECONDS)
        if self._alert_writes:
            await asyncio.wait(list(self._alert_writes), timeout=5)
        try:
            await self.router.close()
        except Exception:
            log.exception("could not close the router")

    async def _record_stop(self, sessions: dict[str, str]) -> None:
        try:
            await run_in_threadpool(
                presence.db_mark_offline,
                self.db,
                sessions,
                "Cloud restart",
                states.CAUSE_CLOUD_CLOSED,
            )
            await run_in_threadpool(processes.db_forget_process, self.db, self.process_id)
        except Exception:
            log.exception("could not record the links closed at shutdown")
        if self._lease is not None:
            await run_in_threadpool(self._lease.release)

    # -- node removal -------------------------------------------------------------

    async def close_node(self, node_id: str) -> None:
        """The node was removed (its row is gone): forget its one-time secrets
        and close its live link now with 4003, here or, through the router, on
        whichever process holds it."""
        await self.secret_store.forget_node(node_id)
        await self.router.control(ControlCommand(node_id=node_id, action=REMOVE))

    async def disconnect(self, node_id: str, delay: float | None, text: str) -> bool:
        """Ask the node to disconnect and come back after `delay`, on whichever
        process holds its link; whether one did."""
        command = ControlCommand(node_id=node_id, action=DISCONNECT, delay=delay, text=text)
        return await self.router.control(command)

    async def _on_control(self, command: ControlCommand) -> bool:
        """A command for a link this process may hold (see routing.ControlCommand)."""
        if command.action == REMOVE:
            return await close_removed(self, command.node_id)
        if command.action == DISCONNECT:
            return await self._disconnect_here(command.node_id, command.delay, command.text)
        log.warning("ignoring an unknown link command %r", command.action)
        return False

    async def _disconnect_here(self, node_id: str, delay: float | None, text: str) -> bool:
        link = self.links.get(node_id)
        if link is None or link.conn.state is not LinkState.READY:
            return False
        frame = Disconnect(code="admin", text=text, reconnect_after_seconds=delay)
        # A planned absence: no reachability alert before the node is due back.
        link.expected_back_seconds = delay
        await link.send(link.conn.send(frame))
        await link.close(
            CLOSE_NORMAL,
            "disconnect requested",
            f"disconnected: {text}",
            states.CAUSE_CLOUD_CLOSED,
        )
        return True
