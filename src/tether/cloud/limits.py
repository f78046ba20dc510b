"""Rate limits and budgets: the one implementation every Cloud limit uses.

Pure bookkeeping with the clock passed in (`time.monotonic` in the server, a
fake in the tests), so a test can move time instead of sleeping. Each keeps a
bounded number of keys: a spray of addresses or node ids cannot grow memory
without limit.

- `Window`: at most `limit` events per key in a sliding `window` of seconds.
  Callers count an attempt when it *starts* (`hit`), so attempts in flight are
  counted too; 60 concurrent logins cannot all slip under a limit of 10.
  `Limiter` is its interface, also kept by `shared_limits.SharedWindow` (the
  same window in PostgreSQL, for every Cloud process at once); a
  `WindowFactory` makes one of either kind, and `run` calls a limiter's
  method, in a worker thread when it is `blocking` (asks the database).
- `TokenBucket`: a steady rate with a burst, for per-link frame budgets.
- `address_key`: the key a client address is limited by (IPv6 per /64, since
  one host usually owns a whole /64).
- `LogLimiter`: at most a few log lines per key per interval, with a count of
  what was left out, so one peer cannot fill the disk with log.
- `Budget`: at most `total` units (bytes) held at once across all callers, e.g.
  the relay's inflated answers in flight; no clock, what is held is given back.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

Clock = Callable[[], float]
P = ParamSpec("P")
T = TypeVar("T")

MAX_KEYS = 100_000


class Limiter:
    """At most `limit` events per key within `window` seconds (see `Window`)."""

    limit: int
    window: float
    blocking = False  # True: its methods wait for the database (use `run`)

    def hit(self, key: str) -> int:
        """Count one event for `key` if it is within the limit and return 0;
        else count nothing and return the seconds to wait."""
        raise NotImplementedError

    def add(self, key: str) -> None:
        """Count one event whatever the limit says (a failure that happened)."""
        raise NotImplementedError

    def undo(self, key: str) -> None:
        """Take back the newest event of `key`."""
        raise NotImplementedError

    def forget(self, key: str) -> None:
        raise NotImplementedError

    def retry_after(self, key: str) -> int:
        """Whole seconds until `key` may act again; 0 when it may now."""
        raise NotImplementedError

    def count(self, key: str) -> int:
        raise NotImplementedError


# (scope, limit, window seconds) -> a limiter; scope names it across processes.
WindowFactory = Callable[[str, int, float], Limiter]


def in_memory(clock: Clock = time.monotonic) -> WindowFactory:
    """Windows of this process only (SQLite, or a single process)."""

    def make(scope: str, limit: int, window: float) -> Limiter:
        return Window(limit, window, clock)

    return make


async def run(blocking: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args)`: at once for limits in memory, in a worker thread when
    `blocking` (a shared limit asks the database; never on the event loop)."""
    if not blocking:
        return fn(*args, **kwargs)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kwargs)


class Window(Limiter):
    """At most `limit` events per key within `window` seconds. Thread-safe."""

    def __init__(self, limit: int, window: float, clock: Clock, max_keys: int = MAX_KEYS) -> None:
        self.limit = max(1, limit)
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._events: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> collections.deque[float] | None:
        q = self._events.get(key)
        if q is None:
            return None
        while q and now - q[0] >= self.window:
            q.popleft()
        if not q:
            del self._events[key]
            return None
        return q

    def retry_after(self, key: str) -> int:
        """Whole seconds until `key` may act again; 0 when it may now."""
        now = self.clock()
        with self._lock:
            q = self._recent(key, now)
            if q is None or len(q) < self.limit:
                return 0
            return max(1, math.ceil(self.window - (now - q[0])))

    def hit(self, key: str) -> int:
        """Count one event for `key` if it is within the limit and return 0;
        else count nothing and return the seconds to wait."""
        now = self.clock()
        with self._lock:
            q = self._recent(key, now)
            if q is not None and len(q) >= self.limit:
                return max(1, math.ceil(self.window - (now - q[0])))
            if q is None:
                if len(self._events) >= self.max_keys:
                    self._prune(now)
                q = self._events.setdefault(key, collections.deque())
            q.append(now)
            return 0

    def add(self, key: str) -> None:
        """Count one event whatever the limit says (a failure that happened)."""
        now = self.clock()
        with self._lock:
            if key not in self._events and len(self._events) >= self.max_keys:
                self._prune(now)
            q = self._events.setdefault(key, collections.deque())
            q.append(now)
            while len(q) > self.limit:  # older ones no longer change the answer
                q.popleft()

    def undo(self, key: str) -> None:
        """Take back one event of `key` counted by `hit` (an attempt that turned
        out not to count, e.g. a sign-in that succeeded). Only that one: the
        key's other events stay."""
        with self._lock:
            q = self._events.get(key)
            if q:
                q.pop()
                if not q:
                    del self._events[key]

    def forget(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)

    def count(self, key: str) -> int:
        now = self.clock()
        with self._lock:
            q = self._recent(key, now)
            return 0 if q is None else len(q)

    def _prune(self, now: float) -> None:
        for key in list(self._events):
            self._recent(key, now)
        if len(self._events) >= self.max_keys:  # all recent: drop the oldest half
            for key in list(self._events)[: self.max_keys // 2]:
                del self._events[key]


class TokenBucket:
    """`rate` tokens per second up to `burst`. Not thread-safe: one per link,
    used from the event loop."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self._at = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


def address_key(address: str) -> str:
    """The key a client address is counted under: IPv4 as is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class LogLimiter:
    """At most `per_interval` lines per key every `interval` seconds.

    `allow(key)` says whether to log now; when it does after a quiet spell it
    returns how many lines were suppressed, so the next line can say so."""

    def __init__(
        self, per_interval: int, interval: float, clock: Clock, max_keys: int = 10_000
    ) -> None:
        self._window = Window(per_interval, interval, clock, max_keys)
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, int]:
        if self._window.hit(key):
            with self._lock:
                if len(self._suppressed) < 10_000 or key in self._suppressed:
                    self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        with self._lock:
            return True, self._suppressed.pop(key, 0)


class Budget:
    """At most `total` units held at once, shared by all callers. Thread-safe.

    `take(n)` holds n more units if they fit and says whether they did; the
    caller gives back exactly what it took with `give(n)` when done."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.total:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held = max(0, self.held - n)
