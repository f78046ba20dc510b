"""Where the host's files are: the one owner of the paths of the monitored
machine's /proc, /sys and /etc.

An agent in a container reports the machine it runs on when the host's
directories are mounted under one root (`-v /proc:/host/proc:ro` ...) and
`TETHER_HOST_ROOT=/host` says so (`NETDATA_HOST_PREFIX`, the name Netdata's
images use, is accepted too). Every collector and the system information
(hostname, OS) read through here. Unset: the root is `/`, the machine itself.

Not host data, and so never read here: the agent's own process (`/proc/self`)
and the mount holding its state directory (`tether.agent.system`).

A file that cannot be read under the root is an error naming the file and the
setting; the value is then not reported, rather than silently taken from the
container.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import psutil

log = logging.getLogger("tether.agent")

ENV = "TETHER_HOST_ROOT"
ALIAS = "NETDATA_HOST_PREFIX"

_root = ""  # "" = the real root; else an absolute path without a trailing slash
_setting = ""  # "TETHER_HOST_ROOT=/host", for messages
_said: set[str] = set()  # messages already logged (once per agent run)


class HostFileError(OSError):
    """A host file is missing or unreadable; the message says which and why."""


def configure(environ: Mapping[str, str]) -> str:
    """Take the host root from the environment, once at agent start; returns
    it ("" for the real root). Also points psutil at the host's /proc."""
    global _root, _setting
    _said.clear()
    name = ENV if environ.get(ENV) else ALIAS
    value = environ.get(name, "")
    other = environ.get(ALIAS if name == ENV else ENV, "")
    if value and other and other != value:
        log.warning("%s=%s and %s=%s are both set; using %s", ENV, value, ALIAS, other, ENV)
    root = os.path.abspath(value).rstrip("/") if value else ""
    _root, _setting = root, f"{name}={value}" if value else ""
    psutil.PROCFS_PATH = f"{root}/proc"
    if root:
        log.info("reading the host's /proc, /sys and /etc under %s (%s)", root, _setting)
        if not os.path.isdir(root):
            log.error(
                "%s: %s is not a directory; mount the host's /proc, /sys and /etc/os-release "
                "under it (e.g. -v /proc:%s/proc:ro) or unset %s",
                _setting,
                root,
                root,
                name,
            )
    return root


def root() -> str:
    return _root


def path(host_path: str) -> str:
    """The host's absolute `host_path` (e.g. "/proc/stat") as seen by this process."""
    return _root + host_path


def proc_net(name: str) -> str:
    """The host's /proc/net/NAME. /proc/net shows the network namespace of the
    process reading it, i.e. the container's; under a host root the host's
    counters are those of the host's init process, /proc/1/net/NAME."""
    return f"/proc/1/net/{name}" if _root else f"/proc/net/{name}"


def explain(host_path: str, exc: OSError) -> str:
    """Why `host_path` could not be read, and what to change."""
    where = path(host_path)
    msg = f"cannot read {where}: {exc.strerror or exc}"
    if _root:
        # /proc and /sys are mounted whole; single files (/etc/os-release) alone.
        first = "/" + host_path.strip("/").split("/")[0]
        top = first if first in ("/proc", "/sys") else host_path
        msg += (
            f"; it should be the host's {host_path}, read under {_setting}: mount the host's "
            f"{top} there (-v {top}:{_root}{top}:ro) or unset {_setting.partition('=')[0]}"
        )
    return msg


def read_text(host_path: str) -> str:
    try:
        with open(path(host_path)) as f:
            return f.read()
    except OSError as exc:
        raise HostFileError(explain(host_path, exc)) from exc


def listdir(host_path: str) -> list[str]:
    try:
        return os.listdir(path(host_path))
    except OSError as exc:
        raise HostFileError(explain(host_path, exc)) from exc


def say_once(level: int, msg: str) -> None:
    """Log `msg` the first time only: callers run every second."""
    if msg not in _said:
        _said.add(msg)
        log.log(level, "%s", msg)


def _first_line(host_path: str) -> str | None:
    try:
        text = read_text(host_path).strip()
    except HostFileError:
        return None
    return text.splitlines()[0].strip() if text else None


def hostname() -> str:
    """The host's name. Under a host root the host's /etc/hostname comes first:
    /proc/sys/kernel/hostname shows the UTS namespace of the reader, which in a
    container is the container's own name."""
    if not _root:
        return socket.gethostname()
    etc = _first_line("/etc/hostname")
    if etc:
        return etc
    kernel = _first_line("/proc/sys/kernel/hostname")
    if kernel:
        say_once(
            logging.WARNING,
            f"{path('/etc/hostname')} is not readable; the hostname {kernel!r} comes from "
            f"{path('/proc/sys/kernel/hostname')}, which is this container's own name unless "
            f"it shares the host's UTS namespace. Mount the host's /etc/hostname at "
            f"{path('/etc/hostname')} (-v /etc/hostname:{path('/etc/hostname')}:ro) or set "
            "[global] hostname in tether.conf",
        )
        return kernel
    own = socket.gethostname()
    say_once(
        logging.ERROR,
        f"cannot read the host's name from {path('/etc/hostname')} or "
        f"{path('/proc/sys/kernel/hostname')} ({_setting}); reporting this container's own "
        f"name {own!r}. Mount the host's /etc/hostname at {path('/etc/hostname')} or set "
        "[global] hostname in tether.conf",
    )
    return own


def os_release() -> dict[str, str]:
    """The host's os-release fields (NAME, ID, VERSION, PRETTY_NAME...); empty,
    and said once in the log, when the host root has none."""
    first = ""
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = read_text(candidate)
        except HostFileError as exc:
            first = first or str(exc)  # /etc/os-release: the one the mounts name
            continue
        out: dict[str, str] = {}
        for line in text.splitlines():
            k, _, v = line.strip().partition("=")
            if k and not k.startswith("#"):
                out[k] = v.strip().strip("\"'")
        return out
    say_once(
        logging.WARNING,
        f"the host's distribution is unknown (only its kernel is reported): {first}",
    )
    return {}
