"""`tether-claim`: claim this node into a Space of a Tether Cloud.

Flags are single-dash like the reference's claiming script (`-token=X`);
`--token=X` and `-token X` work too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import TextIO

from tether.claim.exit_codes import Exit
from tether.claim.flow import ClaimOptions, claim
from tether.node.cloud_d import split_rooms
from tether.paths import AgentPaths

USAGE = """\
usage: tether-claim -token=TOKEN [-rooms=ROOM1,ROOM2] -url=https://CLOUD [options]

Claim this node into a Space of a Tether Cloud.

  -token=TOKEN        the Space's claiming token (default: cloud.d/token)
  -rooms=R1,R2        War Rooms to add the node to (default: cloud.d/rooms)
  -url=URL            the Cloud's base URL (default: cloud base url in cloud.d/cloud.conf)
  -id=UUID            node id (default: the machine GUID); -id=$(uuidgen) makes a new identity
  -hostname=NAME      the name shown in the Cloud (default: this host's name)
  -proxy=PROXY        none | env | socks5://[user:pass@]host:port |
                      socks5h://[user:pass@]host:port | http://[user:pass@]host:port |
                      https://[user:pass@]host:port (default: [cloud] proxy in
                      tether.conf); kept in cloud.d/cloud.conf for the link
  -proxy-ca=FILE      the https proxy's CA (PEM), kept as cloud.d/proxy_ca.pem
  -noproxy            connect directly, ignoring any proxy setting
  -ca-fingerprint=sha256:HEX
                      trust only the Cloud CA with this SHA-256; fetched from the
                      Cloud and saved to cloud.d/cloud_fullchain.pem on first use
  -insecure           do not verify the Cloud's TLS certificate (dangerous)
  -doctor             check every hop to the Cloud (DNS, TCP, proxy, TLS, HTTP)
                      with these settings instead of claiming
  -noreload           do not tell the running agent to reload its claiming state
  -verbose            show each step
  -user=USER          the agent's user (default: [global] run as user in tether.conf)
  --prefix DIR        the agent's install prefix (default: $TETHER_PREFIX or /)
  --json              print the result as one JSON object
  -h, --help          show this help

Exit codes: 0 claimed, 1 bad argument, 2 claiming directory, 3 Cloud disabled,
4 cannot connect, 5 claimed but the running agent was not told, 6 wrong user,
7 unknown HTTP error, 8-17 refused by the Cloud (see docs/claiming.md),
18 machine GUID.
"""

VALUE_FLAGS = {
    "token",
    "rooms",
    "url",
    "id",
    "hostname",
    "proxy",
    "user",
    "prefix",
    "proxy-ca",
    "ca-fingerprint",
}
BOOL_FLAGS = {"noproxy", "insecure", "noreload", "verbose", "json", "help", "h", "doctor"}


class UsageError(Exception):
    pass


@dataclass
class Parsed:
    options: ClaimOptions = field(default_factory=ClaimOptions)
    prefix: str | None = None
    json: bool = False
    help: bool = False
    doctor: bool = False


def parse_args(argv: list[str]) -> Parsed:
    parsed = Parsed()
    opts = parsed.options
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UsageError(f"unknown argument {arg!r}")
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in BOOL_FLAGS:
            if has_value:
                raise UsageError(f"{arg.split('=')[0]} takes no value")
            if name in ("help", "h"):
                parsed.help = True
            elif name == "json":
                parsed.json = True
            elif name == "doctor":
                parsed.doctor = True
            else:
                setattr(opts, name, True)
            continue
        if name not in VALUE_FLAGS:
            raise UsageError(f"unknown argument {arg.split('=')[0]!r}")
        if not has_value:
            if i >= len(argv):
                raise UsageError(f"-{name} needs a value: -{name}=VALUE")
            value = argv[i]
            i += 1
        if name == "rooms":
            opts.rooms = split_rooms(value)
        elif name == "id":
            opts.node_id = value
        elif name == "prefix":
            parsed.prefix = value
        elif name in ("proxy-ca", "ca-fingerprint"):
            setattr(opts, name.replace("-", "_"), value)
        else:
            setattr(opts, name, value)
    return parsed


def run(
    argv: list[str],
    paths: AgentPaths | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    # Resolved at call time, so a redirected sys.stdout/sys.stderr is honoured.
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        parsed = parse_args(argv)
    except UsageError as exc:
        print(f"tether-claim: {exc}\n", file=err)
        print(USAGE, file=err, end="")
        return int(Exit.BAD_ARGUMENT)
    if parsed.help:
        print(USAGE, file=out, end="")
        return 0
    if paths is None or parsed.prefix:
        paths = AgentPaths.from_prefix(parsed.prefix)

    def say(msg: str) -> None:
        if parsed.options.verbose and not parsed.json:
            print(f"tether-claim: {msg}", file=err)

    if parsed.doctor:
        return run_claim_doctor(parsed, paths, out, err)
    if parsed.options.insecure:
        # Loud, and before anything goes on the wire.
        from tether.net.tls import INSECURE_WARNING

        print(INSECURE_WARNING, file=err)
    result = claim(parsed.options, paths, say=say)
    if parsed.json:
        print(json.dumps(result.as_json()), file=out)
        return int(result.exit_code)
    for warning in result.warnings:
        if warning.startswith("WARNING: -insecure"):
            continue  # already printed
        print(warning, file=err)
    if result.claimed:
        print(result.message, file=out)
        if parsed.options.verbose:
            print(f"Node id: {result.claimed_id}", file=out)
    else:
        print(f"tether-claim: ERROR: {result.message}", file=err)
    return int(result.exit_code)


def run_claim_doctor(parsed: Parsed, paths: AgentPaths, out: TextIO, err: TextIO) -> int:
    """`-doctor`: every hop with the settings this claim would use; exit 0 when
    all passed, 4 (cannot connect) when one failed, 1 when the settings are bad."""
    from tether.claim.doctor import DoctorSetupError, node_settings, run_doctor
    from tether.net.tls import parse_fingerprint
    from tether.node.config import ConfigError, load_config

    opts = parsed.options
    try:
        config = load_config(paths.config_file)
        settings = node_settings(paths, opts.url)
        if opts.url:
            settings.url = opts.url.strip().rstrip("/")
        if opts.proxy:
            settings.proxy_setting, settings.proxy_source = opts.proxy, "-proxy"
        settings.noproxy = opts.noproxy
        settings.insecure = settings.insecure or opts.insecure
        if opts.ca_fingerprint:
            settings.pin = parse_fingerprint(opts.ca_fingerprint)
        settings.proxy_ca = opts.proxy_ca
        report = run_doctor(settings, paths, config)
    except (DoctorSetupError, ConfigError, ValueError) as exc:
        print(f"tether-claim: -doctor: {exc}", file=err)
        return int(Exit.BAD_ARGUMENT)
    if parsed.json:
        print(json.dumps(report.as_json()), file=out)
    else:
        print(report.text(), file=out)
    return 0 if report.failed is None else int(Exit.CANNOT_CONNECT)


def main() -> None:
    sys.exit(run(sys.argv[1:]))
