"""Reconnect delays: exponential (base 2), capped, with jitter, honouring the Cloud.

Attempt n (from 0) waits d = min(max, base * 2**n), then subtracts a random
part of up to half of it: delay = d - uniform(0, d/2), so the delay lies in
[d/2, d]. Subtracting keeps the cap a true upper bound while still spreading a
crowd of agents that lost the same Cloud at the same moment. A delay sent by
the Cloud is a floor: the agent never comes back sooner than asked.
"""

from __future__ import annotations

import random
from typing import Protocol


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


class Backoff:
    def __init__(
        self, base_seconds: float = 1.0, max_seconds: float = 300.0, rng: _Uniform | None = None
    ) -> None:
        if base_seconds <= 0 or max_seconds < base_seconds:
            raise ValueError("backoff needs 0 < base_seconds <= max_seconds")
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.attempts = 0
        self._rng: _Uniform = rng if rng is not None else random.SystemRandom()

    def next_delay(self, server_hint: float | None = None) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** min(self.attempts, 62))
        self.attempts += 1
        delay = ceiling - self._rng.uniform(0.0, ceiling / 2.0)
        if server_hint is not None and server_hint > delay:
            # The Cloud's delay is a floor; add a little jitter above it so a
            # whole fleet told "come back in 30 s" does not return in one tick.
            delay = server_hint + self._rng.uniform(0.0, min(server_hint, self.max_seconds) / 10)
        return delay

    def reset(self) -> None:
        """Forget past failures, after a link that stayed up long enough."""
        self.attempts = 0
