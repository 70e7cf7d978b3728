"""Eval-set drift scoring: cosine similarity of input embeddings to an eval set.

For every input vector the scorer reports the cosine similarity to the eval set's centroid
and to its nearest eval vector, and flags the input *uncovered* when that nearest-neighbour
similarity is below the eval set's threshold.

Exact search (small and medium eval sets) runs the batch in tiles of input rows × eval
columns: a compiled kernel normalises a block of rows, one float32 GEMM per tile
(``block @ evalᵀ``, numpy's BLAS: numba's own ``np.dot`` would need SciPy's BLAS bindings,
which the project does not depend on) gives its similarities and numpy's SIMD argmax picks
each row's best match. No ``k × m`` similarity matrix is ever built for a whole batch.
From :data:`HNSW_MIN_SIZE` eval vectors up, an hnswlib graph index answers instead.

Whatever found the best match, its similarity (and the centroid similarity) is recomputed
in float64 from the float64-normalised input. The reported values therefore do not depend
on BLAS blocking or on where a row sits in a batch, so replaying the same events after a
crash yields the same ``uncovered`` flags bit for bit (totals must be exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import hnswlib
import numpy as np

from ._numba import njit

if TYPE_CHECKING:
    from .evalset import EvalSet

# Eval-set size from which hnswlib is used instead of the exact kernel. Measured with
#   OPENBLAS_NUM_THREADS=1 python bench/drift_switch.py
# (d=384, one core, 2,000 queries of which a fifth are drifted; see the bench's doc). At the
# ``ef`` of :func:`hnsw_ef` (top-1 recall >= 0.99), queries/s hnswlib vs exact: 20.4k vs
# 23.4k at 7,000 vectors, 11.2k vs 13.0k at 13,000, 10.2k vs 8.7k at 20,000, 4.2k vs 3.5k
# at 50,000 (10,000 was a 1.10x hnswlib win at ef 64, recall 0.995). Crossover: ~16,000.
# hnswlib's gain stays small (1.2x at 50,000; at 100,000 ef 512 ties the exact kernel with
# recall 0.989), so the exact kernel keeps the sizes where it is not clearly slower.
HNSW_MIN_SIZE = 16_000

# hnswlib parameters. M=32 gained no speed at equal recall over M=16 on the bench data.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF = 64
# Fixed seed and a single build thread: the same eval set must give the same graph, hence
# the same answers, after a restart (exactly-once totals include the uncovered counts).
HNSW_SEED = 7


def hnsw_ef(m: int) -> int:
    """Query-time candidate list for an index of ``m`` vectors.

    Top-1 recall at a fixed ``ef`` falls as the index grows; on the bench data recall >= 0.99
    needed ef 64 up to ~15,000 vectors, 128 at 20,000, 256 at 50,000 and 512 at 100,000,
    i.e. about ``m / 200`` rounded up to a power of two, and never below :data:`HNSW_EF`.
    """
    need = max(1, -(-m // 200))
    return max(HNSW_EF, 1 << (need - 1).bit_length())


# GEMM tiling: blocks of input rows × chunks of eval columns, so the float32 similarity
# tile stays near 4 MiB whatever the batch and eval sizes. Measured (one core, d=384):
# sgemm ran at ~140 GFLOP/s with 512 × 2,048 tiles, ~100 with 128 rows and ~80 with 64.
_TILE_BYTES = 4 << 20
_MAX_CHUNK_COLS = 2048
_MIN_BLOCK_ROWS = 64
_MAX_BLOCK_ROWS = 1024


def _chunk_cols(m: int) -> int:
    """Eval columns per chunk: at most 2,048, balanced so that no tiny tail chunk remains."""
    chunks = -(-max(m, 1) // _MAX_CHUNK_COLS)
    return -(-max(m, 1) // chunks)


def _block_rows(m: int) -> int:
    rows = _TILE_BYTES // (4 * _chunk_cols(m))
    return max(_MIN_BLOCK_ROWS, min(_MAX_BLOCK_ROWS, rows))


@dataclass(frozen=True, slots=True)
class DriftScores:
    """Scores of one batch of ``k`` input vectors.

    ``centroid_sim``/``nn_sim``: ``float32[k]`` cosine similarities (NaN where not scored);
    ``nn_index``: ``int32[k]`` row of the nearest eval vector (``-1`` where not scored);
    ``scored``: ``bool[k]`` (False for zero-norm or non-finite rows);
    ``uncovered``: ``bool[k]`` = ``scored & (nn_sim < threshold)``.
    """

    centroid_sim: np.ndarray
    nn_sim: np.ndarray
    nn_index: np.ndarray
    scored: np.ndarray
    uncovered: np.ndarray


# --------------------------------------------------------------------------- kernels


@njit
def _finite_rows_kernel(vectors: np.ndarray, out: np.ndarray) -> None:
    for i in range(vectors.shape[0]):
        ok = True
        for j in range(vectors.shape[1]):
            if not np.isfinite(vectors[i, j]):
                ok = False
                break
        out[i] = ok


@njit
def _sum_squares(x: np.ndarray, row: int) -> float:
    """float64 sum of squares of ``x[row]``; four accumulators keep the FPU pipeline busy."""
    d = x.shape[1]
    a0 = a1 = a2 = a3 = 0.0
    j = 0
    while j + 4 <= d:
        v0 = np.float64(x[row, j])
        v1 = np.float64(x[row, j + 1])
        v2 = np.float64(x[row, j + 2])
        v3 = np.float64(x[row, j + 3])
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
        j += 4
    while j < d:
        v0 = np.float64(x[row, j])
        a0 += v0 * v0
        j += 1
    return (a0 + a1) + (a2 + a3)


@njit
def _normalise_kernel(x: np.ndarray, out: np.ndarray, inv_norm: np.ndarray) -> None:
    """Rows of ``x`` (float32[n, d]) scaled to unit length into ``out`` (float32[n, d]).

    The norm is accumulated in float64, so float32 values near overflow or underflow still
    normalise correctly. Rows with a zero or non-finite norm get ``inv_norm = 0`` and an
    all-zero output row (they are not scored).
    """
    for i in range(x.shape[0]):
        norm = np.sqrt(_sum_squares(x, i))
        inv = 1.0 / norm if norm > 0.0 and np.isfinite(norm) else 0.0
        inv_norm[i] = inv
        for j in range(x.shape[1]):
            out[i, j] = np.float32(np.float64(x[i, j]) * inv)


@njit
def _exact_dot(x: np.ndarray, row: int, inv: float, e: np.ndarray) -> float:
    """float64 dot of the normalised input row ``x[row] * inv`` with the float32 vector ``e``."""
    d = x.shape[1]
    a0 = a1 = a2 = a3 = 0.0
    j = 0
    while j + 4 <= d:
        a0 += np.float64(x[row, j]) * np.float64(e[j])
        a1 += np.float64(x[row, j + 1]) * np.float64(e[j + 1])
        a2 += np.float64(x[row, j + 2]) * np.float64(e[j + 2])
        a3 += np.float64(x[row, j + 3]) * np.float64(e[j + 3])
        j += 4
    while j < d:
        a0 += np.float64(x[row, j]) * np.float64(e[j])
        j += 1
    return ((a0 + a1) + (a2 + a3)) * inv


# Compiled kernels take positional arguments only (numba has no keyword-only parameters).
@njit
def _finish_kernel(  # noqa: PLR0917
    x: np.ndarray,
    inv_norm: np.ndarray,
    best: np.ndarray,
    eval_vectors: np.ndarray,
    centroid: np.ndarray,
    nn_sim: np.ndarray,
    nn_index: np.ndarray,
    centroid_sim: np.ndarray,
) -> None:
    """Exact (float64) similarities of each input row to its best eval row and the centroid.

    ``x``: float32[n, d] raw inputs; ``inv_norm``: float64[n] (0 = not scored); ``best``:
    int64[n] eval row found by the GEMM argmax or the graph index. Unscored rows get NaN
    similarities and index -1.
    """
    for i in range(x.shape[0]):
        inv = inv_norm[i]
        if inv == 0.0:
            nn_sim[i] = np.nan
            nn_index[i] = -1
            centroid_sim[i] = np.nan
            continue
        j = best[i]
        nn_index[i] = j
        nn_sim[i] = _exact_dot(x, i, inv, eval_vectors[j])
        centroid_sim[i] = _exact_dot(x, i, inv, centroid)


# --------------------------------------------------------------------------- wrappers


def finite_rows(vectors: np.ndarray) -> np.ndarray:
    """``bool[k]``: True where every value of the row is finite (no NaN, no ±inf).

    ``vectors``: ``float32[k, d]`` or ``float64[k, d]``.
    """
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise ValueError("vectors must be a 2-d numpy array")
    if vectors.dtype not in (np.float32, np.float64):
        raise ValueError(f"vectors must be float32 or float64, got {vectors.dtype}")
    out = np.empty(vectors.shape[0], dtype=np.bool_)
    _finite_rows_kernel(vectors, out)
    return out


def exact_nearest(
    vectors: np.ndarray,
    eval_vectors: np.ndarray,
    centroid: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact nearest eval row of every input row, by blocked GEMM.

    ``vectors``: ``float32[k, d]`` raw inputs; ``eval_vectors``: ``float32[m, d]``
    unit-length, C-contiguous; ``centroid``: ``float32[d]``; ``exclude``: optional
    ``int64[k]`` eval row to skip per input (``-1``: none; needs ``m >= 2``).
    Returns ``(centroid_sim float32[k], nn_sim float32[k], nn_index int32[k], scored bool[k])``.
    """
    k, d = vectors.shape
    m = eval_vectors.shape[0]
    centroid_sim = np.empty(k, dtype=np.float32)
    nn_sim = np.empty(k, dtype=np.float32)
    nn_index = np.empty(k, dtype=np.int32)
    inv_norm = np.empty(k, dtype=np.float64)
    if k == 0:
        return centroid_sim, nn_sim, nn_index, np.zeros(0, dtype=np.bool_)
    eval_t = eval_vectors.T  # Fortran-ordered view: BLAS takes it without a copy.
    rows = min(k, _block_rows(m))
    cols = _chunk_cols(m)
    qbuf = np.empty((rows, d), dtype=np.float32)
    sbuf = np.empty((rows, cols), dtype=np.float32)
    best = np.empty(k, dtype=np.int64)
    chunk_best = np.empty(rows, dtype=np.int64)
    best_sim = np.empty(rows, dtype=np.float32)
    for start in range(0, k, rows):
        stop = min(k, start + rows)
        n = stop - start
        q = qbuf[:n]
        _normalise_kernel(vectors[start:stop], q, inv_norm[start:stop])
        block_best = best[start:stop]
        skip_rows = skip_cols = None
        if exclude is not None:
            skip_rows = np.flatnonzero(exclude[start:stop] >= 0)
            skip_cols = exclude[start:stop][skip_rows]
        for c0 in range(0, m, cols):
            c1 = min(m, c0 + cols)
            s = sbuf[:n, : c1 - c0]
            np.matmul(q, eval_t[:, c0:c1], out=s)
            if skip_rows is not None and skip_cols is not None:
                mine = (skip_cols >= c0) & (skip_cols < c1)
                s[skip_rows[mine], skip_cols[mine] - c0] = -np.inf
            # numpy's SIMD argmax (first maximum on ties); a compiled loop without fastmath
            # cannot vectorise the comparison chain and was 20 times slower.
            if c0 == 0:
                np.argmax(s, axis=1, out=block_best)
                best_sim[:n] = s[np.arange(n), block_best]
                continue
            np.argmax(s, axis=1, out=chunk_best[:n])
            sim = s[np.arange(n), chunk_best[:n]]
            better = sim > best_sim[:n]  # strict: ties keep the lower row
            block_best[better] = chunk_best[:n][better] + c0
            best_sim[:n][better] = sim[better]
    _finish_kernel(vectors, inv_norm, best, eval_vectors, centroid, nn_sim, nn_index, centroid_sim)
    return centroid_sim, nn_sim, nn_index, inv_norm != 0.0


