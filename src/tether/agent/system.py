"""Process-level concerns: dropping root to `run as user`, listening sockets
for `[web] bind to`, and warning when the state directory will not persist."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
from pathlib import Path

log = logging.getLogger("tether.agent")
VOLATILE_FS = {"tmpfs", "ramfs", "overlay", "aufs", "squashfs"}


class StartupError(Exception):
    """The agent cannot start; the message says what to change."""


def lookup_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise StartupError(
            f"[global] run as user = {name}: no such user; create it or change tether.conf"
        ) from exc


def chown_tree(path: Path, uid: int, gid: int) -> None:
    if not path.exists():
        return
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, n), uid, gid, follow_symlinks=False)


def drop_privileges(user: pwd.struct_passwd) -> None:
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir
    log.info("running as user %s (uid %d)", user.pw_name, user.pw_uid)


def mount_of(path: Path, mounts_file: str = "/proc/mounts") -> tuple[str, str] | None:
    """(mount point, filesystem type) holding `path`: the longest matching entry."""
    target = str(path.resolve())
    best: tuple[str, str] | None = None
    try:
        with open(mounts_file) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and (
                    best is None or len(mnt) >= len(best[0])
                ):
                    best = (mnt, parts[2])
    except OSError:
        return None
    return best


def warn_if_volatile(lib_dir: Path) -> str | None:
    found = mount_of(lib_dir)
    if found and found[1] in VOLATILE_FS:
        msg = (
            f"{lib_dir} is on {found[1]} (mounted at {found[0]}), which does not survive a "
            "restart of this container or machine: the node identity and claim will be lost "
            "and the node will be claimed again as a new one. Mount a persistent volume there."
        )
        log.warning(msg)
        return msg
    return None


def _listen(family: int, addr: str, port: int, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((addr, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _split(entry: str, default_port: int) -> tuple[str, int]:
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port)
    return entry, default_port


def listen_sockets(bind_to: str, port: int) -> list[socket.socket]:
    """Sockets for `[web] bind to` (space-separated; `*` = every interface,
    IPv4 and IPv6 on one dual-stack socket when the host has IPv6)."""
    out: list[socket.socket] = []
    try:
        for entry in bind_to.split() or ["*"]:
            try:
                host, p = _split(entry, port)
            except ValueError as exc:
                raise StartupError(
                    f"[web] bind to: cannot read {entry!r} as ADDRESS[:PORT]"
                ) from exc
            try:
                if host in ("*", "::", "0.0.0.0"):
                    try:
                        out.append(_listen(socket.AF_INET6, "::", p, dual_stack=True))
                    except OSError:
                        out.append(_listen(socket.AF_INET, "0.0.0.0", p))
                    continue
                if host == "localhost":
                    out.append(_listen(socket.AF_INET, "127.0.0.1", p))
                    with contextlib.suppress(OSError):
                        out.append(_listen(socket.AF_INET6, "::1", p))
                    continue
                infos = socket.getaddrinfo(host, p, type=socket.SOCK_STREAM)
                fam, _, _, _, sa = infos[0]
                out.append(_listen(fam, str(sa[0]), p))
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {host} port {p}: {exc.strerror or exc}. Change [web] bind "
                    "to / [web] default port in tether.conf (or -p PORT), or stop the program "
                    "using that port."
                ) from exc
    except BaseException:
        for s in out:
            s.close()
        raise
    return out
