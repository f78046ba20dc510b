"""What every Cloud process of one PostgreSQL database shares, kept in it.

In scale-out mode (PostgreSQL and NATS) every process must serve with the
same CA (agents trust it by fingerprint), the same `secret.key` (it opens the
claiming tokens sealed in the database) and a server certificate from that
CA. `tether-cloud init` (or the first process to start) writes them to the
`cloud_files` table (migration 0009); every later process copies them into
its own data directory at start, so processes on other machines need only
the database and NATS URLs, no shared storage.

Two processes starting at once against a fresh database must not both make
a CA, nor both run the migrations: `startup_lock` is a PostgreSQL advisory
lock held while one process migrates and shares (or fetches) the files.

A data directory that already holds a different CA or secret key is refused,
never overwritten: its nodes trust that CA. The server certificate is copied
only where the data dir has none; a process whose names differ (another
hostname) issues its own from the shared CA key, as at any start (tls.py).

The database then holds the CA's key and secret.key in clear: its backups
need the care the data directory's do (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from tether.atomic import write_atomic
from tether.cloud.models import utcnow

log = logging.getLogger("tether.cloud")

# "tether" and 1, as one bigint: the lock every process takes at start.
STARTUP_LOCK = 0x7465746865720001
# Shared files, with whether a differing local copy must be refused (those
# that nodes or sealed tokens depend on) and the mode they are written with.
FILES: dict[str, tuple[bool, int]] = {
    "ca.pem": (True, 0o644),
    "ca-key.pem": (True, 0o600),
    "secret.key": (True, 0o600),
    "server.pem": (False, 0o644),
    "server-key.pem": (False, 0o600),
}


class SharedConfigError(Exception):
    """The data directory disagrees with the database; the message says how to fix it."""


@dataclass(frozen=True)
class Shared:
    made: bool  # this process made the files and put them in the database
    names: tuple[str, ...]  # the files now in the database


@contextlib.contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """One process at a time on this database (PostgreSQL; SQLite: no-op,
    one process). Held on a connection of its own, for as long as the block."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": STARTUP_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": STARTUP_LOCK})
            conn.commit()


def _stored(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, content FROM cloud_files")).all()
    return {str(name): str(content) for name, content in rows}


def _fetch(stored: dict[str, str], data_dir: Path) -> None:
    for name, content in stored.items():
        if name not in FILES:
            continue
        must_match, mode = FILES[name]
        path = data_dir / name
        if path.exists():
            local = path.read_text()
            if hmac.compare_digest(local.strip(), content.strip()):
                continue
            if must_match:
                raise SharedConfigError(
                    f"{path} is not the {name} the other Cloud processes of this database "
                    "use: move it out of the data directory so this process takes the "
                    "shared one (nodes that trusted the old CA then need the new ca.pem), "
                    "or point --database-url at that Cloud's own database"
                )
            continue  # this machine's own server certificate, from the shared CA
        write_atomic(path, content, mode=mode)


def share(engine: Engine, data_dir: Path, make_local: Callable[[], None]) -> Shared:
    """The shared files in `data_dir`: copied from the database, or, when it
    holds none yet, made here (`make_local`: the CA, the server certificate and
    secret.key in `data_dir`) and stored for the others. Call under `startup_lock`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stored = _stored(engine)
    if stored:
        _fetch(stored, data_dir)
        make_local()  # a server certificate for this machine's names, if they differ
        return Shared(False, tuple(sorted(stored)))
    make_local()
    now = utcnow()
    names: list[str] = []
    with engine.begin() as conn:
        for name in FILES:
            path = data_dir / name
            if path.exists():
                conn.execute(
                    text("INSERT INTO cloud_files (name, content, created_at) VALUES (:n, :c, :t)"),
                    {"n": name, "c": path.read_text(), "t": now},
                )
                names.append(name)
    log.info("stored %s in the database for the other Cloud processes", ", ".join(names))
    return Shared(True, tuple(sorted(names)))
