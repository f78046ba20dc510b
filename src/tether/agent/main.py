"""`tether-agent`: collect, store in memory, serve the local API, and keep
the Cloud link. Runs in the foreground (`-D` is accepted for compatibility;
Tether never daemonizes itself: use systemd or the container runtime)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import uvicorn

from tether import __version__
from tether.agent import host
from tether.agent.access import AccessList
from tether.agent.api import create_app
from tether.agent.claim_key import ClaimKey
from tether.agent.control_server import ControlServer
from tether.agent.logs import AgentLog
from tether.agent.node_name_identity import pin_from_environment
from tether.agent.runtime import Agent
from tether.agent.system import (
    StartupError,
    chown_tree,
    drop_privileges,
    listen_sockets,
    lookup_user,
    warn_if_volatile,
)
from tether.node.config import AgentConfig, ConfigError, load_config
from tether.node.identity import MachineGuidError, load_or_create_machine_guid
from tether.paths import AgentPaths

log = logging.getLogger("tether.agent")
EXIT_GUID = 18


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the agent owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether-agent", description=__doc__)
    p.add_argument(
        "--prefix", help="install prefix holding etc/, var/ (default: $TETHER_PREFIX or /)"
    )
    p.add_argument(
        "-D",
        dest="foreground",
        action="store_true",
        help="run in the foreground and also log to stderr",
    )
    p.add_argument(
        "-c", dest="config", help="configuration file (default: PREFIX/etc/tether/tether.conf)"
    )
    p.add_argument("-P", dest="pidfile", help="write the process id to this file")
    p.add_argument("-p", "--port", type=int, help="override [web] default port")
    p.add_argument(
        "-W",
        dest="subcommand",
        help='run a sub-command and exit, e.g. -W "claim -token=T"; with -D, "claim ..." '
        "claims and then runs the agent",
    )
    p.add_argument("-v", "--version", action="version", version=f"tether-agent {__version__}")
    return p


def run_subcommand(text: str, paths: AgentPaths) -> int:
    argv = shlex.split(text)
    if not argv:
        print('tether-agent: -W needs a sub-command, e.g. -W "claim -token=TOKEN"', file=sys.stderr)
        return 1
    if argv[0] == "claim":
        # The same command and flags as tether-claim, with the same prefix.
        from tether.claim.cli import run as run_claim

        return run_claim(argv[1:], paths)
    if argv[0] == "buildinfo":
        print(f"tether-agent {__version__}")
        return 0
    print(
        f"tether-agent: unknown -W sub-command {argv[0]!r}; known: claim, buildinfo",
        file=sys.stderr,
    )
    return 1


def run_claim_on_start(paths: AgentPaths, config: AgentConfig) -> None:
    """Containers and images: claim once from TETHER_CLAIM_* (or NETDATA_CLAIM_*)
    before the link starts. Already claimed: nothing, so restarts never re-claim.
    A failure is logged and the agent keeps running unclaimed."""
    try:
        from tether.claim.on_start import claim_on_start

        claim_on_start(paths, config)
    except Exception as exc:  # the agent must serve locally whatever the claim does
        log.error(
            "claim on start failed unexpectedly (%s: %s); the agent keeps running unclaimed",
            exc.__class__.__name__,
            exc,
        )


def _auto_claim(paths: AgentPaths, config: AgentConfig) -> bool:
    """`tether-cli reload-claiming-state` on an unclaimed agent: claim from the
    environment or claim.conf, as at start."""
    try:
        from tether.claim.on_start import claim_on_start

        return claim_on_start(paths, config)
    except Exception as exc:
        log.error("claiming from claim.conf failed unexpectedly (%s: %s)", type(exc).__name__, exc)
        return False


def _dashboard_claim(
    paths: AgentPaths, config: AgentConfig, token: str, rooms: list[str], url: str
) -> tuple[bool, int, str]:
    """The dashboard's "Connect to Cloud" (the key was already checked)."""
    from tether.claim.flow import ClaimOptions, claim

    result = claim(
        ClaimOptions(token=token, rooms=rooms, url=url, noreload=True), paths, config=config
    )
    log.info(
        "claim from the dashboard: %s (exit code %d)",
        result.message.rstrip("."),
        int(result.exit_code),
    )
    return result.claimed, int(result.exit_code), result.message


def start_link(agent: Agent) -> asyncio.Task[None] | None:
    """Start the Cloud link (tether.agent.aclk) as a task; the agent keeps
    serving locally if the link cannot start."""
    try:
        from tether.agent.aclk import attach_to_agent

        client = attach_to_agent(agent)
    except Exception as exc:
        log.error(
            "ACLK: the link could not start (%s: %s); local API continues",
            exc.__class__.__name__,
            exc,
        )
        return None

    async def run() -> None:
        try:
            await client.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ACLK: the link stopped on an unexpected error")

    return asyncio.create_task(run(), name="aclk")


async def start_streams(agent: Agent, config: AgentConfig) -> list[asyncio.Task[None]]:
    """[stream]: accept children (parent) and/or send to a parent (child). A
    setting that cannot work is logged with its fix; the agent keeps serving."""
    tasks: list[asyncio.Task[None]] = []
    if config.get_bool("stream", "enabled", False):
        from tether.agent.stream_parent import StreamParent

        try:
            parent = StreamParent(
                config, lambda: agent.hostname, agent.store.size * agent.update_every
            )
            await parent.start()
        except StartupError as exc:
            log.error("stream: not accepting children: %s", exc)
        else:
            agent.stream_parent = parent

            async def stop_parent(reason: str) -> None:
                await parent.stop()

            agent.add_shutdown_hook(stop_parent)
    if config.get("stream", "destination", ""):
        from tether.agent.stream_child import StreamChild, StreamConfigError

        try:
            child = StreamChild(agent, config)
        except StreamConfigError as exc:
            log.error("stream: not streaming to a parent: %s", exc)
        else:
            agent.stream_child = child
            agent.collect_listeners.append(child.on_collect)
            tasks.append(asyncio.create_task(child.run(), name="stream-child"))
    return tasks


