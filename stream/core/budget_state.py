"""Budget state as gateways read it: one row per (tenant, budget), from the slot table.

A row says how much the tenant spent in the budget's window or calendar period, what is
left, and the status (``ok`` below the first soft level, ``warn`` from it, ``exceeded`` from
the hard level), as of a stream-clock instant. Rows are built as columns (one array per
field) for the sinks, without a Python object per tenant.
"""

from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from .budget_config import CAP_UNITS, UNITS_PER_USD
from .budget_layout import KIND_SLIDING, RuleInfo

STATUSES = ("ok", "warn", "exceeded")
CALENDAR_WINDOWS = ("day", "month")
_STATUS_NAMES = np.array(STATUSES, dtype=object)


class BudgetState(msgspec.Struct):
    """State of one (tenant, budget), as published on ``llm.budget.state``.

    Money in USD; ``remaining_usd = limit_usd - spend_usd`` (negative when overspent);
    ``as_of_ms`` is the stream clock (epoch ms) the state is at; ``period_start_ms`` the
    calendar period start, or ``as_of_ms`` minus the window for sliding windows.
    ``current`` is False for the previous calendar period (changed by a late event).
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
    current: bool = True


def status_of(spend: int, info: RuleInfo) -> str:
    """``ok``/``warn``/``exceeded`` of ``spend`` units under ``info``'s levels."""
    if spend >= info.thresholds[-1]:
        return "exceeded"
    if info.nsoft and spend >= info.thresholds[0]:
        return "warn"
    return "ok"


class StateBuilder:
    """Turns slot records into state columns (see :class:`BudgetState` for the fields)."""

    def __init__(self, names: list[str], infos: list[RuleInfo]) -> None:
        self.names = names  # the tracker's tenant names (grows as tenants register)
        self._name_arr = np.empty(0, dtype=object)
        self._r_budget = np.array([i.budget_id for i in infos] or [""], dtype=object)
        self._r_window = np.array([i.window for i in infos] or [""], dtype=object)
        self._r_limit = np.array([i.limit_usd for i in infos] or [0.0], dtype=np.float64)
        self._r_limit_units = np.array([i.limit_units for i in infos] or [0], dtype=np.int64)
        self._r_hard = np.array([i.thresholds[-1] for i in infos] or [0], dtype=np.int64)
        # No soft level: "warn" can never apply, so its threshold is beyond any spend.
        self._r_soft = np.array(
            [i.thresholds[0] if i.nsoft else CAP_UNITS for i in infos] or [0], dtype=np.int64
        )
        self._r_window_ms = np.array(
            [i.window_ms if i.kind == KIND_SLIDING else 0 for i in infos] or [0], np.int64
        )
        self._r_sliding = np.array([i.kind == KIND_SLIDING for i in infos] or [False])

    def columns(self, rows: npt.NDArray[np.void], *, previous: bool = False) -> dict[str, Any]:
        """State columns of slot records ``rows`` (those with state only): the current
        window/period, or with ``previous`` the previous calendar period."""
        rows = rows[rows["init"] != 0]
        if len(self._name_arr) < len(self.names):
            self._name_arr = np.array(self.names, dtype=object)
        r = rows["rule"]
        hi = rows["prev_hi"] if previous else rows["hi"]
        lo = rows["prev_lo"] if previous else rows["lo"]
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
        clock = rows["clock"].copy()
        if previous:
            start = rows["prev_start"].copy()
        else:
            start = np.where(self._r_sliding[r], clock - self._r_window_ms[r], rows["pstart"])
        return {
            "tenant_id": self._name_arr[rows["tenant"]],
            "budget_id": self._r_budget[r],
            "window": self._r_window[r],
            "limit_usd": self._r_limit[r],
            "spend_usd": spend_usd,
            "remaining_usd": remaining_usd,
            "status": _STATUS_NAMES[code],
            "as_of_ms": clock,
            "period_start_ms": start,
            "current": np.full(len(rows), not previous),
        }


def concat_states(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """State columns of several calls, concatenated (an empty dict if none)."""
    parts = [p for p in parts if p and len(p["tenant_id"])]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def state_objects(columns: dict[str, Any]) -> list[BudgetState]:
    """:class:`BudgetState` objects of state columns (tests, small outputs)."""
    if not columns:
        return []
    names = list(BudgetState.__struct_fields__)
    return [
        BudgetState(*(v.item() if isinstance(v, np.generic) else v for v in row))
        for row in zip(*(columns[k] for k in names), strict=True)
    ]


def period_keys(states: dict[str, np.ndarray]) -> np.ndarray:
    """int64[k]: the calendar period start of each row, 0 for sliding windows (whose
    window start moves with the clock): with (tenant, budget), one row per period."""
    calendar = np.isin(states["window"], CALENDAR_WINDOWS)
    return np.where(calendar, states["period_start_ms"], 0).astype(np.int64)


def latest_states(states: dict[str, np.ndarray], *, current_only: bool = False) -> dict[str, Any]:
    """The last row of each (tenant, budget, period) of concatenated state columns; with
    ``current_only``, the last current row of each (tenant, budget)."""
    if current_only:
        states = {k: v[states["current"]] for k, v in states.items()}
        keys = [states["tenant_id"], states["budget_id"]]
    else:
        keys = [states["tenant_id"], states["budget_id"], period_keys(states)]
    keep = ~pd.MultiIndex.from_arrays(keys).duplicated(keep="last")
    return {k: v[keep] for k, v in states.items()}
