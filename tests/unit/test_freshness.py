"""Chunk staleness against the per-chunk reference; max-age resolution and config checks."""

import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core import freshness as fr
from llmops_stream.stream.core.freshness import (
    DEFAULT_MAX_AGE_MS,
    MISSING_MS,
    FreshnessConfig,
    chunk_staleness,
    max_age_for,
)
from llmops_stream.stream.core.timeutil import MS_PER_DAY

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_freshness import MISSING, ref_chunk_staleness  # noqa: E402

T0 = 1_780_000_000_000
DAY = MS_PER_DAY


def i64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@st.composite
def batch(draw: st.DrawFn) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    n = draw(st.integers(0, 12))
    counts = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    ts = draw(st.lists(st.integers(T0 - 5 * DAY, T0 + 5 * DAY), min_size=n, max_size=n))
    max_age = draw(st.lists(st.sampled_from([0, 1, DAY, 30 * DAY]), min_size=n, max_size=n))
    embedded, source = [], []
    for i in range(n):
        for _ in range(counts[i]):
            # times near the query and near the limits, so equalities are hit often
            e = draw(
                st.one_of(
                    st.just(MISSING),
                    st.sampled_from([ts[i], ts[i] - max_age[i], ts[i] - max_age[i] - 1]),
                    st.integers(T0 - 60 * DAY, T0 + DAY),
                )
            )
            s = draw(
                st.one_of(
                    st.just(MISSING),
                    st.just(e),
                    st.integers(T0 - 60 * DAY, T0 + 6 * DAY),
                )
            )
            embedded.append(e)
            source.append(s)
    return ts, offsets, embedded, source, max_age


@settings(deadline=None, max_examples=150)
@given(batch())
def test_matches_reference(
    case: tuple[list[int], list[int], list[int], list[int], list[int]],
) -> None:
    ts, offsets, embedded, source, max_age = case
    got = chunk_staleness(i64(ts), i64(offsets), i64(embedded), i64(source), i64(max_age))
    ref = ref_chunk_staleness(ts, offsets, embedded, source, max_age)
    n = len(ts)
    assert got.n_chunks.dtype == got.n_stale.dtype == got.n_outdated.dtype == np.int32
    assert got.n_chunks.tolist() == ref["n_chunks"]
    assert got.n_stale.tolist() == ref["n_stale"]
    assert got.n_outdated.tolist() == ref["n_outdated"]
    assert got.stale_query.tolist() == [s > 0 for s in ref["n_stale"]]
    assert got.retrieval.tolist() == [c > 0 for c in ref["n_chunks"]]
    assert got.stale_query.shape == got.retrieval.shape == (n,)
    assert list(zip(got.lag_ms.tolist(), got.lag_event.tolist(), strict=True)) == ref["lags"]
    assert got.lag_ms.dtype == got.lag_event.dtype == np.int64


def test_edge_cases() -> None:
    ts = T0
    age = 30 * DAY
    # event 0: no chunks; event 1: one chunk per rule
    embedded = [ts - DAY, ts - DAY, ts - age, ts - age - 1, MISSING, ts - DAY, ts]
    source = [ts - DAY, MISSING, MISSING, MISSING, ts, ts - 2, ts + 5]
    got = chunk_staleness(
        i64([ts, ts]), i64([0, 0, 7]), i64(embedded), i64(source), i64([age, age])
    )
    assert got.n_chunks.tolist() == [0, 7]
    assert got.retrieval.tolist() == [False, True]
    assert got.stale_query.tolist() == [False, True]
    # equal times: not outdated; missing source: not outdated; exactly max age: not too old;
    # one ms older: too old; missing embedded_at: nothing known; source newer: outdated (x2)
    assert got.n_stale.tolist() == [0, 3]
    assert got.n_outdated.tolist() == [0, 2]
    assert got.lag_ms.tolist() == [2, -5]  # ts - source; source after the query: negative
    assert got.lag_event.tolist() == [1, 1]


