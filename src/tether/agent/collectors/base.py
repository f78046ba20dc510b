"""What every collector shares: the store and counter-to-rate conversion.
The host's files are read through `tether.agent.host`, never by path here."""

from __future__ import annotations

from tether.agent.storage import NAN, Store


class Collector:
    name = "collector"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._prev: dict[str, tuple[float, float]] = {}

    def collect(self, t: int) -> None:
        raise NotImplementedError

    def rate(self, key: str, counter: float, now: float, scale: float = 1.0) -> float:
        """Per-second increase of a monotonic counter; NaN on the first reading
        and when the counter wraps or resets."""
        prev = self._prev.get(key)
        self._prev[key] = (counter, now)
        if prev is None or now <= prev[1] or counter < prev[0]:
            return NAN
        return (counter - prev[0]) / (now - prev[1]) * scale
