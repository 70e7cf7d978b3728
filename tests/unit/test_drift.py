"""Drift scoring (exact blocked GEMM and hnswlib) against the per-row float64 reference."""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core import drift
from llmops_stream.stream.core.drift import DriftScorer, finite_rows
from llmops_stream.stream.core.evalset import EvalSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_drift import ref_finite_rows, ref_scores  # noqa: E402

SETTINGS = settings(deadline=None, max_examples=60)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return np.ascontiguousarray(
        (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).astype(np.float32)
    )


def make_evalset(vectors: np.ndarray, threshold: float = 0.5) -> EvalSet:
    vectors = unit_rows(vectors)
    mean = vectors.astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    centroid = (mean / norm if norm > 0 else mean).astype(np.float32)
    return EvalSet(
        embedding_model="m",
        version="0" * 16,
        ids=[str(i) for i in range(vectors.shape[0])],
        vectors=vectors,
        centroid=centroid,
        threshold=threshold,
        dim=vectors.shape[1],
    )


def clustered(rng: np.random.Generator, n: int, centers: np.ndarray, spread: float) -> np.ndarray:
    pick = centers[rng.integers(0, centers.shape[0], n)]
    noise = rng.standard_normal(pick.shape) * spread / np.sqrt(centers.shape[1])
    return unit_rows((pick + noise).astype(np.float32))


def check_against_reference(scorer: DriftScorer, queries: np.ndarray, tol: float = 2e-6) -> None:
    es = scorer.evalset
    got = scorer.score(queries)
    ref = ref_scores(queries, es.vectors, es.centroid, es.threshold)
    k = queries.shape[0]
    for name, dtype in (
        ("centroid_sim", np.float32),
        ("nn_sim", np.float32),
        ("nn_index", np.int32),
        ("scored", np.bool_),
        ("uncovered", np.bool_),
    ):
        arr = getattr(got, name)
        assert arr.dtype == dtype and arr.shape == (k,), name
    assert np.array_equal(got.scored, ref["scored"])
    s = ref["scored"]
    assert np.all(np.isnan(got.nn_sim[~s])) and np.all(np.isnan(got.centroid_sim[~s]))
    assert np.all(got.nn_index[~s] == -1) and not got.uncovered[~s].any()
    np.testing.assert_allclose(got.nn_sim[s], ref["nn_sim"][s], atol=tol, rtol=0)
    np.testing.assert_allclose(got.centroid_sim[s], ref["centroid_sim"][s], atol=tol, rtol=0)
    rows = np.flatnonzero(s)
    picked = ref["all_sims"][rows, got.nn_index[rows]]
    # the returned row is a true nearest neighbour (up to float32 GEMM rounding on near-ties)
    assert np.all(picked >= ref["nn_sim"][rows] - tol)
    margin = np.abs(ref["nn_sim"] - es.threshold) > tol
    assert np.array_equal(got.uncovered[margin], ref["uncovered"][margin])
    assert np.array_equal(got.uncovered, got.scored & (got.nn_sim < np.float32(es.threshold)))


@st.composite
def scoring_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float]:
    seed = draw(st.integers(0, 2**32 - 1))
    m = draw(st.integers(1, 40))
    k = draw(st.integers(0, 30))
    d = draw(st.sampled_from([1, 2, 3, 7, 16, 33]))
    rng = np.random.default_rng(seed)
    evals = rng.standard_normal((m, d)).astype(np.float32)
    if m > 2 and draw(st.booleans()):
        evals[m - 1] = evals[0]  # exact tie
    queries = rng.standard_normal((k, d)).astype(np.float32)
    if k:
        special = draw(st.lists(st.integers(0, k - 1), max_size=4))
        for i in special:
            kind = draw(st.sampled_from(["zero", "huge", "tiny", "eval"]))
            if kind == "zero":
                queries[i] = 0
            elif kind == "huge":
                queries[i] = np.clip(rng.standard_normal(d), -3, 3) * 1e37
            elif kind == "tiny":
                queries[i] = np.clip(rng.standard_normal(d), -3, 3) * 1e-42  # subnormals
            else:
                queries[i] = evals[rng.integers(0, m)] * np.float32(3.0)
    threshold = draw(st.floats(-1.0, 1.0))
    return evals, queries, threshold


@SETTINGS
@given(scoring_case())
def test_exact_matches_reference(case: tuple[np.ndarray, np.ndarray, float]) -> None:
    evals, queries, threshold = case
    scorer = DriftScorer(make_evalset(evals, threshold), use_hnsw=False)
    check_against_reference(scorer, queries)


