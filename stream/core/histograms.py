"""Log-scale histograms: quantile state for latencies and freshness lags that merges by addition.

A value ``x >= 0`` (milliseconds) falls into bin ``floor(BINS_PER_DOUBLING * log2(1 + x))``,
so every bin spans a factor ``2 ** (1 / BINS_PER_DOUBLING)`` (about 9 %) of ``1 + x`` and
any value inside a bin is within about 4.5 % of the bin's midpoint. The ``log2(1 + x)``
form keeps 0 ms in bin 0 without a special case. The last bin is open-ended: it holds
everything from ``2 ** (255 / 8) - 1`` ms (about 45.6 days) up, long enough for request
latencies and for freshness lags beyond the default 30-day index max age.

Histograms are plain ``uint64[N_BINS]`` count vectors: the state of several minutes,
workers or partitions is their sum, which is what makes them usable as ClickHouse
aggregate state and as window state.
"""

import math

import numpy as np

from ._numba import njit

BINS_PER_DOUBLING = 8
N_BINS = 256

# Lower edge of bin b is 2 ** (b / 8) - 1; the last bin has no upper edge.
_EDGE_EXPONENTS = np.arange(N_BINS + 1, dtype=np.float64) / BINS_PER_DOUBLING


def bin_lower_edges() -> np.ndarray:
    """Lower edge (inclusive) of every bin in ms, ``float64[N_BINS]``; bin 0 starts at 0."""
    return np.exp2(_EDGE_EXPONENTS[:-1]) - 1.0


def bin_upper_edges() -> np.ndarray:
    """Upper edge (exclusive) of every bin in ms, ``float64[N_BINS]``; the last one is ``inf``."""
    edges = np.exp2(_EDGE_EXPONENTS[1:]) - 1.0
    edges[-1] = np.inf
    return edges


@njit
def _bin_index_kernel(values: np.ndarray, out: np.ndarray) -> None:
    last = N_BINS - 1
    for i in range(values.shape[0]):
        x = np.float64(values[i])
        # ``not (x >= 0)`` is also true for NaN.
        if not (x >= 0.0):
            out[i] = -1
            continue
        # Compared as a float first: flooring +inf to an integer is undefined.
        f = BINS_PER_DOUBLING * math.log2(1.0 + x)
        out[i] = last if f >= last else math.floor(f)


def bin_index(values_ms: np.ndarray) -> np.ndarray:
    """Bin id of every value.

    ``values_ms``: ``float64[n]`` or ``int64[n]`` (other real dtypes are converted), in ms.
    Returns ``int16[n]`` bin ids in ``[0, N_BINS)``; NaN and negative values get ``-1``
    (not counted by :func:`bin_counts`). ``+inf`` lands in the open-ended last bin.
    """
    values = np.asarray(values_ms)
    if values.ndim != 1:
        raise ValueError(f"values_ms must be one-dimensional, got shape {values.shape}")
    if values.dtype not in (np.float64, np.int64):
        if values.dtype.kind not in "fiub":
            raise ValueError(f"values_ms must be numeric, got dtype {values.dtype}")
        values = values.astype(np.float64)
    out = np.empty(values.shape[0], dtype=np.int16)
    _bin_index_kernel(values, out)
    return out


@njit
def _bin_counts_kernel(bins: np.ndarray, group: np.ndarray, out: np.ndarray) -> None:
    for i in range(bins.shape[0]):
        b = bins[i]
        if b >= 0:
            out[group[i], b] += 1


def bin_counts(bins: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Histogram per group.

    ``bins``: integer ``[n]`` from :func:`bin_index` (``-1`` is skipped); ``group``: integer
    ``[n]`` group ids in ``[0, n_groups)``. Returns ``uint64[n_groups, N_BINS]`` counts.
    """
    bins = np.asarray(bins)
    group = np.asarray(group)
    if bins.ndim != 1 or group.shape != bins.shape:
        raise ValueError(f"bins and group must be 1-d of one length: {bins.shape}, {group.shape}")
    if bins.dtype.kind not in "iu" or group.dtype.kind not in "iu":
        raise ValueError(f"bins and group must be integer, got {bins.dtype}, {group.dtype}")
    if n_groups < 0:
        raise ValueError(f"n_groups must be >= 0, got {n_groups}")
    out = np.zeros((n_groups, N_BINS), dtype=np.uint64)
    if bins.shape[0] == 0:
        return out
    if int(bins.min()) < -1 or int(bins.max()) >= N_BINS:
        raise ValueError(f"bin ids must be in [-1, {N_BINS})")
    if int(group.min()) < 0 or int(group.max()) >= n_groups:
        raise ValueError(f"group ids must be in [0, {n_groups})")
    _bin_counts_kernel(bins.astype(np.int64, copy=False), group.astype(np.int64, copy=False), out)
    return out


def quantile(hist: np.ndarray, q: float) -> float:
    """Approximate ``q``-quantile (``0 <= q <= 1``) in ms of the values counted in ``hist``.

    ``hist``: ``uint64[N_BINS]`` counts. The result is the midpoint of the bin holding the
    value of rank ``ceil(q * total)`` (rank 1 for ``q == 0``), i.e. within about 4.5 % of
    the true order statistic; for the open-ended last bin it is that bin's lower edge.
    NaN when the histogram is empty.
    """
    counts = np.asarray(hist)
    if counts.shape != (N_BINS,):
        raise ValueError(f"hist must have shape ({N_BINS},), got {counts.shape}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    cumulative = np.cumsum(counts, dtype=np.uint64)
    total = int(cumulative[-1])
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(q * total))
    b = int(np.searchsorted(cumulative, rank, side="left"))
    lower = 2.0 ** (b / BINS_PER_DOUBLING) - 1.0
    if b == N_BINS - 1:
        return lower
    upper = 2.0 ** ((b + 1) / BINS_PER_DOUBLING) - 1.0
    return (lower + upper) / 2.0
