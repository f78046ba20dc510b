"""A planned stop: `tether-cli shutdown-agent --reason upgrade --back-in 10m`.

The control server parses the command (`parse`) and keeps the plan for the
agent (`plan`); the link's shutdown hook (tether.agent.aclk) sends it in its
Goodbye: the reason and the expected return in seconds. The Cloud shows
"planned: upgrade, expected back at 14:05" and raises no reachability alert
before that time plus its grace.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any, Final

from tether.protocol.frames import GOODBYE_REASONS

# What an operator may give (unclaim is the agent's own; other covers the rest).
REASONS: Final = tuple(r for r in GOODBYE_REASONS if r != "unclaim")
MAX_BACK_IN: Final = 30 * 86400.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class PlannedStop:
    reason: str
    back_in_seconds: float | None


_plans: weakref.WeakKeyDictionary[Any, PlannedStop] = weakref.WeakKeyDictionary()


def parse_duration(text: str) -> float:
    """ "90", "90s", "10m", "2h", "1d" -> seconds (at most 30 days)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"--back-in {text!r}: give a duration like 90s, 10m, 2h or 1d")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds > MAX_BACK_IN:
        raise ValueError(f"--back-in {text!r}: at most 30 days")
    return seconds


def parse(args: list[str]) -> PlannedStop:
    """`--reason R --back-in D` (either optional; `--reason=R` too)."""
    reason, back_in = "shutdown", None
    words = []
    for a in args:
        words.extend(a.split("=", 1) if a.startswith("--") and "=" in a else [a])
    it = iter(words)
    for word in it:
        value = next(it, None)
        if value is None:
            raise ValueError(f"{word} needs a value")
        if word == "--reason":
            if value not in REASONS:
                raise ValueError(f"--reason {value!r}: one of {', '.join(REASONS)}")
            reason = value
        elif word == "--back-in":
            back_in = parse_duration(value)
        else:
            raise ValueError(f"unknown option {word!r}; use --reason and --back-in")
    return PlannedStop(reason, back_in)


def plan(agent: object, stop: PlannedStop) -> None:
    _plans[agent] = stop


def planned_for(agent: object) -> PlannedStop | None:
    return _plans.get(agent)


def describe(stop: PlannedStop) -> str:
    out = f"planned stop: {stop.reason}"
    if stop.back_in_seconds is not None:
        out += f", expected back in {stop.back_in_seconds:g} s"
    return out
