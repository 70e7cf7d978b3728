"""The budget tracker's state tables as named record dtypes (read by the numba kernels).

One :data:`SLOT` row per (tenant, budget rule), one :data:`RULE` row per rule, one
:data:`ALERT` row per level that fires or resolves in a call. Sliding windows keep their
non-empty buckets in one shared pool (int64[rows, 2]: bucket id, units), each slot owning a
sorted circular queue in it (``q_*`` fields). Money is int64 units of 1e-10 USD; a spend is
two words, ``hi * 2**62 + lo`` with ``0 <= lo < 2**62``, so it never overflows.
"""

from dataclasses import dataclass

import numpy as np

from .budget_config import UNITS_PER_USD, BudgetRule
from .timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE

KIND_SLIDING = 0
KIND_DAY = 1
KIND_MONTH = 2

# window -> (kind, bucket resolution ms, number of buckets, window length ms)
WINDOWS: dict[str, tuple[int, int, int, int]] = {
    "1h": (KIND_SLIDING, MS_PER_MINUTE, 60, MS_PER_HOUR),
    "24h": (KIND_SLIDING, MS_PER_MINUTE, 1440, MS_PER_DAY),
    "7d": (KIND_SLIDING, MS_PER_HOUR, 168, 7 * MS_PER_DAY),
    "30d": (KIND_SLIDING, MS_PER_HOUR, 720, 30 * MS_PER_DAY),
    "day": (KIND_DAY, MS_PER_DAY, 1, MS_PER_DAY),
    "month": (KIND_MONTH, MS_PER_DAY, 1, 0),
}

_I8 = np.int64

SLOT = np.dtype(
    [
        ("tenant", _I8),  # tenant index
        ("rule", _I8),  # row of the rule table
        ("init", _I8),  # 1 once the budget has state (its tenant had a priced event)
        ("clock", _I8),  # stream clock (ms) the slot was last brought up to
        ("hi", _I8),  # spend in the window / current period, two words
        ("lo", _I8),
        ("fired", _I8),  # bit k: level k is firing (sliding) / was reached (calendar)
        ("dirty", _I8),  # 1: changed since its state was last handed out
        # sliding windows
        ("cb", _I8),  # clock bucket: clock // resolution
        ("q_off", _I8),  # queue region start in the pool
        ("q_head", _I8),  # index of the oldest bucket inside the region
        ("q_cnt", _I8),  # stored (non-empty) buckets
        ("q_cap", _I8),  # region size (0 or a power of two)
        ("q_first", _I8),  # oldest and newest stored bucket ids (valid when q_cnt > 0)
        ("q_last", _I8),
        # calendar windows: the current period, and the one before it (late events)
        ("pstart", _I8),
        ("pend", _I8),
        ("prev_start", _I8),
        ("prev_end", _I8),
        ("prev_hi", _I8),
        ("prev_lo", _I8),
        ("prev_fired", _I8),  # levels reached in the previous period
        ("prev_dirty", _I8),
    ]
)
"""State of one (tenant, budget)."""

QUEUE_FIELDS = ("q_off", "q_head", "q_cap")
"""Pool layout fields: rebuilt on restore, zeroed in snapshots (equal states, equal bytes)."""

RULE = np.dtype(
    [
        ("kind", _I8),  # KIND_*
        ("res", _I8),  # bucket resolution, ms (sliding)
        ("nb", _I8),  # buckets per window (sliding)
        ("lev0", _I8),  # first level of the rule in the level tables
        ("nlev", _I8),  # number of levels (soft ascending, then hard)
    ]
)
"""One budget rule, flattened for the kernels."""

FIRE = 0
RESOLVE = 1
REASON_CROSSED = 0  # firing: the spend reached the level
REASON_BELOW = 1  # resolved: the spend fell below the level minus the hysteresis
REASON_PERIOD_END = 2  # resolved: the calendar period ended

ALERT = np.dtype(
    [
        ("event", _I8),  # index of the event in the batch, -1 when time alone moved
        ("slot", _I8),
        ("level", _I8),  # level index within the rule
        ("status", _I8),  # FIRE or RESOLVE
        ("reason", _I8),  # REASON_*
        ("hi", _I8),  # spend at that moment, two words
        ("lo", _I8),
        ("episode", _I8),  # stream clock (ms) when the episode fired: part of the alert id
        ("pstart", _I8),  # calendar period of the level (0 for sliding windows)
        ("pend", _I8),
        ("clock", _I8),  # stream clock (ms) at that moment
    ]
)
"""A level that fired or resolved."""

# meta: small counters shared between the kernels and the tracker
META_USED = 0  # pool rows handed out (live regions + abandoned ones)
META_NSLOTS = 1  # slot rows in use
META_NA = 2  # alert records written by the current call
META_LATE = 3  # (event, budget) pairs too old for their window or period
META_SIZE = 4

MIN_QCAP = 2
MIN_POOL = 1024


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A rule as the tracker needs it (derived once from :class:`BudgetRule`)."""

    budget_id: str
    window: str
    limit_usd: float
    limit_units: int
    levels: tuple[float, ...]  # fractions of the limit, ascending
    thresholds: tuple[int, ...]  # units, ascending
    resolve_below: tuple[int, ...]  # units: a firing level resolves below this
    nsoft: int
    kind: int
    res_ms: int
    nbuckets: int
    window_ms: int


def rule_info(rule: BudgetRule, hysteresis: float) -> RuleInfo:
    """Flatten ``rule``; ``hysteresis`` is a fraction of the limit (levels resolve once the
    spend is below ``threshold - hysteresis * limit``, and never above 0 units)."""
    kind, res, nb, wms = WINDOWS[rule.window]
    limit_units = round(rule.limit_usd * UNITS_PER_USD)
    thresholds = tuple(rule.threshold_units())
    hyst = round(hysteresis * limit_units)
    return RuleInfo(
        budget_id=rule.budget_id,
        window=rule.window,
        limit_usd=rule.limit_usd,
        limit_units=limit_units,
        levels=tuple(rule.levels),
        thresholds=thresholds,
        resolve_below=tuple(max(1, t - hyst) for t in thresholds),
        nsoft=len(rule.soft),
        kind=kind,
        res_ms=res,
        nbuckets=nb,
        window_ms=wms,
    )
