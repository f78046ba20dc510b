"""Per-node budgets for the frames an agent sends of its own accord.

The Cloud asks for query answers, so those cost it nothing it did not choose.
Everything else a node sends (alerts, node updates, errors, answers to
queries the Cloud no longer waits for) makes the Cloud decode, log or write a
row; one node flooding them must not slow the relays of the others, fill the
log or the database. Each kind has a token bucket (a steady rate and a burst),
and these frames share a byte bucket as well:

| kind | rate | burst | what the real agent sends |
|---|---:|---:|---|
| `alert` | 5/s | 500 | one per alert status change (hysteresis), a few per check interval |
| `node_update` | 1/s | 20 | none today |
| `error` (without a query id) | 1/s | 20 | none today |
| `stale_response` (answer to a query not in flight) | 20/s | 500 | late answers (timeouts) |
| bytes of alert/node_update/error frames | 64 KiB/s | 1 MiB | under 1 KiB a frame |

A frame over its budget is dropped and counted. More than `MAX_DROPS` drops
within `DROP_WINDOW` seconds closes the link with 4008 (over budget) after a
`Disconnect` saying to come back after `RECONNECT_AFTER` seconds; until then
the Cloud refuses that node's link (HTTP 429 with `Retry-After`). The budget
belongs to the node, not the connection: reconnecting does not refill it.

Pure bookkeeping with the clock passed in (tested with a fake clock).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass
from typing import Final

from tether.cloud.limits import Clock, TokenBucket, Window
from tether.protocol.link import OVER_BUDGET_RECONNECT_SECONDS


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float


BUDGETS: Final[dict[str, Rate]] = {
    "alert": Rate(5.0, 500.0),
    "node_update": Rate(1.0, 20.0),
    "error": Rate(1.0, 20.0),
    "stale_response": Rate(20.0, 500.0),
}
BYTES: Final = Rate(64 * 1024.0, 1024 * 1024.0)
# Kinds whose bytes count against BYTES (stale answers may legitimately be big;
# their count is bounded by the queries the Cloud sent).
BYTE_KINDS: Final = frozenset({"alert", "node_update", "error"})
MAX_DROPS: Final = 100
DROP_WINDOW: Final = 10.0
RECONNECT_AFTER: Final = OVER_BUDGET_RECONNECT_SECONDS


class Verdict(enum.Enum):
    OK = "ok"  # handle the frame
    DROP = "drop"  # drop it
    CLOSE = "close"  # drop it and close the link: over budget for too long


class LinkBudget:
    """The budgets of one node. Not thread-safe: used from the event loop."""

    def __init__(
        self,
        clock: Clock,
        budgets: dict[str, Rate] = BUDGETS,
        byte_rate: Rate = BYTES,
        max_drops: int = MAX_DROPS,
        drop_window: float = DROP_WINDOW,
        reconnect_after: float = RECONNECT_AFTER,
    ) -> None:
        self.clock = clock
        self.buckets = {k: TokenBucket(r.per_second, r.burst, clock) for k, r in budgets.items()}
        self.bytes = TokenBucket(byte_rate.per_second, byte_rate.burst, clock)
        self._drops = Window(max_drops, drop_window, clock, max_keys=1)
        self.reconnect_after = reconnect_after
        self.dropped: Counter[str] = Counter()
        self.penalty_until = 0.0
        self.last_used = clock()

    def admit(self, kind: str, size: int) -> Verdict:
        """Whether to handle one frame of `kind` and `size` bytes."""
        self.last_used = self.clock()
        bucket = self.buckets[kind]
        if bucket.take() and (kind not in BYTE_KINDS or self._take_bytes(size)):
            return Verdict.OK
        self.dropped[kind] += 1
        if self._drops.hit("drops"):  # the window is already full of drops
            return Verdict.CLOSE
        return Verdict.DROP

    def _take_bytes(self, size: int) -> bool:
        # A frame bigger than the whole burst could never pass: count it as the burst.
        return self.bytes.take(min(float(size), self.bytes.burst))

    def punish(self) -> float:
        """The link is being closed over budget: refuse the node for a while.
        Returns the seconds it should stay away."""
        self.penalty_until = self.clock() + self.reconnect_after
        self._drops.forget("drops")
        return self.reconnect_after

    def retry_after(self) -> int:
        """Whole seconds the node must still stay away; 0 when it may link."""
        left = self.penalty_until - self.clock()
        return max(1, math.ceil(left)) if left > 0 else 0

    def forgettable(self, idle_seconds: float = 600.0) -> bool:
        """Unused for a while and not refusing the node: keeping it changes nothing
        that a fresh budget would not do (its buckets have refilled)."""
        now = self.clock()
        return now >= self.penalty_until and now - self.last_used >= idle_seconds

    def take_dropped(self) -> Counter[str]:
        """The drops counted since the last call."""
        out, self.dropped = self.dropped, Counter()
        return out
