"""Per-tenant spend budgets over sliding and calendar windows, with threshold alerts.

A budget file lists rules (``limit_usd``, ``window``, ``soft`` fractions, ``hard`` fraction)
for every tenant (``default``) or for named tenants. :class:`BudgetTracker` consumes
columnar micro-batches of priced events and keeps, per (tenant, budget):

* the spend in the budget's window, exact: money is int64 in units of 1e-10 USD
  (:data:`UNITS_PER_USD`), so adding and expiring amounts never drifts and the result does
  not depend on arrival order or on how the stream is cut into batches;
* a watermark (the largest event time seen) that drives the window. Sliding windows
  (``1h``/``24h`` at one-minute, ``7d``/``30d`` at one-hour resolution) cover the buckets in
  ``(wm_bucket - nbuckets, wm_bucket]``; an event whose bucket already left the window is
  not counted by that budget. Calendar windows (``day``/``month``, UTC) reset at each new
  period; an event of an earlier period than the current one is not counted;
* which threshold levels have fired: each crossing emits exactly one :class:`Alert` with a
  deterministic id. Calendar levels re-arm at the next period; sliding levels re-arm once
  expiry takes the spend back below the level, so a later re-crossing alerts again.

The per-event work runs in numba kernels over plain arrays. Only non-empty buckets are
stored: each sliding (tenant, budget) owns a sorted circular queue of ``(bucket, amount)``
rows inside one shared pool, grown by relocation and compacted when the pool fills, so
memory follows the traffic, not ``tenants x buckets per window``.

Bounds (documented, not errors): one event counts at most ``2**62`` units (about
461 million USD) and so does one sliding bucket; since every threshold is validated to be
below that, the cap never changes whether a level is reached, only the reported spend of
such absurd inputs. Window sums themselves are kept in 126 bits (``hi * 2**62 + lo``) and
never overflow.
"""

import io
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ._numba import njit
from .alerts import Alert, make_alert
from .errors import ConfigError
from .timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE

__all__ = [
    "UNITS_PER_USD",
    "BudgetConfig",
    "BudgetResult",
    "BudgetRule",
    "BudgetState",
    "BudgetTracker",
    "load_budgets",
    "parse_budgets",
]

Window = Literal["1h", "24h", "7d", "30d", "day", "month"]

UNITS_PER_USD = 10_000_000_000
"""Money unit inside budgets: 1e-10 USD, as int64."""

# Largest amount one event or one sliding bucket carries, and the base of the two-word
# window sum. 2**62 keeps ``a + b`` of two capped values inside int64.
_CAP = 1 << 62
_CAP_F = float(_CAP)
# A level mask is one int64: bit k = level k has fired. 63 bits usable.
_MAX_LEVELS = 62

_KIND_SLIDING = 0
_KIND_DAY = 1
_KIND_MONTH = 2

# window -> (kind, bucket resolution ms, number of buckets, window length ms)
_WINDOWS: dict[str, tuple[int, int, int, int]] = {
    "1h": (_KIND_SLIDING, MS_PER_MINUTE, 60, MS_PER_HOUR),
    "24h": (_KIND_SLIDING, MS_PER_MINUTE, 1440, MS_PER_DAY),
    "7d": (_KIND_SLIDING, MS_PER_HOUR, 168, 7 * MS_PER_DAY),
    "30d": (_KIND_SLIDING, MS_PER_HOUR, 720, 30 * MS_PER_DAY),
    "day": (_KIND_DAY, MS_PER_DAY, 1, MS_PER_DAY),
    "month": (_KIND_MONTH, MS_PER_DAY, 1, 0),
}

# Columns of the slot table (one int64 row per (tenant, budget)).
_S_TENANT = 0  # tenant index
_S_RULE = 1  # index into the flat rule table
_S_INIT = 2  # 1 once the first event was seen
_S_WM = 3  # watermark: largest event time seen, ms
_S_PSTART = 4  # calendar: current period start, ms
_S_PEND = 5  # calendar: current period end (exclusive), ms
_S_HI = 6  # spend = HI * 2**62 + LO units, 0 <= LO < 2**62
_S_LO = 7
_S_FIRED = 8  # bit mask of fired levels
_S_QOFF = 9  # sliding: queue region start in the pool
_S_QHEAD = 10  # sliding: index of the oldest bucket inside the region
_S_QCNT = 11  # sliding: number of stored (non-empty) buckets
_S_QCAP = 12  # sliding: region size (0 or a power of two)
_S_WB = 13  # sliding: watermark bucket, WM // resolution (kept to save divisions)
# Oldest and newest stored bucket ids (valid when QCNT > 0), kept here so the common
# "nothing expires, append at the end" event does not have to read the pool.
_S_QFIRST = 14
_S_QLAST = 15
_S_NF = 16
# Columns that carry a budget's state across snapshot/restore (the queue layout is rebuilt).
_KEEP_COLUMNS = [
    _S_INIT,
    _S_WM,
    _S_WB,
    _S_PSTART,
    _S_PEND,
    _S_HI,
    _S_LO,
    _S_FIRED,
    _S_QCNT,
    _S_QFIRST,
    _S_QLAST,
]

# Columns of an alert record returned by the kernel.
_A_EVENT = 0  # index of the crossing event in the batch
_A_SLOT = 1
_A_LEVEL = 2  # level index: soft levels ascending, then hard
_A_HI = 3  # spend after the event (two words, as in the slot table)
_A_LO = 4
_A_KEY = 5  # period key: calendar period start ms, or sliding watermark bucket
_A_WM = 6  # watermark after the event, ms
_A_PEND = 7  # calendar period end ms (unused for sliding)
_A_NF = 8

_META_USED = 0  # pool rows handed out (live regions + abandoned ones)
_META_NSLOTS = 1  # slot rows in use
_META_NA = 2  # alert records written by the current batch
_META_NT = 3  # tenants touched by the current batch
_META_NF = 4

# Columns of the tenant table.
_T_SLOT0 = 0  # first slot row
_T_NSLOT = 1  # number of slot rows (= rules that apply)
_T_MARK = 2  # batch stamp of the last batch that touched the tenant
_T_NF = 3