async def serve(agent: Agent, config: AgentConfig, port: int, run_as: str) -> int:
    loop = asyncio.get_running_loop()
    socks = listen_sockets(config.get("web", "bind to"), port)
    control = ControlServer(agent, agent.paths.control_socket)
    try:
        await control.start()
    except (RuntimeError, OSError) as exc:
        for s in socks:
            s.close()
        raise StartupError(
            f"cannot open the control socket {agent.paths.control_socket}: {exc}"
        ) from exc
    try:
        # Build the web app before dropping root: later imports may need files
        # only root can read (e.g. a Python installed under /root).
        claim_key = ClaimKey(agent.paths.claim_key_file)
        app = create_app(
            agent, AccessList(config.get("web", "allow connections from")), claim_key=claim_key
        )
        uv_config = uvicorn.Config(
            app,
            loop="none",
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=3,
        )
        uv_config.load()
        if run_as and os.geteuid() == 0:
            user = lookup_user(run_as)
            for d in (agent.paths.lib_dir, agent.paths.log_dir):
                chown_tree(d, user.pw_uid, user.pw_gid)
            control.chown(user.pw_uid, user.pw_gid)
            drop_privileges(user)
        # After dropping root: the key file belongs to the agent's user, 0600.
        claim_key.regenerate()

        server = _Server(uv_config)

        def on_signal(sig: signal.Signals) -> None:
            agent.request_stop(f"received {sig.name}")

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

        link = start_link(agent)
        streams = await start_streams(agent, config)
        web = asyncio.create_task(server.serve(sockets=socks), name="web")
        collect = asyncio.create_task(agent.run_collectors(), name="collectors")
        where = ", ".join(f"{s.getsockname()[0]} port {s.getsockname()[1]}" for s in socks)
        log.info(
            "tether-agent %s started (pid %d); API and dashboard on %s; machine GUID %s",
            __version__,
            os.getpid(),
            where,
            agent.machine_guid,
        )
        stopper = asyncio.create_task(agent.stop_event.wait())
        done, _ = await asyncio.wait({web, collect, stopper}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if web in done and not agent.stop_event.is_set():
            log.error("the web server stopped unexpectedly: %s", web.exception())
            code = 1
            agent.request_stop("web server stopped")
        await agent.run_shutdown_hooks()
        server.should_exit = True
        await control.stop()  # tether-cli says "not running" from here on
        for t in (web, collect):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, timeout=5)
        stopper.cancel()
        for t in streams:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, timeout=2)
        if link is not None:
            link.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(link, timeout=2)
        log.info("tether-agent stopped")
        return code
    finally:
        await control.stop()
        for s in socks:
            s.close()


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    paths = AgentPaths.from_prefix(ns.prefix)
    if ns.subcommand is not None:
        words = shlex.split(ns.subcommand)
        if not (ns.foreground and words[:1] == ["claim"]):
            return run_subcommand(ns.subcommand, paths)
        # `-D -W "claim ..."` (as the reference's `netdata -D -W "claim ..."`):
        # claim, then run the agent, which starts its link from the new claim.
        code = run_subcommand(shlex.join([*words, "-noreload"]), paths)
        if code != 0:
            return code
    config_path = Path(ns.config) if ns.config else paths.config_file
    try:
        config = load_config(config_path)
        port = ns.port or config.get_int("web", "default port")
        config.get_int("global", "update every")
        config.get_int("global", "history seconds")
    except ConfigError as exc:
        print(f"tether-agent: {exc}", file=sys.stderr)
        return 1
    try:
        agent_log = AgentLog(paths.error_log, foreground=True)
    except OSError as exc:
        print(
            f"tether-agent: cannot open the log {paths.error_log}: {exc.strerror}. Make sure "
            f"this user can write to {paths.log_dir}.",
            file=sys.stderr,
        )
        return 1
    if not ns.foreground:
        log.info("tether-agent stays in the foreground (it never daemonizes); -D is implied")
    try:
        # Kubernetes children: the GUID follows the node name (TETHER_NODE_NAME).
        pin_from_environment(paths, os.environ)
        guid = load_or_create_machine_guid(paths)
    except MachineGuidError as exc:
        log.error("%s", exc)
        return EXIT_GUID
    except OSError as exc:
        log.error("cannot write the machine GUID derived from TETHER_NODE_NAME: %s", exc)
        return EXIT_GUID
    warn_if_volatile(paths.lib_dir)
    host.configure(os.environ)  # TETHER_HOST_ROOT: report the host, not the container
    run_claim_on_start(paths, config)
    if ns.pidfile:
        Path(ns.pidfile).write_text(f"{os.getpid()}\n")

    runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        pass

    async def _main() -> int:
        agent = Agent(paths, config, guid)
        agent.auto_claim = lambda: _auto_claim(paths, config)
        agent.dashboard_claim = lambda token, rooms, url: _dashboard_claim(
            paths, config, token, rooms, url
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, agent_log.reopen)
        return await serve(agent, config, port, config.get("global", "run as user"))

    try:
        return runner(_main())
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if ns.pidfile:
            with contextlib.suppress(OSError):
                Path(ns.pidfile).unlink()


if __name__ == "__main__":
    sys.exit(main())
