"""Eval-set scoring of one batch: each embedding against its model's eval set.

Per event: scored or not, uncovered or not, cosine similarity to the eval-set centroid and
to the nearest eval vector, and the eval set's version. A deterministic sample of the
uncovered inputs (the same events after a replay) becomes eval-set candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .decode import CallBatch
from .dedup import stable_hashes
from .drift import DriftScorer
from .evalset import EvalSet

_CANDIDATE_COLUMNS = (
    "event_id",
    "ts",
    "tenant_id",
    "app",
    "embedding_model",
    "eval_set_version",
    "nn_sim",
    "centroid_sim",
    "nearest_eval_id",
    "embedding",
)


def score_batch(
    b: CallBatch,
    scorers: dict[str, DriftScorer],
    eval_sets: dict[str, EvalSet],
    candidate_share: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Score embeddings per embedding model; returns per-event columns and candidates."""
    n = b.n
    scored = np.zeros(n, dtype=bool)
    uncovered = np.zeros(n, dtype=bool)
    centroid = np.full(n, np.nan, dtype=np.float32)
    nn = np.full(n, np.nan, dtype=np.float32)
    version = np.full(n, "", dtype=object)
    parts: list[dict[str, Any]] = []
    has = b.embedding_nbytes > 0
    for model, scorer in scorers.items() if has.any() else ():
        rows = np.flatnonzero(has & (b.embedding_model == model))
        if not rows.size:
            continue
        es = eval_sets[model]
        mat = np.frombuffer(b"".join([b.embedding[i] for i in rows]), dtype="<f4")  # type: ignore[misc]
        mat = mat.reshape(len(rows), es.dim)
        s = scorer.score(mat)
        scored[rows], uncovered[rows] = s.scored, s.uncovered
        centroid[rows], nn[rows] = s.centroid_sim, s.nn_sim
        version[rows] = es.version
        pick = np.flatnonzero(s.uncovered)
        if pick.size and candidate_share > 0:
            # deterministic sample: the same events are picked after a replay
            h = stable_hashes(b.tenant_id[rows[pick]], b.event_id[rows[pick]])
            pick = pick[(h % np.uint64(10_000)) < int(candidate_share * 10_000)]
        if pick.size:
            sel = rows[pick]
            ids = np.asarray(es.ids, dtype=object)
            parts.append(
                {
                    "event_id": b.event_id[sel],
                    "ts": b.ts_ms[sel],
                    "tenant_id": b.tenant_id[sel],
                    "app": b.app[sel],
                    "embedding_model": np.full(sel.size, model, dtype=object),
                    "eval_set_version": np.full(sel.size, es.version, dtype=object),
                    "nn_sim": s.nn_sim[pick].astype(np.float32),
                    "centroid_sim": s.centroid_sim[pick].astype(np.float32),
                    "nearest_eval_id": ids[np.maximum(s.nn_index[pick], 0)],
                    "embedding": [row.tolist() for row in mat[pick]],
                }
            )
    empty = {"ts": np.int64, "nn_sim": np.float32, "centroid_sim": np.float32}
    columns: dict[str, Any] = {
        k: (
            [x for p in parts for x in p[k]]
            if k == "embedding"
            else np.concatenate([p[k] for p in parts])
            if parts
            else np.zeros(0, dtype=empty.get(k, object))
        )
        for k in _CANDIDATE_COLUMNS
    }
    return scored, uncovered, centroid, nn, version, columns