# Columns of the rule table.
_R_KIND = 0
_R_RES = 1  # bucket resolution, ms
_R_NB = 2  # buckets per window
_R_LEV0 = 3  # first level in lev_thr
_R_NLEV = 4  # number of levels
_R_NF = 5

_MIN_QCAP = 2
_MIN_POOL = 1024

_SNAPSHOT_VERSION = 1


# --------------------------------------------------------------------------- config


class BudgetRule(BaseModel):
    """One budget: ``limit_usd`` over ``window``, alerting at ``soft`` and ``hard`` fractions.

    ``soft`` and ``hard`` are fractions of ``limit_usd``; reaching ``hard`` sets the status
    ``exceeded``. ``id`` defaults to ``f"{window}-{limit_usd:g}"`` and is filled in on load.
    """

    model_config = ConfigDict(extra="forbid")

    limit_usd: float = Field(gt=0, allow_inf_nan=False)
    window: Window
    soft: list[float] = Field(default_factory=list, max_length=_MAX_LEVELS - 1)
    hard: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    id: str | None = Field(default=None, min_length=1)

    @field_validator("soft")
    @classmethod
    def _check_soft(cls, soft: list[float]) -> list[float]:
        for f in soft:
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"soft levels must be finite fractions > 0, got {f}")
        if len(set(soft)) != len(soft):
            raise ValueError(f"soft levels must be distinct, got {soft}")
        return sorted(soft)

    @model_validator(mode="after")
    def _check_levels(self) -> "BudgetRule":
        if self.soft and self.soft[-1] >= self.hard:
            raise ValueError(
                f"every soft level must be below hard={self.hard}, got soft={self.soft}"
            )
        limit_units = round(self.limit_usd * UNITS_PER_USD)
        if limit_units < 1:
            raise ValueError(f"limit_usd={self.limit_usd} is below 1e-10 USD")
        if round(self.hard * limit_units) >= _CAP:
            raise ValueError(
                f"limit_usd x hard = {self.limit_usd * self.hard:g} USD is too large "
                f"(must be below {_CAP / UNITS_PER_USD:.0f} USD)"
            )
        if self.id is None:
            self.id = f"{self.window}-{self.limit_usd:g}"
        return self

    @property
    def budget_id(self) -> str:
        """The budget's id (``id``, or its default)."""
        return self.id if self.id is not None else f"{self.window}-{self.limit_usd:g}"

    @property
    def levels(self) -> list[float]:
        """Alert levels as fractions of the limit, ascending: soft levels then hard."""
        return [*self.soft, self.hard]

    def threshold_units(self) -> list[int]:
        """Thresholds of :attr:`levels` in 1e-10 USD units: ``round(fraction * limit)``, >= 1."""
        limit_units = round(self.limit_usd * UNITS_PER_USD)
        return [max(1, round(f * limit_units)) for f in self.levels]


