"""In-memory metric storage: one ring buffer per dimension plus a per-minute tier.

Tier 0 holds one value per `update every` seconds for `history seconds`
(default 3600 points); gaps are NaN. Tier 1 holds, per wall-clock minute, the
min, max and average of tier 0 for 24 hours (1440 slots, 4-byte floats).
Slots are addressed by time (`t // step % size`), so writing never shifts data
and a query knows which slots are stale by comparing with the last write.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

NAN = float("nan")
MINUTE = 60
MINUTE_SLOTS = 24 * 60


@dataclass
class Dimension:
    id: str
    name: str
    values: array[float]
    # Per-minute tier: min, max, average of the seconds in that minute.
    m_min: array[float]
    m_max: array[float]
    m_avg: array[float]
    # The minute being accumulated.
    acc_minute: int = -1
    acc_sum: float = 0.0
    acc_count: int = 0
    acc_min: float = math.inf
    acc_max: float = -math.inf
    last_value: float = NAN


@dataclass
class Chart:
    id: str
    title: str
    units: str
    family: str
    context: str
    chart_type: str  # line | area | stacked, as in Netdata
    update_every: int
    size: int
    priority: int = 1000
    dimensions: list[Dimension] = field(default_factory=list)
    first_t: int = 0  # first timestamp ever written
    last_t: int = 0  # last timestamp written (0 = never)
    last_minute: int = -1  # last minute flushed into tier 1

    @property
    def type(self) -> str:
        return self.id.split(".", 1)[0]

    def dimension(self, dim_id: str) -> Dimension | None:
        for d in self.dimensions:
            if d.id == dim_id:
                return d
        return None

    def add_dimension(self, dim_id: str, name: str | None = None) -> Dimension:
        dim = Dimension(
            id=dim_id,
            name=name or dim_id,
            values=array("d", [NAN]) * self.size,
            m_min=array("f", [NAN]) * MINUTE_SLOTS,
            m_max=array("f", [NAN]) * MINUTE_SLOTS,
            m_avg=array("f", [NAN]) * MINUTE_SLOTS,
        )
        self.dimensions.append(dim)
        return dim

    # -- writing ---------------------------------------------------------

    def store(self, t: int, values: dict[str, float]) -> None:
        """Write one collection at time `t` (a multiple of update_every)."""
        step = self.update_every
        if self.last_t and t <= self.last_t:
            return  # the clock went back or a duplicate tick: keep the first value
        for dim_id in values:
            if self.dimension(dim_id) is None:
                self.add_dimension(dim_id)
        if self.last_t:
            # Mark skipped slots as gaps (at most one full ring).
            gap_end = min(t, self.last_t + step * (self.size + 1))
            for missing in range(self.last_t + step, gap_end, step):
                slot = (missing // step) % self.size
                for d in self.dimensions:
                    d.values[slot] = NAN
        else:
            self.first_t = t
        slot = (t // step) % self.size
        minute = t // MINUTE
        for d in self.dimensions:
            v = values.get(d.id, NAN)
            d.values[slot] = v
            d.last_value = v
            if d.acc_minute != minute:
                self._flush_minute(d)
                d.acc_minute = minute
            if v == v:  # not NaN
                d.acc_sum += v
                d.acc_count += 1
                if v < d.acc_min:
                    d.acc_min = v
                if v > d.acc_max:
                    d.acc_max = v
        self.last_t = t

    @staticmethod
    def _flush_minute(d: Dimension) -> None:
        if d.acc_minute >= 0:
            slot = d.acc_minute % MINUTE_SLOTS
            if d.acc_count:
                d.m_min[slot] = d.acc_min
                d.m_max[slot] = d.acc_max
                d.m_avg[slot] = d.acc_sum / d.acc_count
            else:
                d.m_min[slot] = d.m_max[slot] = d.m_avg[slot] = NAN
        d.acc_sum = 0.0
        d.acc_count = 0
        d.acc_min = math.inf
        d.acc_max = -math.inf

    # -- reading ---------------------------------------------------------

    @property
    def oldest_t(self) -> int:
        """Oldest timestamp still held at per-second resolution."""
        if not self.last_t:
            return 0
        return max(self.first_t, self.last_t - (self.size - 1) * self.update_every)

    def value_at(self, d: Dimension, t: int) -> float:
        if not self.last_t or t > self.last_t or t < self.oldest_t:
            return NAN
        return d.values[(t // self.update_every) % self.size]

    def minute_value(self, d: Dimension, minute: int, group: str) -> float:
        """A tier-1 value; the current minute comes from the accumulator."""
        if minute == d.acc_minute:
            if not d.acc_count:
                return NAN
            if group == "min":
                return d.acc_min
            if group == "max":
                return d.acc_max
            return d.acc_sum / d.acc_count
        last_minute = self.last_t // MINUTE
        if not self.last_t or minute > last_minute or minute <= last_minute - MINUTE_SLOTS:
            return NAN
        if minute < self.first_t // MINUTE:
            return NAN
        slot = minute % MINUTE_SLOTS
        if group == "min":
            return d.m_min[slot]
        if group == "max":
            return d.m_max[slot]
        return d.m_avg[slot]


def aggregate(values: Sequence[float], group: str) -> float | None:
    """Combine the values of one output point; None when all are gaps."""
    real = [v for v in values if v == v]
    if not real:
        return None
    if group == "min":
        return min(real)
    if group == "max":
        return max(real)
    if group == "sum":
        return sum(real)
    return sum(real) / len(real)


GROUPS = ("average", "min", "max", "sum")


class QueryError(ValueError):
    """A data query with a bad parameter; the message names it."""


@dataclass
class QueryResult:
    chart: Chart
    dimensions: list[Dimension]
    after: int
    before: int
    view_update_every: int
    tier: int
    # rows newest first: (timestamp, [value or None per dimension])
    rows: list[tuple[int, list[float | None]]]


def query(
    chart: Chart,
    now: int,
    after: int = -600,
    before: int = 0,
    points: int = 0,
    group: str = "average",
    dimensions: Iterable[str] | None = None,
) -> QueryResult:
    """Netdata v1 semantics: `before <= 0` is relative to now, `after <= 0`
    relative to `before` (after clamping `before` to the newest value); the
    window is (after, before]. `points` rows are
    returned when the window holds at least that many collected values; each
    row aggregates `group` over consecutive values and is stamped with the
    time of its newest value."""
    if group not in GROUPS:
        raise QueryError(f"group={group!r} is not one of {', '.join(GROUPS)}")
    if points < 0:
        raise QueryError("points must be 0 (all) or a positive number")
    if before <= 0:
        before = now + before
    if chart.last_t:
        # Not past the newest value, so "the last N seconds" holds N values
        # even when this second's collection has not run yet.
        before = min(before, chart.last_t)
    if after <= 0:
        after = before + after
    if after >= before:
        raise QueryError(f"after ({after}) must be earlier than before ({before})")
    dims = chart.dimensions
    if dimensions:
        wanted = {x.strip() for x in dimensions if x.strip()}
        dims = [d for d in chart.dimensions if d.id in wanted or d.name in wanted]
        if not dims:
            raise QueryError(f"none of the dimensions {sorted(wanted)} exist on {chart.id}")

    # Per-second tier when it covers the start of the window, else per-minute.
    # (Only once the ring has wrapped: a young chart answers at full resolution.)
    use_minutes = (
        bool(chart.last_t)
        and chart.oldest_t > chart.first_t
        and after + chart.update_every < chart.oldest_t
    )
    step = MINUTE if use_minutes else chart.update_every
    last = before - before % step
    first = after - after % step + step  # first slot strictly after `after`
    if first > last or not chart.last_t:
        return QueryResult(chart, dims, after, before, step, int(use_minutes), [])
    if not use_minutes:
        first = max(first, chart.oldest_t - chart.oldest_t % step)
    count = (last - first) // step + 1
    if points <= 0 or points >= count:
        per_point = 1
        points = count
    else:
        per_point = count // points
    rows: list[tuple[int, list[float | None]]] = []
    for i in range(points):
        end = last - i * per_point * step
        stamps = range(end - (per_point - 1) * step, end + 1, step)
        row: list[float | None] = []
        for d in dims:
            if use_minutes:
                vals = [chart.minute_value(d, s // MINUTE, group) for s in stamps]
            else:
                vals = [chart.value_at(d, s) for s in stamps]
            row.append(aggregate(vals, group))
        rows.append((end, row))
    oldest = last - (points * per_point - 1) * step
    return QueryResult(chart, dims, oldest, last, per_point * step, int(use_minutes), rows)


class Store:
    """All charts of this agent, by id, in creation order."""

    def __init__(self, history_seconds: int = 3600, update_every: int = 1) -> None:
        self.update_every = update_every
        self.size = max(2, history_seconds // update_every)
        self.charts: dict[str, Chart] = {}

    def chart(
        self,
        chart_id: str,
        title: str,
        units: str,
        family: str,
        dimensions: Iterable[str | tuple[str, str]] = (),
        context: str | None = None,
        chart_type: str = "line",
        priority: int = 1000,
    ) -> Chart:
        """Get or create a chart; dimensions are ids or (id, name) pairs."""
        existing = self.charts.get(chart_id)
        if existing is not None:
            return existing
        c = Chart(
            id=chart_id,
            title=title,
            units=units,
            family=family,
            context=context or chart_id,
            chart_type=chart_type,
            update_every=self.update_every,
            size=self.size,
            priority=priority,
        )
        for dim in dimensions:
            if isinstance(dim, tuple):
                c.add_dimension(dim[0], dim[1])
            else:
                c.add_dimension(dim)
        self.charts[chart_id] = c
        return c

    def dimension_count(self) -> int:
        return sum(len(c.dimensions) for c in self.charts.values())
