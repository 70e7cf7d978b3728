"""A slow, obviously correct model of budget semantics, to check ``stream.budgets`` against.

One event at a time, plain Python ints and dicts: each sliding budget keeps a dict of
per-bucket sums and recomputes its window sum from scratch after every event; each calendar
budget keeps one running sum. Calendar periods come from ``datetime``. No numpy, no numba,
no shared code with the implementation beyond the config models and ``make_alert``.

The rules it implements (the contract of ``stream/budgets.py``):

* money in integer units of 1e-10 USD: an event counts ``min(round(cost * 1e10), 2**62)``;
  a sliding bucket holds at most ``2**62`` units; thresholds are
  ``max(1, round(fraction * round(limit_usd * 1e10)))``;
* per (tenant, budget) a watermark ``wm`` = largest event time seen;
* sliding windows: bucket = ``ts // resolution``; the window is the buckets in
  ``(wm // res - nbuckets, wm // res]``; an event whose bucket is not in it after the
  watermark update is not counted; when the watermark moves, fired levels whose threshold
  is now above the spend are re-armed;
* calendar windows: an event of a later period resets the spend and all levels; an event
  of an earlier period is not counted;
* after each counted event, every level whose threshold the spend reached and that is not
  fired fires: one alert each, levels ascending.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from llmops_stream.stream.core.alerts import Alert, make_alert
from llmops_stream.stream.core.budgets import BudgetConfig, BudgetRule

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CAP = 2**62
MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000

# window -> (bucket resolution ms, buckets per window, window length ms); None = calendar
SLIDING = {
    "1h": (MINUTE, 60, HOUR),
    "24h": (MINUTE, 1440, DAY),
    "7d": (HOUR, 168, 7 * DAY),
    "30d": (HOUR, 720, 30 * DAY),
}


def to_units(cost_usd: float) -> int:
    """USD -> integer units of 1e-10 USD, capped at 2**62."""
    return min(round(cost_usd * 1e10), CAP)


def thresholds(rule: BudgetRule) -> list[int]:
    """Level thresholds (soft ascending, then hard) in units."""
    limit = round(rule.limit_usd * 1e10)
    return [max(1, round(f * limit)) for f in [*sorted(rule.soft), rule.hard]]


def _ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def calendar_period(window: str, ts_ms: int) -> tuple[int, int]:
    """[start, end) in epoch ms of the UTC day or month holding ``ts_ms``."""
    dt = EPOCH + timedelta(milliseconds=ts_ms)
    if window == "day":
        start = datetime(dt.year, dt.month, dt.day, tzinfo=UTC)
        return _ms(start), _ms(start + timedelta(days=1))
    start = datetime(dt.year, dt.month, 1, tzinfo=UTC)
    if dt.month == 12:
        end = datetime(dt.year + 1, 1, 1, tzinfo=UTC)
    else:
        end = datetime(dt.year, dt.month + 1, 1, tzinfo=UTC)
    return _ms(start), _ms(end)


@dataclass
class RefSlot:
    """State of one (tenant, budget)."""

    seen: bool = False
    wm: int = 0
    buckets: dict[int, int] = field(default_factory=dict)  # sliding
    period: tuple[int, int] = (0, 0)  # calendar [start, end)
    total: int = 0  # calendar
    fired: set[int] = field(default_factory=set)


class ReferenceBudgets:
    """Budget tracker, one event at a time."""

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self.slots: dict[tuple[str, str], RefSlot] = {}

    def spend(self, rule: BudgetRule, slot: RefSlot) -> int:
        """The budget's spend in units, recomputed from the stored buckets."""
        if rule.window not in SLIDING:
            return slot.total
        res, nb, _ = SLIDING[rule.window]
        wb = slot.wm // res
        return sum(v for b, v in slot.buckets.items() if wb - nb < b <= wb)

    @staticmethod
    def status(rule: BudgetRule, spend: int) -> str:
        thr = thresholds(rule)
        if spend >= thr[-1]:
            return "exceeded"
        if rule.soft and spend >= thr[0]:
            return "warn"
        return "ok"

    def process(self, tenant: str, ts: int, cost: float, app: str, event_id: str) -> list[Alert]:
        """Count one event; return the alerts it causes."""
        out: list[Alert] = []
        amount = to_units(cost)
        for rule in self.config.rules_for(tenant):
            slot = self.slots.setdefault((tenant, rule.budget_id), RefSlot())
            thr = thresholds(rule)
            if rule.window in SLIDING:
                res, nb, length = SLIDING[rule.window]
                if not slot.seen:
                    slot.seen = True
                    slot.wm = ts
                elif ts > slot.wm:
                    slot.wm = ts
                    now = self.spend(rule, slot)
                    slot.fired = {k for k in slot.fired if now >= thr[k]}
                b = ts // res
                if b <= slot.wm // res - nb:
                    continue
                slot.buckets[b] = min(slot.buckets.get(b, 0) + amount, CAP)
                key = slot.wm // res
                window = (slot.wm - length, slot.wm)
            else:
                period = calendar_period(rule.window, ts)
                if not slot.seen or period[0] > slot.period[0]:
                    slot.seen = True
                    slot.period = period
                    slot.total = 0
                    slot.fired = set()
                elif period[0] < slot.period[0]:
                    continue
                slot.wm = max(slot.wm, ts)
                slot.total += amount
                key = slot.period[0]
                window = slot.period
            spend = self.spend(rule, slot)
            levels = [*sorted(rule.soft), rule.hard]
            for k, fraction in enumerate(levels):
                if spend >= thr[k] and k not in slot.fired:
                    slot.fired.add(k)
                    kind = "hard" if k == len(levels) - 1 else "soft"
                    out.append(
                        make_alert(
                            type="budget",
                            severity="critical" if kind == "hard" else "warning",
                            tenant_id=tenant,
                            app=app,
                            metric="spend_usd",
                            value=spend / 10**10,
                            threshold=fraction * rule.limit_usd,
                            window_start_ms=window[0],
                            window_end_ms=window[1],
                            id_parts=(tenant, rule.budget_id, fraction, key),
                            details={
                                "budget_id": rule.budget_id,
                                "window": rule.window,
                                "limit_usd": rule.limit_usd,
                                "level": fraction,
                                "kind": kind,
                                "event_id": event_id,
                                "status": self.status(rule, spend),
                            },
                        )
                    )
        return out

    def states(self, tenants: set[str] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """State of every (tenant, budget) seen (or only of ``tenants``), keyed by ids."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for (tenant, budget_id), slot in self.slots.items():
            if tenants is not None and tenant not in tenants:
                continue
            rule = next(r for r in self.config.rules_for(tenant) if r.budget_id == budget_id)
            spend = self.spend(rule, slot)
            limit = round(rule.limit_usd * 1e10)
            sliding = SLIDING.get(rule.window)
            start = slot.wm - sliding[2] if sliding else slot.period[0]
            out[(tenant, budget_id)] = {
                "tenant_id": tenant,
                "budget_id": budget_id,
                "window": rule.window,
                "limit_usd": rule.limit_usd,
                "spend_usd": spend / 10**10,
                "remaining_usd": (limit - spend) / 10**10,
                "status": self.status(rule, spend),
                "as_of_ms": slot.wm,
                "period_start_ms": start,
            }
        return out
