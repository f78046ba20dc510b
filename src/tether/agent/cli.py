"""`tether-cli`: talk to the running agent over its control socket.

Exit codes: 0 ok, 1 the agent refused the command (or a usage error), 2 no
agent is running with this prefix (or the socket is not accessible).
"""

from __future__ import annotations

import argparse
import json
import sys

from tether.control import AgentNotRunning, send_command
from tether.paths import AgentPaths

COMMANDS = {
    "ping": "check the agent answers",
    "reload-claiming-state": "re-read cloud.d after a claim",
    "aclk-state": "show the Cloud link state (add 'json' for JSON)",
    "reload-health": "re-read the [health] alert levels from tether.conf",
    "reload-labels": "re-read [host labels] from tether.conf and send them to the Cloud",
    "read-config": "print the effective configuration",
    "write-config": "write the effective configuration to tether.conf",
    "shutdown-agent": "stop the agent gracefully (--reason upgrade|maintenance|restart|shutdown|"
    "other --back-in 10m: a planned stop, shown by the Cloud)",
    "rotate-key": "make a new key for this node and register it with the Cloud (no re-claim)",
    "doctor": "check every hop to the Cloud, here, without the agent (--json, --url=URL)",
}


def build_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {k:24} {v}" for k, v in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="tether-cli",
        description="Control a running tether-agent.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prefix", help="install prefix (default: $TETHER_PREFIX or /)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the agent")
    p.add_argument("--json", action="store_true", help="doctor: one JSON object")
    p.add_argument("--url", help="doctor: the Cloud URL for an unclaimed node without claim.conf")
    p.add_argument("--reason", help="shutdown-agent: why (upgrade, maintenance, restart, ...)")
    p.add_argument("--back-in", help="shutdown-agent: when it returns (90s, 10m, 2h, 1d)")
    p.add_argument("command", help="one of the commands below")
    p.add_argument("args", nargs="*", help="command arguments (e.g. json)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"tether-cli: unknown command {ns.command!r}", file=sys.stderr)
        return 1
    paths = AgentPaths.from_prefix(ns.prefix)
    if ns.command == "doctor":
        return doctor(paths, ns.url, ns.json)
    words = [ns.command, *ns.args]
    if ns.reason:
        words += ["--reason", ns.reason]
    if ns.back_in:
        words += ["--back-in", ns.back_in]
    line = " ".join(words)
    try:
        reply = send_command(paths.control_socket, line, timeout=ns.timeout)
    except AgentNotRunning as exc:
        print(f"tether-cli: the agent is not running: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(
            f"tether-cli: cannot talk to the agent at {paths.control_socket}: {exc}",
            file=sys.stderr,
        )
        return 2
    if ns.args[:1] == ["json"] and reply.data is not None:
        print(json.dumps(reply.data, indent=2))
    else:
        print(reply.message)
    return 0 if reply.ok else 1


def doctor(paths: AgentPaths, url: str | None, as_json: bool) -> int:
    """Runs in this process with the node's files (the link's settings): 0 when
    every hop checked passed, 1 when one failed, 2 when the settings are unusable."""
    # tether-cli is an entry point: like agent/main.py it may use tether.claim.
    from tether.claim.doctor import DoctorSetupError, node_settings, run_doctor
    from tether.node.config import ConfigError, load_config

    try:
        report = run_doctor(node_settings(paths, url), paths, load_config(paths.config_file))
    except (DoctorSetupError, ConfigError, ValueError) as exc:
        print(f"tether-cli doctor: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_json()) if as_json else report.text())
    return 0 if report.failed is None else 1


if __name__ == "__main__":
    sys.exit(main())
