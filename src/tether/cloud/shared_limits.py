"""Rate limits counted once for every Cloud process on one PostgreSQL database.

In scale-out mode (PostgreSQL and NATS) the limits on guesses (failed claims,
sign-ins, failed node authentications, which gate new challenges) must not
multiply with the number of processes behind the balancer. `SharedWindow`
has the interface and the meaning of `limits.Window` (a sliding window of
`limit` events per key), kept in the `shared_limits` table (migration 0009):
one row per (scope, key) holding the times of its recent events.

Each check is one statement, an `INSERT ... ON CONFLICT DO UPDATE` in
autocommit: PostgreSQL locks the row and evaluates the update against its
newest committed version, so two processes counting the same key at once
serialise on that row and never both slip under the limit. Measured in
bench/shared_limits.py (docs/performance.md): about one round trip per check.
PostgreSQL was chosen over NATS key-value because it needs no JetStream on
the NATS server, the database is already required in this mode, and the
upsert is atomic without a compare-and-set retry loop.

Times are wall-clock seconds (`time.time`, injected): processes on different
machines compare them, so their clocks must agree (NTP) to within a second or
so. The high-volume flood guard (node-auth requests per address per minute,
6000 by default) stays per process: its rows would hold thousands of times and
it limits load, not guesses.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

from sqlalchemy import URL, Engine, create_engine, text

from tether.cloud.limits import Clock, Limiter, WindowFactory

PRUNE_EVERY_SECONDS = 60.0
MAX_KEY = 400

# The key's events still inside the window, oldest first.
_RECENT = (
    "ARRAY(SELECT u.e FROM unnest(l.events) WITH ORDINALITY AS u(e, i) "
    "WHERE u.e > CAST(:now AS float8) - CAST(:window AS float8) ORDER BY u.i)"
)
_FITS = f"cardinality({_RECENT}) < :limit"

_HIT = text(
    f"""
    INSERT INTO shared_limits AS l (scope, key, events, counted, expires_at)
    VALUES (:scope, :key, ARRAY[CAST(:now AS float8)], true, :now + :window)
    ON CONFLICT (scope, key) DO UPDATE SET
      counted = {_FITS},
      events = CASE WHEN {_FITS} THEN {_RECENT} || CAST(:now AS float8) ELSE {_RECENT} END,
      expires_at = CASE WHEN {_FITS} THEN :now + :window ELSE l.expires_at END
    RETURNING counted, events[1]
    """  # noqa: S608 (constant fragments; every value is a bound parameter)
)
# Counted whatever the limit says; only the newest `limit` matter afterwards.
_ADD = text(
    f"""
    INSERT INTO shared_limits AS l (scope, key, events, counted, expires_at)
    VALUES (:scope, :key, ARRAY[CAST(:now AS float8)], true, :now + :window)
    ON CONFLICT (scope, key) DO UPDATE SET
      events = ({_RECENT} || CAST(:now AS float8))[
        greatest(1, cardinality({_RECENT}) + 2 - :limit):],
      counted = true,
      expires_at = :now + :window
    """  # noqa: S608 (constant fragments; every value is a bound parameter)
)
_UNDO = text(
    "UPDATE shared_limits SET events = events[1:cardinality(events) - 1] "
    "WHERE scope = :scope AND key = :key"
)
_FORGET = text("DELETE FROM shared_limits WHERE scope = :scope AND key = :key")
_READ = text("SELECT events FROM shared_limits WHERE scope = :scope AND key = :key")
_PRUNE = text("DELETE FROM shared_limits WHERE expires_at < :now")


class SharedWindow(Limiter):
    """`limits.Window` kept in PostgreSQL, for every process at once. Each
    method is one short statement: call it from a worker thread
    (`limits.run`), never on the event loop."""

    blocking = True

    def __init__(
        self, engine: Engine, scope: str, limit: int, window: float, clock: Clock = time.time
    ) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.scope = scope
        self.limit = max(1, limit)
        self.window = window
        self.clock = clock
        self._pruned_at = -math.inf
        self._lock = threading.Lock()

    def _params(self, key: str, now: float) -> dict[str, object]:
        return {
            "scope": self.scope,
            "key": key[:MAX_KEY],
            "now": now,
            "window": self.window,
            "limit": self.limit,
        }

    def _maybe_prune(self, now: float) -> None:
        """Rows of keys quiet for a whole window go, at most once a minute per
        process: a spray of addresses cannot grow the table without limit."""
        with self._lock:
            if now - self._pruned_at < PRUNE_EVERY_SECONDS:
                return
            self._pruned_at = now
        with self.engine.connect() as conn:
            conn.execute(_PRUNE, {"now": now})

    def _wait(self, oldest: float, now: float) -> int:
        return max(1, math.ceil(self.window - (now - oldest)))

    def _recent(self, events: Sequence[float] | None, now: float) -> list[float]:
        return [e for e in events or () if now - e < self.window]

    def hit(self, key: str) -> int:
        now = self.clock()
        self._maybe_prune(now)
        with self.engine.connect() as conn:
            counted, oldest = conn.execute(_HIT, self._params(key, now)).one()
        return 0 if counted else self._wait(float(oldest), now)

    def add(self, key: str) -> None:
        now = self.clock()
        self._maybe_prune(now)
        with self.engine.connect() as conn:
            conn.execute(_ADD, self._params(key, now))

    def undo(self, key: str) -> None:
        with self.engine.connect() as conn:
            conn.execute(_UNDO, self._params(key, 0.0))

    def forget(self, key: str) -> None:
        with self.engine.connect() as conn:
            conn.execute(_FORGET, self._params(key, 0.0))

    def _events(self, key: str, now: float) -> list[float]:
        with self.engine.connect() as conn:
            events = conn.execute(_READ, self._params(key, now)).scalar()
        return self._recent(events, now)

    def retry_after(self, key: str) -> int:
        now = self.clock()
        recent = self._events(key, now)
        return 0 if len(recent) < self.limit else self._wait(recent[0], now)

    def count(self, key: str) -> int:
        return len(self._events(key, self.clock()))


def limits_engine(url: str | URL) -> Engine:
    """An engine of the limits' own: a small pool, so a guessing flood cannot
    take the connections requests need, and no wait for the disk at each
    commit (`synchronous_commit=off`: a crash of PostgreSQL may forget the
    last fraction of a second of counts, which a rate limit can afford)."""
    # No ping before each use (it would double the round trips): after a
    # PostgreSQL restart the first check fails (503, like any request then)
    # and SQLAlchemy drops the whole pool, so the next one reconnects.
    return create_engine(
        url,
        pool_size=5,
        max_overflow=5,
        connect_args={"options": "-c synchronous_commit=off"},
    )


def shared_windows(url: str | URL, clock: Clock = time.time) -> WindowFactory:
    """Windows for `scope` kept in the database at `url` (for LoginLimits,
    AuthLimits and the claim limiter in scale-out mode), on one engine."""
    engine = limits_engine(url)

    def make(scope: str, limit: int, window: float) -> Limiter:
        return SharedWindow(engine, scope, limit, window, clock)

    return make