class DriftScorer:
    """Scores input embeddings against one :class:`~.evalset.EvalSet`.

    ``use_hnsw``: True/False forces the search method; None picks hnswlib from
    :data:`HNSW_MIN_SIZE` eval vectors up and the exact kernel below that.
    """

    def __init__(self, evalset: EvalSet, *, use_hnsw: bool | None = None) -> None:
        self.evalset = evalset
        self.threshold = float(evalset.threshold)
        self._vectors = np.ascontiguousarray(evalset.vectors, dtype=np.float32)
        self._centroid = np.ascontiguousarray(evalset.centroid, dtype=np.float32)
        if self._vectors.ndim != 2 or self._vectors.shape[0] == 0:
            raise ValueError("the eval set has no vectors")
        self.dim = int(self._vectors.shape[1])
        if use_hnsw is None:
            use_hnsw = self._vectors.shape[0] >= HNSW_MIN_SIZE
        self.use_hnsw = bool(use_hnsw)
        self._index: hnswlib.Index | None = None
        if self.use_hnsw:
            self._index = self._build_index()

    def _build_index(self) -> hnswlib.Index:
        m = self._vectors.shape[0]
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(
            max_elements=m, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=HNSW_SEED
        )
        index.add_items(self._vectors, np.arange(m), num_threads=1)
        index.set_ef(hnsw_ef(m))
        return index

    def score(self, vectors: np.ndarray) -> DriftScores:
        """Score ``vectors`` (``float32[k, d]``, raw, rows assumed finite).

        Zero-norm rows (and, defensively, rows with a non-finite norm) are not scored: their
        similarities are NaN, ``nn_index`` is -1, ``scored`` and ``uncovered`` are False.
        """
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
            raise ValueError("vectors must be a 2-d numpy array")
        if vectors.dtype != np.float32:
            raise ValueError(f"vectors must be float32, got {vectors.dtype}")
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, eval set has {self.dim}")
        vectors = np.ascontiguousarray(vectors)
        if self._index is None:
            centroid_sim, nn_sim, nn_index, scored = exact_nearest(
                vectors, self._vectors, self._centroid
            )
        else:
            centroid_sim, nn_sim, nn_index, scored = self._score_hnsw(vectors)
        uncovered = scored & (nn_sim < np.float32(self.threshold))
        return DriftScores(
            centroid_sim=centroid_sim,
            nn_sim=nn_sim,
            nn_index=nn_index,
            scored=scored,
            uncovered=uncovered,
        )

    def _score_hnsw(
        self, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k = vectors.shape[0]
        normalised = np.empty_like(vectors)
        inv_norm = np.empty(k, dtype=np.float64)
        _normalise_kernel(vectors, normalised, inv_norm)
        scored = inv_norm != 0.0
        labels = np.full(k, -1, dtype=np.int64)
        rows = np.flatnonzero(scored)
        if rows.size and self._index is not None:
            found, _ = self._index.knn_query(normalised[rows], k=1, num_threads=1)
            labels[rows] = found[:, 0]
        centroid_sim = np.empty(k, dtype=np.float32)
        nn_sim = np.empty(k, dtype=np.float32)
        nn_index = np.empty(k, dtype=np.int32)
        _finish_kernel(
            vectors, inv_norm, labels, self._vectors, self._centroid, nn_sim, nn_index, centroid_sim
        )
        return centroid_sim, nn_sim, nn_index, scored
