"""Per-minute aggregation of priced, scored calls into ``llm_usage_1m`` rows.

Rows are keyed by minute × tenant × app × model × prompt_version × index_version. Keys are
factorised column by column into one dense group id, then every counter is summed per group
by one numba kernel in int64 (exact for any token count a valid event can carry).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import histograms
from ._numba import njit

USAGE_KEYS = ("tenant_id", "app", "model", "prompt_version", "index_version")
USAGE_COUNTERS = (
    "calls",
    "errors",
    "rate_limited",
    "timeouts",
    "cache_hits",
    "unpriced",
    "model_mismatch",
    "escalated",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "scored",
    "uncovered",
    "retrieval_calls",
    "stale_calls",
    "stale_chunks",
    "outdated_chunks",
    "duplicates",  # repeats of an event_id within the dedup horizon (not in ``calls``)
)


@njit
def _group_sum(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((values.shape[0], n_groups), dtype=np.int64)
    for j in range(values.shape[1]):
        g = group[j]
        for k in range(values.shape[0]):
            out[k, g] += values[k, j]
    return out


def group_sum(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum int64[k, n] ``values`` per group id (int64[n] in [0, n_groups)) → int64[k, n_groups]."""
    group = np.ascontiguousarray(group, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.int64)
    if values.ndim != 2 or values.shape[1] != group.shape[0]:
        raise ValueError(f"values must be int64[k, {group.shape[0]}], got {values.shape}")
    if group.size and (group.min() < 0 or group.max() >= n_groups):
        raise ValueError("group ids must lie in [0, n_groups)")
    return _group_sum(group, values, n_groups)


def factorize_rows(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dense group ids (int64[n]) of the row tuples of ``columns``, and one row index per group.

    The row index (int64[g]) points at the first row of each group, to read its key back.
    """
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        codes, uniques = pd.factorize(col, sort=False)
        # key and codes are both < n, so the mixed-radix combination stays < n² < 2⁶²;
        # re-densifying after each column keeps it so.
        key = pd.factorize(key * len(uniques) + codes, sort=False)[0].astype(np.int64)
    _, first = np.unique(key, return_index=True)
    return key, first


def usage_rows(
    minute_ms: np.ndarray,
    *,
    keys: dict[str, np.ndarray],
    counters: dict[str, np.ndarray],
    cost_usd: np.ndarray,
    latency_ms: np.ndarray,
    lag_ms: np.ndarray,
    lag_event: np.ndarray,
) -> dict[str, Any]:
    """Aggregate one batch into ``llm_usage_1m`` columns.

    ``minute_ms`` int64[n] (event time floored to the minute); ``keys`` per name of
    :data:`USAGE_KEYS`, object[n] of values or int[n] codes standing for them (the engine
    groups on its interned codes; key columns come back as they went in); ``counters``
    int64/bool[n] per name of :data:`USAGE_COUNTERS`; ``cost_usd`` float64[n];
    ``latency_ms`` float64[n] (NaN = none); ``lag_ms`` int64[c] the outdated-chunk lags
    with ``lag_event`` int64[c] their event row. Histogram columns are uint64[g, N_BINS]
    arrays (one row per group).
    """
    n = len(minute_ms)
    if n == 0:
        out: dict[str, Any] = {"minute": np.zeros(0, dtype=np.int64)}
        out.update({k: np.asarray(keys[k])[:0] for k in USAGE_KEYS})
        out.update({k: np.zeros(0, dtype=np.int64) for k in USAGE_COUNTERS})
        out["cost_usd"] = np.zeros(0)
        out["latency_hist"] = np.zeros((0, histograms.N_BINS), dtype=np.uint64)
        out["stale_lag_hist"] = np.zeros((0, histograms.N_BINS), dtype=np.uint64)
        return out
    group, first = factorize_rows([minute_ms] + [keys[k] for k in USAGE_KEYS])
    g = len(first)
    stacked = np.stack([np.asarray(counters[k], dtype=np.int64) for k in USAGE_COUNTERS])
    sums = group_sum(group, stacked, g)
    # cost stays float64 (USD); summed in arrival order within each group
    cost = np.zeros(g, dtype=np.float64)
    np.add.at(cost, group, cost_usd)
    lat = histograms.bin_counts(histograms.bin_index(latency_ms), group, g)
    lag = histograms.bin_counts(histograms.bin_index(lag_ms), group[lag_event], g)
    out = {"minute": minute_ms[first] // 1000}
    out.update({k: keys[k][first] for k in USAGE_KEYS})
    out.update({k: sums[i] for i, k in enumerate(USAGE_COUNTERS)})
    out["cost_usd"] = cost
    out["latency_hist"] = lat  # uint64[g, N_BINS]
    out["stale_lag_hist"] = lag
    return out
