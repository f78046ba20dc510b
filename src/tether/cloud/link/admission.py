"""Admission: how fast this Cloud process takes links, and what it asks of a
fleet that comes back all at once.

- `note_linked()` counts each HelloAck; `rate()` is the best rate over
  RATE_WINDOW seconds seen so far (links a second), so a stopping Cloud knows
  how fast it can take its fleet back: the links that arrived a second, or
  what the process CPU spent on them says it could take (CAPACITY_SHARE of
  links per CPU second), whichever is more. The arrival rate alone only ever
  measured the spread it was asked to come back over (a storm paced at 120
  links a second while the Cloud used 60 % of a core), so a faster Cloud never
  shortened its own spread.
- `restart_spread(n)`: the window over which a stopping Cloud asks its `n`
  links to come back (each `Disconnect` names a delay drawn from it): the
  time this Cloud needs to take `n` links at its measured rate (or
  DEFAULT_RATE before it measured one), so reconnects arrive about as fast as
  they can be served, with no queue to build waves from.
- `begin()` counts a link from its upgrade until its `Pending.done()` (at its
  HelloAck, or when the handshake fails);
  `refusal()` is the `Retry-After` to answer an upgrade with while more than
  `max_pending` are in that state (the Cloud is saturated: more would only
  queue and time out).

No I/O; time and CPU time come from the injected clocks.
"""

from __future__ import annotations

import math
import time
from collections import deque

from tether.cloud.limits import Clock

RATE_WINDOW = 5.0
# Links a second assumed before any were measured: what one process takes with
# resume tokens on two cores (docs/performance.md, reconnect storm).
DEFAULT_RATE = 500.0
MIN_SPREAD = 2.0
# The earliest a restart's Disconnect asks a link back: about the time a
# Cloud takes to stop and start again on this machine (1.3 s and 2.6 s when
# quiet). Sooner, the fleet finds the port closed and backs off exponentially.
RESTART_FLOOR = 4.0
MAX_SPREAD = 60.0
MAX_PENDING = 1000
# The share of the CPU-derived capacity asked of a returning fleet: headroom
# for the rest of the process's work and for other processes on the machine.
CAPACITY_SHARE = 0.8


class Admission:
    def __init__(
        self,
        clock: Clock = time.monotonic,
        max_pending: int = MAX_PENDING,
        cpu_clock: Clock = time.process_time,
    ) -> None:
        self.clock = clock
        self.cpu_clock = cpu_clock  # this process's CPU seconds (all threads)
        self.max_pending = max_pending
        self.pending = 0
        self.refused = 0
        self._recent: deque[tuple[float, float]] = deque()  # (time, CPU time) per link
        self._best = 0.0

    def note_linked(self) -> None:
        now, cpu = self.clock(), self.cpu_clock()
        self._recent.append((now, cpu))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        n = len(self._recent)
        if n >= 50:  # a rate from a handful of links means nothing
            arrived = n / RATE_WINDOW
            spent = cpu - self._recent[0][1]
            capacity = CAPACITY_SHARE * (n - 1) / spent if spent > 0 else 0.0
            # Capped by what was seen, so a burst measured in a few milliseconds
            # of CPU cannot ask a fleet back faster than four times its arrival.
            self._best = max(self._best, arrived, min(capacity, 4 * arrived))

    def rate(self) -> float:
        """The best measured links per second, 0 before enough were seen."""
        return self._best

    def restart_spread(self, n: int) -> float:
        rate = self._best or DEFAULT_RATE  # measured, else the assumption
        return max(MIN_SPREAD, min(MAX_SPREAD, n / rate))

    def begin(self) -> Pending:
        """One more handshake in flight, until its `Pending.done()`."""
        self.pending += 1
        return Pending(self)

    def refusal(self) -> int | None:
        """Seconds to ask an upgrade to wait (Retry-After), None to admit it."""
        if self.pending < self.max_pending:
            return None
        self.refused += 1
        # Enough time for the links already in to get through at the measured rate.
        rate = max(self._best, DEFAULT_RATE / 4)
        return max(1, math.ceil(self.pending / rate))


class Pending:
    """One handshake in flight; `done()` (idempotent) takes it off the count."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def done(self) -> None:
        if self._admission is not None:
            self._admission.pending -= 1
            self._admission = None