def _check_unique_ids(rules: list[BudgetRule], where: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        bid = rule.budget_id
        if bid in seen:
            raise ValueError(
                f'{where}: duplicate budget id {bid!r} (give each rule a distinct "id")'
            )
        seen.add(bid)


class BudgetConfig(BaseModel):
    """Budget rules: ``default`` for every tenant, ``tenants`` to replace them per tenant."""

    model_config = ConfigDict(extra="forbid")

    default: list[BudgetRule] = Field(default_factory=list)
    tenants: dict[str, list[BudgetRule]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_ids(self) -> "BudgetConfig":
        _check_unique_ids(self.default, "default")
        for tenant, rules in self.tenants.items():
            _check_unique_ids(rules, f"tenants.{tenant}")
        return self

    def rules_for(self, tenant_id: str) -> list[BudgetRule]:
        """The tenant's own rules if it is listed (even an empty list), else ``default``."""
        return self.tenants.get(tenant_id, self.default)


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_budgets(data: object, source: str = "budget config") -> BudgetConfig:
    """Validate already-decoded budget JSON; raise :class:`ConfigError` naming ``source``."""
    try:
        return BudgetConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_validation_error(err)}") from None


def load_budgets(path: str | Path) -> BudgetConfig:
    """Read and validate a budget file (JSON, see the module doc).

    Raises :class:`ConfigError` with one line naming the file and what is wrong: missing or
    unreadable file, invalid JSON (with line and column), or a rule that fails validation
    (with its location, e.g. ``tenants.acme.0.soft``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"budget file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"budget file {p}: cannot read it ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"budget file {p}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    return parse_budgets(data, f"budget file {p}")


# --------------------------------------------------------------------------- results


class BudgetState(msgspec.Struct):
    """State of one (tenant, budget), as published on ``llm.budget.state``.

    Money in USD; ``remaining_usd = limit_usd - spend_usd`` (negative when overspent);
    ``as_of_ms`` is the budget's watermark (event time, epoch ms); ``period_start_ms`` is the
    calendar period start, or ``as_of_ms`` minus the window length for sliding windows.
    """

    tenant_id: str
    budget_id: str
    window: str
    limit_usd: float
    spend_usd: float
    remaining_usd: float
    status: str
    as_of_ms: int
    period_start_ms: int


@dataclass(frozen=True, slots=True)
class _RuleInfo:
    """A rule flattened for the tracker (derived once from :class:`BudgetRule`)."""

    budget_id: str
    window: str
    limit_usd: float
    limit_units: int
    levels: tuple[float, ...]
    thresholds: tuple[int, ...]  # units, ascending
    nsoft: int
    kind: int
    res_ms: int
    nbuckets: int
    window_ms: int


def _rule_info(rule: BudgetRule) -> _RuleInfo:
    kind, res, nb, wms = _WINDOWS[rule.window]
    return _RuleInfo(
        budget_id=rule.budget_id,
        window=rule.window,
        limit_usd=rule.limit_usd,
        limit_units=round(rule.limit_usd * UNITS_PER_USD),
        levels=tuple(rule.levels),
        thresholds=tuple(rule.threshold_units()),
        nsoft=len(rule.soft),
        kind=kind,
        res_ms=res,
        nbuckets=nb,
        window_ms=wms,
    )


_STATUS_NAMES = np.array(["ok", "warn", "exceeded"], dtype=object)


def _status(spend: int, info: _RuleInfo) -> str:
    if spend >= info.thresholds[-1]:
        return "exceeded"
    if info.nsoft and spend >= info.thresholds[0]:
        return "warn"
    return "ok"


class _StateBuilder:
    """Turns slot-table rows into :class:`BudgetState` objects (shared by result and tracker)."""

    def __init__(self, names: list[str], infos: list[_RuleInfo]) -> None:
        self.names = names
        self.infos = infos
        self._name_arr = np.empty(0, dtype=object)  # ``names`` as an array, grown lazily
        # Per-rule columns for the vectorised path.
        self._r_budget = np.array([i.budget_id for i in infos] or [""], dtype=object)
        self._r_window = np.array([i.window for i in infos] or [""], dtype=object)
        self._r_limit = np.array([i.limit_usd for i in infos] or [0.0], dtype=np.float64)
        self._r_limit_units = np.array([i.limit_units for i in infos] or [0], dtype=np.int64)
        self._r_hard = np.array([i.thresholds[-1] for i in infos] or [0], dtype=np.int64)
        # No soft level: "warn" can never apply, so its threshold is beyond any spend.
        self._r_soft = np.array(
            [i.thresholds[0] if i.nsoft else _CAP for i in infos] or [0], dtype=np.int64
        )
        self._r_sliding_ms = np.array(
            [i.window_ms if i.kind == _KIND_SLIDING else 0 for i in infos] or [0], np.int64
        )
        self._r_sliding = np.array([i.kind == _KIND_SLIDING for i in infos] or [False])

    def columns(self, rows: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[Any]]:
        """The fields of :class:`BudgetState` as arrays of the same values, in the same
        order as :meth:`build`: object[k] for strings, float64[k] USD, int64[k] epoch ms."""
        rows = rows[rows[:, _S_INIT] != 0]
        if len(self._name_arr) < len(self.names):
            self._name_arr = np.array(self.names, dtype=object)
        r = rows[:, _S_RULE]
        hi = rows[:, _S_HI]
        lo = rows[:, _S_LO]
        left = self._r_limit_units[r] - lo  # exact: both below 2**62
        # int64 -> float64 then / 1e10 equals the exact int / 10**10 below 2**53.
        small = (hi == 0) & (lo < 1 << 53) & (np.abs(left) < 1 << 53)
        spend_usd = lo.astype(np.float64) / UNITS_PER_USD
        remaining_usd = left.astype(np.float64) / UNITS_PER_USD
        for k in np.flatnonzero(~small).tolist():
            spend = (int(hi[k]) << 62) + int(lo[k])
            spend_usd[k] = spend / UNITS_PER_USD
            remaining_usd[k] = (int(self._r_limit_units[r[k]]) - spend) / UNITS_PER_USD
        code = np.where(
            (hi > 0) | (lo >= self._r_hard[r]), 2, np.where(lo >= self._r_soft[r], 1, 0)
        )
        wm = rows[:, _S_WM].copy()
        return {
            "tenant_id": self._name_arr[rows[:, _S_TENANT]],
            "budget_id": self._r_budget[r],
            "window": self._r_window[r],
            "limit_usd": self._r_limit[r],
            "spend_usd": spend_usd,
            "remaining_usd": remaining_usd,
            "status": _STATUS_NAMES[code],
            "as_of_ms": wm,
            "period_start_ms": np.where(
                self._r_sliding[r], wm - self._r_sliding_ms[r], rows[:, _S_PSTART]
            ),
        }

    def build(self, rows: npt.NDArray[np.int64]) -> list[BudgetState]:
        """One :class:`BudgetState` per initialised row of ``rows`` (int64[k, _S_NF])."""
        out: list[BudgetState] = []
        for t, r, init, wm, pstart, hi, lo in rows[
            :, [_S_TENANT, _S_RULE, _S_INIT, _S_WM, _S_PSTART, _S_HI, _S_LO]
        ].tolist():
            if not init:
                continue  # a budget added by a config change, no event since
            info = self.infos[r]
            spend = (hi << 62) + lo
            out.append(
                BudgetState(
                    tenant_id=self.names[t],
                    budget_id=info.budget_id,
                    window=info.window,
                    limit_usd=info.limit_usd,
                    spend_usd=spend / UNITS_PER_USD,
                    remaining_usd=(info.limit_units - spend) / UNITS_PER_USD,
                    status=_status(spend, info),
                    as_of_ms=wm,
                    period_start_ms=pstart if info.kind != _KIND_SLIDING else wm - info.window_ms,
                )
            )
        return out


class BudgetResult:
    """What one :meth:`BudgetTracker.apply` produced.

    ``alerts``: the crossings of this batch, in event order (then budget, then level).
    ``states``: the state after the batch of every (tenant, budget) whose tenant had an
    event in the batch. The rows are captured at ``apply`` time and turned into
    :class:`BudgetState` objects on first access, so callers that do not read them do not
    pay for one Python object per tenant.
    """

    def __init__(
        self, alerts: list[Alert], rows: npt.NDArray[np.int64], builder: _StateBuilder
    ) -> None:
        self.alerts = alerts
        self._rows = rows
        self._builder = builder

    @cached_property
    def states(self) -> list[BudgetState]:
        """States of the (tenant, budget) pairs touched by the batch: tenants in the order
        of their first event in the batch, each tenant's budgets in rule order."""
        return self._builder.build(self._rows)

    def state_columns(self) -> dict[str, npt.NDArray[Any]]:
        """:attr:`states` as columns (one array per field, same order), built without a
        Python object per state: for sinks that write arrays (ClickHouse, state topic)."""
        return self._builder.columns(self._rows)


def latest_states(states: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the last row of each (tenant, budget) of concatenated state columns (as made
    by :meth:`BudgetTracker.state_columns` over several batches)."""
    keys = pd.MultiIndex.from_arrays([states["tenant_id"], states["budget_id"]])
    keep = ~keys.duplicated(keep="last")
    return {k: v[keep] for k, v in states.items()}


# --------------------------------------------------------------------------- kernels


@njit
def _month_bounds(ts: int) -> tuple[int, int]:
    """UTC calendar month of epoch-ms ``ts``: (start ms, end ms exclusive).

    Days-to-civil conversion on a March-based year (Feb last, so leap days fall at the end).
    """
    days = ts // 86_400_000
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097  # day of era, [0, 146096]
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365  # year of era
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of March-based year
    mp = (5 * doy + 2) // 153  # month, 0 = March
    first = (153 * mp + 2) // 5  # day of year of that month's 1st
    start_day = days - (doy - first)
    if mp == 11:
        year = yoe + era * 400 + 1  # February belongs to the next civil year
        leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
        length = 29 if leap else 28
    else:
        length = (153 * (mp + 1) + 2) // 5 - first
    return start_day * 86_400_000, (start_day + length) * 86_400_000


@njit
def _queue_cap_for(count: int) -> int:
    """Region size for a queue holding ``count`` buckets: 0, or a power of two > count."""
    if count == 0:
        return 0
    cap = _MIN_QCAP
    while cap <= count:
        cap *= 2
    return cap


@njit
def _repack(
    slots: npt.NDArray[np.int64],
    pool: npt.NDArray[np.int64],
    meta: npt.NDArray[np.int64],
    headroom: int,
) -> npt.NDArray[np.int64]:
    """Copy every live queue, oldest bucket first, into a fresh pool; returns it (rows x 2).

    Drops the regions abandoned by relocations and fits each queue's region to its size
    (``_queue_cap_for``). The new pool has twice the live regions plus ``headroom`` rows, so
    repacks are rare (amortised O(1) per stored bucket) and at least ``headroom`` rows are
    free afterwards.
    """
    nslots = meta[_META_NSLOTS]
    total = 0
    for s in range(nslots):
        total += _queue_cap_for(slots[s, _S_QCNT])
    new = np.empty((max(_MIN_POOL, 2 * total + headroom), 2), np.int64)
    used = 0
    for s in range(nslots):
        cnt = slots[s, _S_QCNT]
        cap = _queue_cap_for(cnt)
        off = slots[s, _S_QOFF]
        head = slots[s, _S_QHEAD]
        mask = slots[s, _S_QCAP] - 1
        for j in range(cnt):
            p = off + ((head + j) & mask)
            new[used + j, 0] = pool[p, 0]
            new[used + j, 1] = pool[p, 1]
        slots[s, _S_QOFF] = used
        slots[s, _S_QHEAD] = 0
        slots[s, _S_QCAP] = cap
        used += cap
    meta[_META_USED] = used
    return new


@njit
def _reserve(
    s: int,
    slots: npt.NDArray[np.int64],
    pool: npt.NDArray[np.int64],
    meta: npt.NDArray[np.int64],
) -> None:
    """Make room for one more bucket in slot ``s``'s queue.

    A full queue moves to a fresh region twice its size at the end of the pool (the old
    region is reclaimed by the next :func:`_repack`). The caller guarantees the free rows.
    """
    cnt = slots[s, _S_QCNT]
    cap = slots[s, _S_QCAP]
    if cnt < cap:
        return
    newcap = _MIN_QCAP if cap == 0 else 2 * cap
    used = meta[_META_USED]
    off = slots[s, _S_QOFF]
    head = slots[s, _S_QHEAD]
    mask = cap - 1
    for j in range(cnt):
        p = off + ((head + j) & mask)
        pool[used + j, 0] = pool[p, 0]
        pool[used + j, 1] = pool[p, 1]
    slots[s, _S_QOFF] = used
    slots[s, _S_QHEAD] = 0
    slots[s, _S_QCAP] = newcap
    meta[_META_USED] = used + newcap


@njit
def _bucket_add(  # noqa: PLR0917 - numba kernels take plain positional arrays
    s: int,
    b: int,
    a: int,
    slots: npt.NDArray[np.int64],
    pool: npt.NDArray[np.int64],
    meta: npt.NDArray[np.int64],
) -> int:
    """Add ``a`` units (0 < a <= 2**62) to bucket ``b`` of slot ``s``'s sorted queue.

    The bucket saturates at 2**62. Returns by how much the bucket grew (units).
    In-order events hit the newest bucket or append after it; late ones binary-search.
    """
    cnt = slots[s, _S_QCNT]
    j = cnt - 1  # logical position of the newest bucket <= b (-1: none)
    if cnt > 0 and b <= slots[s, _S_QLAST]:
        off = slots[s, _S_QOFF]
        head = slots[s, _S_QHEAD]
        mask = slots[s, _S_QCAP] - 1
        if b < slots[s, _S_QLAST]:
            # Out of order: binary search for the last bucket <= b (the queue is sorted).
            lo_j = 0
            hi_j = cnt - 1  # invariant: bucket at hi_j > b; answer in [lo_j - 1, hi_j - 1]
            while lo_j < hi_j:
                mid = (lo_j + hi_j) // 2
                if pool[off + ((head + mid) & mask), 0] <= b:
                    lo_j = mid + 1
                else:
                    hi_j = mid
            j = lo_j - 1
        p = off + ((head + j) & mask)
        if j >= 0 and pool[p, 0] == b:
            old = pool[p, 1]
            new = old + a if a < _CAP - old else _CAP
            pool[p, 1] = new
            return new - old
    # Insert after logical position j, shifting the newer buckets one step.
    _reserve(s, slots, pool, meta)
    off = slots[s, _S_QOFF]
    head = slots[s, _S_QHEAD]
    mask = slots[s, _S_QCAP] - 1
    k = cnt - 1
    while k > j:
        src = off + ((head + k) & mask)
        dst = off + ((head + k + 1) & mask)
        pool[dst, 0] = pool[src, 0]
        pool[dst, 1] = pool[src, 1]
        k -= 1
    p = off + ((head + j + 1) & mask)
    pool[p, 0] = b
    pool[p, 1] = a
    slots[s, _S_QCNT] = cnt + 1
    if j < 0:
        slots[s, _S_QFIRST] = b
    if j == cnt - 1:
        slots[s, _S_QLAST] = b
    return a


@njit
def _apply_kernel(  # noqa: PLR0917 - numba kernels take plain positional arrays
    codes: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    units: npt.NDArray[np.int64],
    start: int,
    stamp: int,
    tenants: npt.NDArray[np.int64],
    slots: npt.NDArray[np.int64],
    pool: npt.NDArray[np.int64],
    meta: npt.NDArray[np.int64],
    rules: npt.NDArray[np.int64],
    lev_thr: npt.NDArray[np.int64],
    alerts: npt.NDArray[np.int64],
    touched: npt.NDArray[np.int64],
    headroom: int,
    maxlev: int,
) -> int:
    """Run events ``start..n`` of a batch through every budget of their tenant, in order.

    Per event ``i``: ``codes[i]`` tenant index (-1: no budgets), ``ts[i]`` epoch ms,
    ``units[i]`` cost in 1e-10 USD (0 <= units <= 2**62). ``tenants`` int64[T, _T_NF]: tenant
    ``t`` owns slot rows ``SLOT0 .. SLOT0 + NSLOT`` of ``slots`` int64[S, _S_NF]; its MARK
    column, stamped with ``stamp``, records that the batch touched it. ``rules``
    int64[R, _R_NF] gives each rule's kind, bucket resolution (ms), number of buckets and
    its levels ``lev_thr[LEV0 : LEV0 + NLEV]`` (units, ascending).

    Appends alert records to ``alerts`` int64[cap, _A_NF] and first touches to ``touched``
    int64[n] (counts in ``meta``). Before each event it checks that ``pool`` has
    ``headroom`` free rows and ``alerts`` room for ``maxlev`` records; if not it stops and
    returns the index of that event, so the caller can grow them and call again (buffers
    are never replaced inside the loop, which keeps the loop free of reference counting).
    Returns ``n`` when done.
    """
    n = codes.shape[0]
    na = meta[_META_NA]
    nt = meta[_META_NT]
    for i in range(start, n):
        t = codes[i]
        if t < 0:
            continue
        ns = tenants[t, _T_NSLOT]
        if ns == 0:
            continue
        if pool.shape[0] - meta[_META_USED] < headroom or alerts.shape[0] - na < maxlev:
            meta[_META_NA] = na
            meta[_META_NT] = nt
            return i
        if tenants[t, _T_MARK] != stamp:
            tenants[t, _T_MARK] = stamp
            touched[nt] = t
            nt += 1
        e_ts = ts[i]
        a = units[i]
        s0 = tenants[t, _T_SLOT0]
        for s in range(s0, s0 + ns):
            r = slots[s, _S_RULE]
            kind = rules[r, _R_KIND]
            lev0 = rules[r, _R_LEV0]
            nlev = rules[r, _R_NLEV]
            grew = 0
            if kind == _KIND_SLIDING:
                res = rules[r, _R_RES]
                nb = rules[r, _R_NB]
                b = e_ts // res
                if slots[s, _S_INIT] == 0:
                    slots[s, _S_INIT] = 1
                    slots[s, _S_WM] = e_ts
                    slots[s, _S_WB] = b
                elif e_ts > slots[s, _S_WM]:
                    slots[s, _S_WM] = e_ts
                    if b > slots[s, _S_WB]:
                        slots[s, _S_WB] = b
                        # Expire buckets that left (b - nb, b]; the queue is sorted.
                        cutoff = b - nb
                        cnt = slots[s, _S_QCNT]
                        head = slots[s, _S_QHEAD]
                        off = slots[s, _S_QOFF]
                        mask = slots[s, _S_QCAP] - 1
                        expired = False
                        while cnt > 0 and slots[s, _S_QFIRST] <= cutoff:
                            d = pool[off + head, 1]
                            lo = slots[s, _S_LO] - d
                            if lo < 0:
                                lo += _CAP
                                slots[s, _S_HI] -= 1
                            slots[s, _S_LO] = lo
                            head = (head + 1) & mask
                            cnt -= 1
                            if cnt > 0:
                                slots[s, _S_QFIRST] = pool[off + head, 0]
                            expired = True
                        slots[s, _S_QHEAD] = head
                        slots[s, _S_QCNT] = cnt
                        if expired:
                            # Re-arm fired levels the spend fell back below.
                            fired = slots[s, _S_FIRED]
                            if fired != 0 and slots[s, _S_HI] == 0:
                                lo = slots[s, _S_LO]
                                for k in range(nlev):
                                    if lo < lev_thr[lev0 + k]:
                                        fired &= ~(1 << k)
                                slots[s, _S_FIRED] = fired
                wb = slots[s, _S_WB]
                if b <= wb - nb or a == 0:
                    continue  # too late for this window, or nothing to add
                grew = _bucket_add(s, b, a, slots, pool, meta)
                key = wb
            else:
                if kind == _KIND_DAY:
                    ps = (e_ts // 86_400_000) * 86_400_000
                    pe = ps + 86_400_000
                elif slots[s, _S_INIT] != 0 and slots[s, _S_PSTART] <= e_ts < slots[s, _S_PEND]:
                    ps = slots[s, _S_PSTART]
                    pe = slots[s, _S_PEND]
                else:
                    ps, pe = _month_bounds(e_ts)
                if slots[s, _S_INIT] == 0 or ps > slots[s, _S_PSTART]:
                    # A new period: spend and levels start over.
                    slots[s, _S_INIT] = 1
                    slots[s, _S_PSTART] = ps
                    slots[s, _S_PEND] = pe
                    slots[s, _S_HI] = 0
                    slots[s, _S_LO] = 0
                    slots[s, _S_FIRED] = 0
                    slots[s, _S_WM] = e_ts
                elif ps < slots[s, _S_PSTART]:
                    continue  # an earlier period than the current one: not counted
                elif e_ts > slots[s, _S_WM]:
                    slots[s, _S_WM] = e_ts
                grew = a
                key = ps
            if grew == 0:
                continue
            lo = slots[s, _S_LO] + grew  # < 2**63: lo < 2**62 and grew <= 2**62
            hi = slots[s, _S_HI]
            if lo >= _CAP:
                lo -= _CAP
                hi += 1
                slots[s, _S_HI] = hi
            slots[s, _S_LO] = lo
            fired = slots[s, _S_FIRED]
            for k in range(nlev):
                bit = 1 << k
                if (fired & bit) == 0 and (hi > 0 or lo >= lev_thr[lev0 + k]):
                    fired |= bit
                    alerts[na, _A_EVENT] = i
                    alerts[na, _A_SLOT] = s
                    alerts[na, _A_LEVEL] = k
                    alerts[na, _A_HI] = hi
                    alerts[na, _A_LO] = lo
                    alerts[na, _A_KEY] = key
                    alerts[na, _A_WM] = slots[s, _S_WM]
                    alerts[na, _A_PEND] = slots[s, _S_PEND]
                    na += 1
            slots[s, _S_FIRED] = fired
    meta[_META_NA] = na
    meta[_META_NT] = nt
    return n


@njit
def _gather_buckets(
    slots: npt.NDArray[np.int64], nslots: int, pool: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """All stored buckets, slot after slot, oldest first: int64[total, 2] (bucket, units)."""
    total = 0
    for s in range(nslots):
        total += slots[s, _S_QCNT]
    out = np.empty((total, 2), np.int64)
    w = 0
    for s in range(nslots):
        off = slots[s, _S_QOFF]
        head = slots[s, _S_QHEAD]
        mask = slots[s, _S_QCAP] - 1
        for j in range(slots[s, _S_QCNT]):
            p = off + ((head + j) & mask)
            out[w, 0] = pool[p, 0]
            out[w, 1] = pool[p, 1]
            w += 1
    return out


@njit
def _scatter_buckets(
    slots: npt.NDArray[np.int64],
    src_start: npt.NDArray[np.int64],
    buckets: npt.NDArray[np.int64],
    meta: npt.NDArray[np.int64],
    headroom: int,
) -> npt.NDArray[np.int64]:
    """Build a pool holding, for each slot ``s`` in use, ``slots[s, QCNT]`` buckets read
    from ``buckets[src_start[s]:]`` (int64[total, 2]); sets the queue columns and ``meta``.
    Sized like :func:`_repack`."""
    nslots = meta[_META_NSLOTS]
    total = 0
    for s in range(nslots):
        total += _queue_cap_for(slots[s, _S_QCNT])
    pool = np.empty((max(_MIN_POOL, 2 * total + headroom), 2), np.int64)
    used = 0
    for s in range(nslots):
        cnt = slots[s, _S_QCNT]
        src = src_start[s]
        for j in range(cnt):
            pool[used + j, 0] = buckets[src + j, 0]
            pool[used + j, 1] = buckets[src + j, 1]
        cap = _queue_cap_for(cnt)
        slots[s, _S_QOFF] = used
        slots[s, _S_QHEAD] = 0
        slots[s, _S_QCAP] = cap
        used += cap
    meta[_META_USED] = used
    return pool


# --------------------------------------------------------------------------- tracker


def _flat_rules(config: BudgetConfig) -> list[BudgetRule]:
    """Rules in flat-table order: default, then each listed tenant's, in file order."""
    out = list(config.default)
    for trules in config.tenants.values():
        out.extend(trules)
    return out


def _grown(arr: npt.NDArray[np.int64], need: int) -> npt.NDArray[np.int64]:
    """``arr`` with at least ``need`` rows (capacity doubles; new rows are zero)."""
    if arr.shape[0] >= need:
        return arr
    cap = max(need, 2 * arr.shape[0], 64)
    out = np.zeros((cap, *arr.shape[1:]), np.int64)
    out[: arr.shape[0]] = arr
    return out


def _cost_units(cost_usd: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """USD -> int64 1e-10 USD units, ``min(round(cost * 1e10), 2**62)`` (half to even)."""
    f = cost_usd * float(UNITS_PER_USD)
    return np.where(f >= _CAP_F, _CAP_F, np.rint(f)).astype(np.int64)


class BudgetTracker:
    """Budget state of every tenant; feed it batches with :meth:`apply`.

    Tenants are interned to consecutive indices; each owns one slot row per budget rule
    (``config.rules_for(tenant)``), a tenant without rules owns none and costs one dict
    entry. All per-event work happens in :func:`_apply_kernel`; Python only interns tenant
    names per batch and builds the (rare) alerts.
    """

    def __init__(self, config: BudgetConfig) -> None:
        self._config = config
        # Flat rule table (see _flat_rules); a tenant's slots point into it.
        self._default_set = np.arange(len(config.default), dtype=np.int64)
        self._tenant_sets: dict[str, npt.NDArray[np.int64]] = {}
        first = len(config.default)
        for name, trules in config.tenants.items():
            self._tenant_sets[name] = np.arange(first, first + len(trules), dtype=np.int64)
            first += len(trules)
        self._infos = [_rule_info(r) for r in _flat_rules(config)]
        nr = len(self._infos)
        self._rules = np.zeros((nr, _R_NF), np.int64)
        for r, info in enumerate(self._infos):
            self._rules[r, _R_KIND] = info.kind
            self._rules[r, _R_RES] = info.res_ms
            self._rules[r, _R_NB] = info.nbuckets
            self._rules[r, _R_NLEV] = len(info.thresholds)
        if nr:
            self._rules[1:, _R_LEV0] = np.cumsum(self._rules[:, _R_NLEV])[:-1]
        self._lev_thr = np.array([t for i in self._infos for t in i.thresholds], np.int64)
        self._lev_thr = self._lev_thr.reshape(-1)
        # Worst case one event needs: a relocation per sliding budget (pool rows) and an
        # alert per level (records), over the rule sets a tenant can have.
        sets = [self._default_set, *self._tenant_sets.values()]
        self._headroom = max(
            sum(
                2 << (self._infos[r].nbuckets - 1).bit_length()
                for r in rs.tolist()
                if self._infos[r].kind == _KIND_SLIDING
            )
            for rs in sets
        )
        self._maxlev = max(int(self._rules[rs, _R_NLEV].sum()) for rs in sets)
        self._alert_buf = np.zeros((max(64, 4 * self._maxlev), _A_NF), np.int64)

        self._tindex: dict[str, int] = {}
        self._names: list[str] = []
        self._tenants = np.zeros((0, _T_NF), np.int64)
        self._stamp = 0
        self._slots = np.zeros((0, _S_NF), np.int64)
        self._nslots = 0
        self._meta = np.zeros(_META_NF, np.int64)
        self._pool = np.zeros((_MIN_POOL + self._headroom, 2), np.int64)
        self._builder = _StateBuilder(self._names, self._infos)

    # ---- tenants

    def _register(self, names: list[str]) -> None:
        """Give each new tenant name an index and one slot per rule that applies to it."""
        nt = len(names)
        t0 = len(self._names)
        sets = [self._tenant_sets.get(nm, self._default_set) for nm in names]
        counts = np.fromiter((len(x) for x in sets), np.int64, nt)
        total = int(counts.sum())
        s0 = self._nslots
        self._tenants = _grown(self._tenants, t0 + nt)
        self._tenants[t0 : t0 + nt, _T_SLOT0] = s0 + np.cumsum(counts) - counts
        self._tenants[t0 : t0 + nt, _T_NSLOT] = counts
        if total:
            self._slots = _grown(self._slots, s0 + total)
            rows = self._slots[s0 : s0 + total]
            rows[:] = 0
            rows[:, _S_RULE] = np.concatenate(sets)
            rows[:, _S_TENANT] = np.repeat(np.arange(t0, t0 + nt, dtype=np.int64), counts)
            self._nslots = s0 + total
            self._meta[_META_NSLOTS] = self._nslots
        for k, nm in enumerate(names):
            self._tindex[nm] = t0 + k
        self._names.extend(names)

    def _intern(self, tenant_ids: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Tenant index of every event (registering tenants seen for the first time)."""
        get = self._tindex.get
        codes = np.array([get(t, -1) for t in tenant_ids], np.int64)
        missing = np.flatnonzero(codes < 0)
        if missing.size:
            fresh = [str(t) for t in tenant_ids[missing].tolist()]
            self._register([t for t in dict.fromkeys(fresh) if t not in self._tindex])
            codes[missing] = [self._tindex[t] for t in fresh]
        return codes

    # ---- public API

    def apply(
        self,
        tenant_ids: npt.NDArray[Any],
        ts_ms: npt.NDArray[np.int64],
        cost_usd: npt.NDArray[np.float64],
        apps: npt.NDArray[Any],
        event_ids: npt.NDArray[Any],
    ) -> BudgetResult:
        """Count one batch of priced events (in arrival order) against every budget.

        ``tenant_ids``, ``apps``, ``event_ids``: object[n] of str; ``ts_ms``: int64[n] event
        time, epoch ms; ``cost_usd``: float64[n], finite and >= 0. Returns the alerts of the
        crossings and the states of the (tenant, budget) pairs the batch touched.
        """
        n = len(tenant_ids)
        if not (len(ts_ms) == len(cost_usd) == len(apps) == len(event_ids) == n):
            raise ValueError("apply: all arrays must have the same length")
        cost = np.asarray(cost_usd, dtype=np.float64)
        if n and not (np.isfinite(cost).all() and (cost >= 0).all()):
            raise ValueError("apply: cost_usd must be finite and >= 0")
        tenants = np.asarray(tenant_ids, dtype=object)
        if n == 0 or (not self._infos):
            return BudgetResult([], np.zeros((0, _S_NF), np.int64), self._builder)
        codes = self._intern(tenants)
        ts = np.ascontiguousarray(ts_ms, dtype=np.int64)
        units = _cost_units(cost)
        touched = np.empty(n, np.int64)
        self._stamp += 1
        self._meta[_META_NA] = 0
        self._meta[_META_NT] = 0
        i = 0
        while True:
            i = _apply_kernel(
                codes,
                ts,
                units,
                i,
                self._stamp,
                self._tenants,
                self._slots,
                self._pool,
                self._meta,
                self._rules,
                self._lev_thr,
                self._alert_buf,
                touched,
                self._headroom,
                self._maxlev,
            )
            if i >= n:
                break
            # The kernel stopped before event i for lack of room: make room, go on.
            if self._pool.shape[0] - self._meta[_META_USED] < self._headroom:
                self._pool = _repack(self._slots, self._pool, self._meta, self._headroom)
            if self._alert_buf.shape[0] - self._meta[_META_NA] < self._maxlev:
                self._alert_buf = _grown(self._alert_buf, 2 * self._alert_buf.shape[0])
        na = int(self._meta[_META_NA])
        alerts = self._alerts(self._alert_buf[:na], apps, event_ids) if na else []
        hit = touched[: self._meta[_META_NT]]
        counts = self._tenants[hit, _T_NSLOT]
        firsts = self._tenants[hit, _T_SLOT0]
        starts = np.repeat(firsts - (np.cumsum(counts) - counts), counts)
        rows = self._slots[starts + np.arange(int(counts.sum()), dtype=np.int64)]
        return BudgetResult(alerts, rows, self._builder)

    def _alerts(
        self, recs: npt.NDArray[np.int64], apps: npt.NDArray[Any], event_ids: npt.NDArray[Any]
    ) -> list[Alert]:
        out: list[Alert] = []
        for i, s, k, hi, lo, key, wm, pend in recs.tolist():
            t, r = self._slots[s, _S_TENANT], self._slots[s, _S_RULE]
            info = self._infos[r]
            tenant = self._names[t]
            spend = (hi << 62) + lo
            fraction = info.levels[k]
            kind = "hard" if k == info.nsoft else "soft"
            if info.kind == _KIND_SLIDING:
                start, end = wm - info.window_ms, wm
            else:
                start, end = key, pend
            app = apps[i]
            out.append(
                make_alert(
                    type="budget",
                    severity="critical" if kind == "hard" else "warning",
                    tenant_id=tenant,
                    app=app if isinstance(app, str) else "",
                    metric="spend_usd",
                    value=spend / UNITS_PER_USD,
                    threshold=fraction * info.limit_usd,
                    window_start_ms=start,
                    window_end_ms=end,
                    id_parts=(tenant, info.budget_id, fraction, key),
                    details={
                        "budget_id": info.budget_id,
                        "window": info.window,
                        "limit_usd": info.limit_usd,
                        "level": fraction,
                        "kind": kind,
                        "event_id": str(event_ids[i]),
                        "status": _status(spend, info),
                    },
                )
            )
        return out

    def states(self) -> list[BudgetState]:
        """Current state of every known (tenant, budget), in slot order."""
        return self._builder.build(self._slots[: self._nslots])

    def state_columns(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`states` as columns (see :meth:`BudgetResult.state_columns`)."""
        return self._builder.columns(self._slots[: self._nslots])

    # ---- checkpoints

    def snapshot(self) -> bytes:
        """The full state as bytes (an ``.npz`` archive, no pickles) for :meth:`restore`.

        Holds the config it was made with, the tenant names, the slot table and only the
        stored buckets, so it is about ``128 B x budgets + 16 B x non-empty buckets`` plus
        the names. Equal states give equal bytes.
        """
        encoded = [nm.encode("utf-8") for nm in self._names]
        # The pool layout is rebuilt on restore; zero it so equal states give equal bytes.
        slots = self._slots[: self._nslots].copy()
        slots[:, [_S_QOFF, _S_QHEAD, _S_QCAP]] = 0
        buf = io.BytesIO()
        np.savez(
            buf,
            version=np.array([_SNAPSHOT_VERSION], np.int64),
            config=np.frombuffer(self._config.model_dump_json().encode("utf-8"), np.uint8),
            name_lengths=np.array([len(e) for e in encoded], np.int64),
            names=np.frombuffer(b"".join(encoded), np.uint8),
            slots=slots,
            buckets=_gather_buckets(self._slots, self._nslots, self._pool),
        )
        return buf.getvalue()

    @classmethod
    def restore(cls, config: BudgetConfig, data: bytes) -> "BudgetTracker":
        """A tracker that continues from ``data`` (see :meth:`snapshot`) exactly as if never
        stopped. If ``config`` differs from the snapshot's, budgets are matched by tenant,
        budget id and window: matched ones keep their state (levels already reached count
        as fired when the levels changed), new ones start empty, dropped ones are gone.
        """
        try:
            z = np.load(io.BytesIO(data), allow_pickle=False)
            version = int(z["version"][0])
            old_json = z["config"].tobytes().decode("utf-8")
            lengths = z["name_lengths"].tolist()
            blob = z["names"].tobytes()
            old_slots = np.asarray(z["slots"], np.int64).reshape(-1, _S_NF)
            buckets = np.ascontiguousarray(z["buckets"], np.int64).reshape(-1, 2)
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
            raise ValueError(f"not a budget snapshot: {err}") from None
        if version != _SNAPSHOT_VERSION:
            raise ValueError(f"budget snapshot version {version} is not supported")
        ends = np.cumsum(lengths).tolist()
        try:
            names = [blob[e - n : e].decode("utf-8") for n, e in zip(lengths, ends, strict=True)]
        except UnicodeDecodeError as err:
            raise ValueError(f"not a budget snapshot: {err}") from None
        tr = cls(config)
        if names:
            tr._register(names)
        src_start = np.cumsum(old_slots[:, _S_QCNT]) - old_slots[:, _S_QCNT]
        keep = _KEEP_COLUMNS
        new = tr._slots[: tr._nslots]
        if old_json == config.model_dump_json():
            # Same config, same tenant order: the slot layout is identical.
            new[:, keep] = old_slots[:, keep]
            starts = src_start
        else:
            starts = tr._remap(BudgetConfig.model_validate_json(old_json), old_slots, src_start)
        tr._pool = _scatter_buckets(tr._slots, starts, buckets, tr._meta, tr._headroom)
        return tr

    def _remap(
        self,
        old_config: BudgetConfig,
        old_slots: npt.NDArray[np.int64],
        old_start: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.int64]:
        """Carry matching budgets' state over from a snapshot made with another config.

        Fills this tracker's slot rows; returns, per new slot, where its buckets start in
        the snapshot's bucket array.
        """
        old_infos = [_rule_info(r) for r in _flat_rules(old_config)]
        where: dict[tuple[int, str, str], int] = {}
        for s, (t, r) in enumerate(old_slots[:, [_S_TENANT, _S_RULE]].tolist()):
            where[(t, old_infos[r].budget_id, old_infos[r].window)] = s
        starts = np.zeros(self._nslots, np.int64)
        keep = _KEEP_COLUMNS
        for s, (t, r) in enumerate(self._slots[: self._nslots, [_S_TENANT, _S_RULE]].tolist()):
            info = self._infos[r]
            o = where.get((t, info.budget_id, info.window))
            if o is None:
                continue
            self._slots[s, keep] = old_slots[o, keep]
            starts[s] = old_start[o]
            if old_infos[old_slots[o, _S_RULE]].thresholds != info.thresholds:
                # New levels: those the spend already reached count as fired, so a restart
                # with an edited file does not re-alert on old spend.
                spend = (int(old_slots[o, _S_HI]) << 62) + int(old_slots[o, _S_LO])
                fired = sum(1 << k for k, thr in enumerate(info.thresholds) if spend >= thr)
                self._slots[s, _S_FIRED] = fired
        return starts

    # ---- introspection (tests, metrics)

    def memory_bytes(self) -> int:
        """Bytes held by the tracker's arrays (not counting the tenant-name dict)."""
        return int(
            self._slots.nbytes + self._pool.nbytes + self._tenants.nbytes + self._alert_buf.nbytes
        )