def test_empty_batch() -> None:
    empty = np.zeros(0, dtype=np.int64)
    got = chunk_staleness(empty, i64([0]), empty, empty, empty)
    assert got.n_chunks.shape == got.lag_ms.shape == (0,)


@pytest.mark.parametrize(
    "args",
    [
        ([T0], [0, 1], [T0], [T0], []),  # max_age length
        ([T0], [0], [T0], [T0], [1]),  # offsets length
        ([T0], [0, 2], [T0], [T0], [1]),  # offsets end != chunks
        ([T0, T0], [0, 1, 0], [T0], [T0], [1, 1]),  # decreasing
        ([T0], [1, 1], [T0], [T0], [1]),  # does not start at 0
        ([T0], [0, 1], [T0], [T0, T0], [1]),  # chunk arrays differ
        ([T0], [0, 1], [T0], [T0], [-1]),  # negative age
        ([MISSING], [0, 1], [T0], [T0], [1]),  # ts would wrap
    ],
)
def test_validation(args: tuple[list[int], ...]) -> None:
    with pytest.raises(ValueError):
        chunk_staleness(*(i64(a) for a in args))


def test_validation_dtype() -> None:
    with pytest.raises(ValueError):
        chunk_staleness(np.array([T0], dtype=np.float64), i64([0, 0]), i64([]), i64([]), i64([1]))


def test_max_age_for() -> None:
    config = FreshnessConfig(max_age_days={"idx-fast": 1.5, "idx-slow": 90})
    versions = np.array(["idx-fast", None, "other", "idx-slow", "idx-fast", 7], dtype=object)
    got = max_age_for(config, versions)
    assert got.dtype == np.int64
    default = DEFAULT_MAX_AGE_MS
    assert got.tolist() == [36 * 3_600_000, default, default, 90 * DAY, 36 * 3_600_000, default]
    assert max_age_for(config, np.zeros(0, dtype=object)).shape == (0,)
    assert max_age_for(FreshnessConfig(default_max_age_days=2), versions[:1]).tolist() == [2 * DAY]
    with pytest.raises(ValueError):
        max_age_for(config, np.zeros((1, 1), dtype=object))


def test_config_validation() -> None:
    assert DEFAULT_MAX_AGE_MS == 30 * DAY
    config = FreshnessConfig()
    assert config.default_max_age_days == 30 and config.stale_share_threshold == 0.2
    assert config.min_count == 20 and config.max_age_days == {}
    for bad in (
        {"default_max_age_days": 0},
        {"default_max_age_days": float("inf")},
        {"max_age_days": {"x": -1}},
        {"max_age_days": {"x": float("nan")}},
        {"stale_share_threshold": 1.5},
        {"min_count": 0},
        {"unknown": 1},
    ):
        with pytest.raises(pydantic.ValidationError):
            FreshnessConfig.model_validate(bad)


def test_kernel_matches_its_python_source() -> None:
    ts = i64([T0, T0 + 5, T0 - 9])
    offsets = i64([0, 2, 2, 5])
    embedded = i64([T0 - 40 * DAY, T0 - 1, MISSING, T0 - 20, T0 - 10 * DAY])
    source = i64([MISSING, T0, T0 - 3, T0 - 50, T0 - 10 * DAY + 1])
    max_age = i64([30 * DAY, DAY, 9 * DAY])
    outs = []
    for fn in (fr._staleness_kernel, fr._staleness_kernel.py_func):
        arrays = (
            np.empty(3, np.int32),
            np.empty(3, np.int32),
            np.empty(5, np.int64),
            np.empty(5, np.int64),
        )
        n = fn(ts, offsets, embedded, source, max_age, np.int64(MISSING_MS), *arrays)
        outs.append(
            (
                n,
                arrays[0].tolist(),
                arrays[1].tolist(),
                arrays[2][:n].tolist(),
                arrays[3][:n].tolist(),
            )
        )
    assert outs[0] == outs[1]
    assert outs[0][0] == 2