@settings(deadline=None, max_examples=15)
@given(scoring_case())
def test_hnsw_matches_reference_on_small_sets(case: tuple[np.ndarray, np.ndarray, float]) -> None:
    # on a few dozen vectors the graph search is exhaustive in practice
    evals, queries, threshold = case
    scorer = DriftScorer(make_evalset(evals, threshold), use_hnsw=True)
    assert scorer.use_hnsw
    check_against_reference(scorer, queries)


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of 64 rows × at most 300 eval columns, so small data crosses every boundary."""
    monkeypatch.setattr(drift, "_MAX_CHUNK_COLS", 300)
    monkeypatch.setattr(drift, "_TILE_BYTES", 64 * 4 * 300)


@pytest.mark.usefixtures("small_tiles")
def test_tiled_path_matches_reference() -> None:
    rng = np.random.default_rng(5)
    evals = rng.standard_normal((1000, 16)).astype(np.float32)
    evals[900] = evals[10]  # tie across column chunks: the lower row wins
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    queries[7] = 0
    queries[8] = evals[10] * np.float32(2)
    assert drift._chunk_cols(1000) == 250 and drift._block_rows(1000) == 76
    scorer = DriftScorer(make_evalset(evals, 0.6), use_hnsw=False)
    check_against_reference(scorer, queries)
    assert scorer.score(queries[8:9]).nn_index.tolist() == [10]


@pytest.mark.usefixtures("small_tiles")
def test_tiled_leave_one_out_matches_reference() -> None:
    from reference_drift import ref_threshold

    from llmops_stream.stream.core.evalset import calibrate_threshold

    rng = np.random.default_rng(6)
    unit = unit_rows(rng.standard_normal((700, 8)).astype(np.float32))
    unit[650] = unit[3]  # its LOO neighbour is in another chunk, similarity 1
    got = calibrate_threshold(unit, 20.0)
    assert got == pytest.approx(ref_threshold(unit, 20.0), abs=2e-6)
    _, nn_sim, nn_index, _ = drift.exact_nearest(
        unit[[3, 650, 5]], unit, unit[0], exclude=np.array([3, 650, 5], dtype=np.int64)
    )
    assert nn_index[:2].tolist() == [650, 3] and nn_index[2] != 5
    np.testing.assert_allclose(nn_sim[:2], [1.0, 1.0], atol=1e-6)


def test_scores_do_not_depend_on_batch_split() -> None:
    # Replays cut batches differently; uncovered flags must not change (exact totals).
    rng = np.random.default_rng(11)
    evals = rng.standard_normal((700, 64)).astype(np.float32)
    queries = rng.standard_normal((1000, 64)).astype(np.float32)
    scorer = DriftScorer(make_evalset(evals, 0.3), use_hnsw=False)
    whole = scorer.score(queries)
    cuts = np.sort(rng.choice(np.arange(1, 1000), size=12, replace=False))
    parts = [scorer.score(p) for p in np.split(queries, cuts)]
    for name in ("centroid_sim", "nn_sim", "nn_index", "scored", "uncovered"):
        joined = np.concatenate([getattr(p, name) for p in parts])
        assert np.array_equal(getattr(whole, name), joined, equal_nan=name.endswith("sim")), name


def test_ties_go_to_the_lowest_row() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((5, 16)).astype(np.float32)
    evals = np.concatenate([base, base[[2, 2, 4]]])  # rows 5, 6 repeat row 2; 7 repeats 4
    scorer = DriftScorer(make_evalset(evals), use_hnsw=False)
    got = scorer.score(np.concatenate([base[[2]], base[[4]]]) * np.float32(2))
    assert got.nn_index.tolist() == [2, 4]
    np.testing.assert_allclose(got.nn_sim, [1.0, 1.0], atol=1e-6)


def test_single_vector_set_and_single_event() -> None:
    scorer = DriftScorer(make_evalset(np.array([[3.0, 4.0]], np.float32), 0.9), use_hnsw=False)
    got = scorer.score(np.array([[4.0, 3.0]], dtype=np.float32))
    assert got.nn_index.tolist() == [0]
    assert got.nn_sim[0] == pytest.approx(0.96, abs=1e-6)
    assert got.centroid_sim[0] == pytest.approx(0.96, abs=1e-6)
    assert got.uncovered.tolist() == [False]
    got = scorer.score(np.array([[0.0, 1.0]], dtype=np.float32))
    assert got.uncovered.tolist() == [True]


def test_empty_batch_and_zero_rows() -> None:
    rng = np.random.default_rng(3)
    for use_hnsw in (False, True):
        scorer = DriftScorer(
            make_evalset(rng.standard_normal((10, 8)).astype(np.float32)), use_hnsw=use_hnsw
        )
        empty = scorer.score(np.zeros((0, 8), np.float32))
        assert empty.nn_sim.shape == (0,) and empty.scored.dtype == np.bool_
        zeros = scorer.score(np.zeros((3, 8), np.float32))
        assert not zeros.scored.any() and not zeros.uncovered.any()
        assert zeros.nn_index.tolist() == [-1, -1, -1]
        assert np.isnan(zeros.nn_sim).all() and np.isnan(zeros.centroid_sim).all()


def test_score_validation() -> None:
    scorer = DriftScorer(make_evalset(np.eye(4, dtype=np.float32)), use_hnsw=False)
    with pytest.raises(ValueError):
        scorer.score(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        scorer.score(np.zeros((2, 4), np.float64))
    with pytest.raises(ValueError):
        scorer.score(np.zeros(4, np.float32))
    assert scorer.score(np.asfortranarray(np.eye(4, dtype=np.float32)[:, ::-1])).scored.all()


def test_switch_point_default(monkeypatch: pytest.MonkeyPatch) -> None:
    es = make_evalset(np.eye(4, dtype=np.float32))
    assert not DriftScorer(es).use_hnsw
    monkeypatch.setattr(drift, "HNSW_MIN_SIZE", 4)
    assert DriftScorer(es).use_hnsw
    assert not DriftScorer(es, use_hnsw=False).use_hnsw


def test_hnsw_ef_grows_with_size() -> None:
    sizes = [1, 2_000, 12_800, 12_801, 20_000, 50_000, 100_000, 10**6]
    efs = [drift.hnsw_ef(m) for m in sizes]
    assert efs == sorted(efs) and min(efs) == drift.HNSW_EF
    assert all(ef >= m / 200 for ef, m in zip(efs, sizes, strict=True))
    assert all(ef & (ef - 1) == 0 for ef in efs)  # powers of two


def test_hnsw_recall_on_clustered_data() -> None:
    rng = np.random.default_rng(7)
    d = 64
    centers = unit_rows(rng.standard_normal((40, d)).astype(np.float32))
    evals = clustered(rng, 4000, centers, 0.6)
    queries = clustered(rng, 1000, centers, 0.6)
    es = make_evalset(evals)
    exact = DriftScorer(es, use_hnsw=False).score(queries)
    approx = DriftScorer(es, use_hnsw=True).score(queries)
    recall = np.mean(np.abs(exact.nn_sim - approx.nn_sim) <= 1e-4)
    assert recall >= 0.99
    assert np.all(approx.nn_sim <= exact.nn_sim + 1e-6)  # never better than exact
    np.testing.assert_allclose(approx.centroid_sim, exact.centroid_sim, atol=1e-6)


@SETTINGS
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 12),
    st.integers(1, 9),
    st.sampled_from([np.float32, np.float64]),
)
def test_finite_rows_matches_reference(seed: int, k: int, d: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    x: np.ndarray = rng.standard_normal((k, d)).astype(dtype)
    if k:
        for _ in range(rng.integers(0, 4)):
            x[rng.integers(0, k), rng.integers(0, d)] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
    got = finite_rows(x)
    assert got.dtype == np.bool_
    assert np.array_equal(got, ref_finite_rows(x))


def test_finite_rows_validation() -> None:
    with pytest.raises(ValueError):
        finite_rows(np.zeros(3))
    with pytest.raises(ValueError):
        finite_rows(np.zeros((2, 2), np.int64))
    assert finite_rows(np.zeros((0, 5), np.float32)).shape == (0,)


def test_kernels_match_their_python_source() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 7)).astype(np.float32)
    x[2] = 0
    x[3, 1] = np.nan
    out_c, out_p = np.empty(6, np.bool_), np.empty(6, np.bool_)
    drift._finite_rows_kernel(x, out_c)
    drift._finite_rows_kernel.py_func(x, out_p)
    assert np.array_equal(out_c, out_p)

    q_c, q_p = np.empty_like(x), np.empty_like(x)
    inv_c, inv_p = np.empty(6), np.empty(6)
    drift._normalise_kernel(x, q_c, inv_c)
    drift._normalise_kernel.py_func(x, q_p, inv_p)
    assert np.array_equal(q_c, q_p, equal_nan=True) and np.array_equal(inv_c, inv_p)
    assert inv_c[2] == 0 and inv_c[3] == 0

    evals = unit_rows(rng.standard_normal((5, 7)).astype(np.float32))
    best = np.array([0, 4, 1, 1, 2, 3], dtype=np.int64)
    outs = []
    for fn in (drift._finish_kernel, drift._finish_kernel.py_func):
        nn, idx, cen = np.empty(6, np.float32), np.empty(6, np.int32), np.empty(6, np.float32)
        fn(x, inv_c, best, evals, evals[0], nn, idx, cen)
        outs.append((nn, idx, cen))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert np.array_equal(a, b, equal_nan=True)
