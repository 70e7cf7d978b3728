"""Slow, obviously correct reference implementations for drift scoring and histograms.

Everything here works one row or one value at a time in float64 (or exact Python numbers),
so the fast kernels of ``llmops_stream.stream.core.drift``/``evalset``/``histograms`` can be
checked against it on small inputs.
"""

import math

import numpy as np


def ref_finite_rows(vectors: np.ndarray) -> np.ndarray:
    """True per row when every value is finite."""
    return np.array(
        [all(math.isfinite(float(v)) for v in row) for row in vectors], dtype=bool
    ).reshape(vectors.shape[0])


def ref_scores(
    vectors: np.ndarray, eval_vectors: np.ndarray, centroid: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Per row: cosine similarity (float64) to the centroid and to every eval vector.

    Returns ``scored``, ``nn_sim`` (max), ``nn_index`` (first row reaching the max),
    ``centroid_sim``, ``uncovered`` and ``all_sims`` (``[k, m]``, NaN rows when unscored).
    """
    k, m = vectors.shape[0], eval_vectors.shape[0]
    evals = eval_vectors.astype(np.float64)
    cen = centroid.astype(np.float64)
    out = {
        "scored": np.zeros(k, dtype=bool),
        "nn_sim": np.full(k, np.nan),
        "nn_index": np.full(k, -1, dtype=np.int64),
        "centroid_sim": np.full(k, np.nan),
        "uncovered": np.zeros(k, dtype=bool),
        "all_sims": np.full((k, m), np.nan),
    }
    for i in range(k):
        row = [float(v) for v in vectors[i]]
        norm = math.sqrt(math.fsum(v * v for v in row))
        if not (norm > 0 and math.isfinite(norm)):
            continue
        unit = [v / norm for v in row]
        sims = [
            math.fsum(u * float(e) for u, e in zip(unit, evals[j], strict=True)) for j in range(m)
        ]
        best = max(sims)
        out["scored"][i] = True
        out["nn_sim"][i] = best
        out["nn_index"][i] = sims.index(best)
        out["centroid_sim"][i] = math.fsum(u * float(c) for u, c in zip(unit, cen, strict=True))
        out["uncovered"][i] = best < threshold
        out["all_sims"][i] = sims
    return out


def ref_loo_nn(vectors: np.ndarray) -> np.ndarray:
    """Leave-one-out nearest-neighbour cosine similarity of every row (unit rows, m >= 2)."""
    unit = vectors.astype(np.float64)
    m = unit.shape[0]
    out = np.empty(m)
    for i in range(m):
        out[i] = max(float(unit[i] @ unit[j]) for j in range(m) if j != i)
    return out


def ref_threshold(vectors: np.ndarray, percentile: float, rows: np.ndarray | None = None) -> float:
    """Percentile (numpy's linear rule) of the LOO NN similarities of ``rows`` (default all)."""
    loo = ref_loo_nn(vectors)
    if rows is not None:
        loo = loo[rows]
    return float(np.percentile(loo, percentile))


def ref_bin(value: float, bins_per_doubling: int = 8, n_bins: int = 256) -> int:
    """Histogram bin of one value: floor(b * log2(1 + x)), capped; -1 for NaN/negative."""
    if math.isnan(value) or value < 0:
        return -1
    if math.isinf(value):
        return n_bins - 1
    return min(n_bins - 1, math.floor(bins_per_doubling * math.log2(1.0 + value)))


def ref_rank_value(values: list[float], q: float) -> float:
    """The value of rank ``max(1, ceil(q * n))`` among the sorted values (the q-quantile)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
