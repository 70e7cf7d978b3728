"""A slow, obviously correct model of budget semantics, to check ``stream.core.budgets``.

One event at a time, plain Python ints, dicts and ``datetime``: each sliding budget keeps a
dict of per-bucket sums and recomputes its window sum from scratch; each calendar budget
keeps its current and previous period. No numpy, no numba, no shared code with the
implementation beyond the config models and ``make_alert``.

The rules (the contract of ``stream/core/budgets.py``):

* money in integer units of 1e-10 USD: an event counts ``min(round(cost * 1e10), 2**62)``;
  a sliding bucket holds at most ``2**62`` units; thresholds are
  ``max(1, round(fraction * round(limit_usd * 1e10)))``; a firing level resolves once the
  spend is below ``max(1, threshold - round(hysteresis * limit_units))``;
* every event comes with the stream clock after it (``at``). A budget starts at its first
  event. Before counting an event, the budget is brought up to ``at``: sliding windows hold
  the buckets in ``(at // res - nbuckets, at // res]`` (a budget with buckets expired
  resolves its firing levels the spend is now below); a calendar period that ``at`` left
  ends (its firing levels resolve, reason ``period_end``) and becomes the previous period
  if ``at`` is in the very next one;
* a sliding event whose bucket is outside the window is not counted; a calendar event
  counts in the current period, or in the previous one (a level it makes that period
  reach fires and resolves at once), else not at all;
* after a counted event, every level the spend reached that is not firing fires (levels
  ascending); the episode start is the clock ``at``;
* ``advance(clock)`` brings every budget up to ``clock``, at most once per clock minute.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from llmops_stream.stream.core.alerts import Alert, make_alert
from llmops_stream.stream.core.budget_config import BudgetConfig, BudgetRule
from llmops_stream.stream.core.timeutil import ms_to_iso

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CAP = 2**62
MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000

# window -> (bucket resolution ms, buckets per window, window length ms)
SLIDING = {
    "1h": (MINUTE, 60, HOUR),
    "24h": (MINUTE, 1440, DAY),
    "7d": (HOUR, 168, 7 * DAY),
    "30d": (HOUR, 720, 30 * DAY),
}


def to_units(cost_usd: float) -> int:
    """USD -> integer units of 1e-10 USD, capped at 2**62."""
    return min(round(cost_usd * 1e10), CAP)


def _ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def period_of(window: str, ts: int) -> tuple[int, int]:
    """Calendar period [start, end) ms of ``ts`` (UTC) for ``day`` or ``month``."""
    dt = EPOCH + timedelta(milliseconds=ts)
    if window == "day":
        start = datetime(dt.year, dt.month, dt.day, tzinfo=UTC)
        return _ms(start), _ms(start + timedelta(days=1))
    start = datetime(dt.year, dt.month, 1, tzinfo=UTC)
    nxt = datetime(dt.year + dt.month // 12, dt.month % 12 + 1, 1, tzinfo=UTC)
    return _ms(start), _ms(nxt)


@dataclass
class Slot:
    tenant: str
    rule: BudgetRule
    thresholds: list[int]
    resolve_below: list[int]
    init: bool = False
    clock: int = 0
    spend: int = 0
    buckets: dict[int, int] = field(default_factory=dict)
    firing: dict[int, int] = field(default_factory=dict)  # level -> episode start (clock)
    period: tuple[int, int] = (0, 0)
    prev: tuple[int, int] = (0, 0)
    prev_spend: int = 0
    prev_reached: set[int] = field(default_factory=set)

    @property
    def sliding(self) -> bool:
        return self.rule.window in SLIDING

    def window_sum(self) -> int:
        return sum(self.buckets.values())


class ReferenceBudgets:
    """Budget state per (tenant, budget); see the module doc."""

    def __init__(self, config: BudgetConfig, hysteresis: float = 0.05) -> None:
        self.config = config
        self.hysteresis = hysteresis
        self.slots: dict[str, list[Slot]] = {}  # tenant -> slots, in first-event order
        self.swept_minute: int | None = None
        self.late = 0

    def _slots_of(self, tenant: str) -> list[Slot]:
        if tenant not in self.slots:
            out = []
            for rule in self.config.rules_for(tenant):
                limit = round(rule.limit_usd * 1e10)
                thr = [max(1, round(f * limit)) for f in [*sorted(rule.soft), rule.hard]]
                hyst = round(self.hysteresis * limit)
                out.append(Slot(tenant, rule, thr, [max(1, t - hyst) for t in thr]))
            self.slots[tenant] = out
        return self.slots[tenant]

    # ---- alerts

    def _alert(
        self, s: Slot, k: int, status: str, spend: int, episode: int, period: tuple[int, int],
        clock: int, reason: str = "", event_id: str = "", app: str = "",
    ) -> Alert:  # fmt: skip
        rule = s.rule
        levels = [*sorted(rule.soft), rule.hard]
        kind = "hard" if k == len(levels) - 1 else "soft"
        details: dict[str, Any] = {
            "budget_id": rule.budget_id,
            "window": rule.window,
            "limit_usd": rule.limit_usd,
            "level": levels[k],
            "kind": kind,
            "status": self._status(s, spend),
            "episode_start": ms_to_iso(episode),
        }
        if status == "firing" and event_id:
            details["event_id"] = event_id
        if status == "resolved":
            details["reason"] = reason
            details["resolve_below_usd"] = s.resolve_below[k] / 10**10
        if s.sliding:
            start, end = clock - SLIDING[rule.window][2], clock
        else:
            start, end = period
        return make_alert(
            type="budget",
            severity="critical" if kind == "hard" else "warning",
            tenant_id=s.tenant,
            app=app,
            metric="spend_usd",
            value=spend / 10**10,
            threshold=levels[k] * rule.limit_usd,
            window_start_ms=start,
            window_end_ms=end,
            id_parts=(s.tenant, rule.budget_id, levels[k], 0 if s.sliding else period[0], episode),
            details=details,
            status=status,
            emitted_at_ms=clock,
        )

    @staticmethod
    def _status(s: Slot, spend: int) -> str:
        if spend >= s.thresholds[-1]:
            return "exceeded"
        if len(s.thresholds) > 1 and spend >= s.thresholds[0]:
            return "warn"
        return "ok"

    # ---- time

    def _bring_up(self, s: Slot, clock: int) -> list[Alert]:
        if clock <= s.clock:
            return []
        s.clock = clock
        out = []
        if s.sliding:
            res, nb, _ = SLIDING[s.rule.window]
            cb = clock // res
            old = dict(s.buckets)
            s.buckets = {b: v for b, v in s.buckets.items() if b > cb - nb}
            if s.buckets == old:
                return []
            s.spend = s.window_sum()
            for k in sorted(s.firing):
                if s.spend < s.resolve_below[k]:
                    out.append(
                        self._alert(s, k, "resolved", s.spend, s.firing.pop(k), (0, 0), clock,
                                    reason="below_level")
                    )  # fmt: skip
            return out
        if clock < s.period[1]:
            return []
        for k in sorted(s.firing):
            out.append(
                self._alert(s, k, "resolved", s.spend, s.firing[k], s.period, clock,
                            reason="period_end")
            )  # fmt: skip
        new = period_of(s.rule.window, clock)
        if new[0] == s.period[1]:
            s.prev, s.prev_spend = s.period, s.spend
            s.prev_reached = {k for k, t in enumerate(s.thresholds) if s.spend >= t}
        else:
            s.prev, s.prev_spend, s.prev_reached = period_of(s.rule.window, new[0] - 1), 0, set()
        s.period, s.spend, s.firing = new, 0, {}
        return out

    def advance(self, clock: int) -> list[Alert]:
        """Every budget up to ``clock`` (at most once per clock minute)."""
        minute = clock // MINUTE
        if self.swept_minute is not None and minute <= self.swept_minute:
            return []
        self.swept_minute = minute
        out = []
        for slots in self.slots.values():
            for s in slots:
                out += self._bring_up(s, clock)
        return out

    # ---- events

    def apply(
        self, tenant: str, ts: int, at: int, cost: float, app: str, event_id: str
    ) -> list[Alert]:
        """Count one event; returns its alerts (resolutions first, then crossings)."""
        units = to_units(cost)
        out: list[Alert] = []
        for s in self._slots_of(tenant):
            if not s.init:
                s.init, s.clock = True, at
                if not s.sliding:
                    s.period = period_of(s.rule.window, at)
                    s.prev = period_of(s.rule.window, s.period[0] - 1)
            else:
                out += self._bring_up(s, at)
            if s.sliding:
                res, nb, _ = SLIDING[s.rule.window]
                b = ts // res
                if b <= at // res - nb:
                    self.late += 1
                    continue
                if units == 0:
                    continue
                s.buckets[b] = min(s.buckets.get(b, 0) + units, CAP)
                s.spend = s.window_sum()
                period = (0, 0)
            elif s.period[0] <= ts < s.period[1]:
                s.spend += units
                period = s.period
            elif s.prev[0] <= ts < s.prev[1]:
                s.prev_spend += units
                for k, t in enumerate(s.thresholds):
                    if k not in s.prev_reached and s.prev_spend >= t:
                        s.prev_reached.add(k)
                        out.append(
                            self._alert(s, k, "firing", s.prev_spend, at, s.prev, at,
                                        event_id=event_id, app=app)
                        )  # fmt: skip
                        out.append(
                            self._alert(s, k, "resolved", s.prev_spend, at, s.prev, at,
                                        reason="period_end")
                        )  # fmt: skip
                continue
            else:
                self.late += 1
                continue
            for k, t in enumerate(s.thresholds):
                if k not in s.firing and s.spend >= t:
                    s.firing[k] = at
                    out.append(
                        self._alert(s, k, "firing", s.spend, at, period, at, event_id=event_id,
                                    app=app)
                    )  # fmt: skip
        return out

    def states(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Current state of every budget: spend, status, as_of and period start."""
        out = {}
        for slots in self.slots.values():
            for s in slots:
                window = SLIDING[s.rule.window][2] if s.sliding else 0
                start = s.clock - window if s.sliding else s.period[0]
                out[(s.tenant, s.rule.budget_id)] = {
                    "spend_usd": s.spend / 10**10,
                    "status": self._status(s, s.spend),
                    "as_of_ms": s.clock,
                    "period_start_ms": start,
                }
        return out

    def previous(self) -> dict[tuple[str, str], float]:
        """Spend (USD) of the previous calendar period of every calendar budget."""
        return {
            (s.tenant, s.rule.budget_id): s.prev_spend / 10**10
            for slots in self.slots.values()
            for s in slots
            if not s.sliding
        }
