"""The decisions of reachability alerting, free of I/O: every time is passed in
(epoch seconds), so tests drive them with a fake clock.

- The grace of a node: its own override, else the longest of its rooms'
  overrides (no room is paged earlier than it asked), else the Space's default.
- When an offline node becomes due: offline time + grace; a planned stop with
  an expected return: expected return + grace; a link the Cloud itself closed
  (restart, dead process): not before this Cloud process has been up for a
  grace, so agents reconnecting after a restart are never "down".
- Flapping: at most `limit` notifications per node per window; the rest are
  held and counted into one summary when the window ends.
- Retries: exponential backoff, capped.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.protocol import states

SEVERITY_CRITICAL = "critical"
SEVERITY_WARNING = "warning"
SEVERITIES = (SEVERITY_WARNING, SEVERITY_CRITICAL)
REACHABILITY = "reachability"

MIN_GRACE = 0.0
MAX_GRACE = 7 * 86400.0


def check_grace(value: object) -> float:
    """A grace period from the API: seconds, 0 to 7 days."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("grace_seconds must be a number of seconds")
    if not MIN_GRACE <= value <= MAX_GRACE:  # compared before float(): no overflow
        raise ValueError(f"grace_seconds must be between 0 and {MAX_GRACE:g} (7 days)")
    return float(value)


def grace_for(
    space_default: float | None, room_graces: list[float], node_grace: float | None, fallback: float
) -> float:
    """The grace of one node: node override > longest room override > Space > fallback."""
    if node_grace is not None:
        return node_grace
    if room_graces:
        return max(room_graces)
    if space_default is not None:
        return space_default
    return fallback


def watches(cause_code: str) -> bool:
    """Whether an offline node with this cause is watched at all (a removed
    node is gone, not down)."""
    return cause_code != states.CAUSE_REMOVED


def due_at(offline_at: float, grace: float, expected_back_seconds: float | None) -> float:
    """When an offline node raises its alert unless it returns first."""
    if expected_back_seconds is not None:
        return offline_at + max(expected_back_seconds, 0.0) + grace
    return offline_at + grace


def effective_due(due: float, cause_code: str, grace: float, process_started: float) -> float:
    """The due time as this process sees it: after a Cloud-side close, agents
    get a full grace from when this process started to come back."""
    if cause_code == states.CAUSE_CLOUD_CLOSED:
        return max(due, process_started + grace)
    return due


def severity(cause_code: str) -> str:
    """A node that said goodbye and did not return is a warning; a lost link critical."""
    return SEVERITY_WARNING if cause_code == states.CAUSE_GOODBYE else SEVERITY_CRITICAL


@dataclass(frozen=True)
class FlapState:
    window_started: float
    sent: int
    held: int


def flap_decision(
    state: FlapState | None, now: float, limit: int, window: float
) -> tuple[bool, FlapState, int]:
    """Whether one more notification for a node may go out now, the new state,
    and how many held notifications of a window that just ended to summarise."""
    ended = 0
    if state is None or now >= state.window_started + window:
        ended = 0 if state is None else state.held
        state = FlapState(now, 0, 0)
    if state.sent < limit:
        return True, FlapState(state.window_started, state.sent + 1, state.held), ended
    return False, FlapState(state.window_started, state.sent, state.held + 1), ended


def summary_due(state: FlapState, now: float, window: float) -> bool:
    """A window ended with notifications held back (the node stopped
    flapping): time for their summary."""
    return state.held > 0 and now >= state.window_started + window


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before retry number `attempts` (1 = after the first failure)."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))
