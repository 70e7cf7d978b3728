"""Log-scale histograms against the per-value reference and exact order statistics."""

import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core import histograms as h

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_drift import ref_bin, ref_rank_value  # noqa: E402

SETTINGS = settings(deadline=None, max_examples=80)

values_f = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=1e12),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 1.0, 2.0**32 - 1, 2.0**32, 1e300, -0.0, -1.0]),
    ),
    max_size=60,
)


@SETTINGS
@given(values_f)
def test_bin_index_matches_reference_float(values: list[float]) -> None:
    arr = np.array(values, dtype=np.float64)
    got = h.bin_index(arr)
    assert got.dtype == np.int16
    assert got.tolist() == [ref_bin(v, h.BINS_PER_DOUBLING, h.N_BINS) for v in values]


@SETTINGS
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=60))
def test_bin_index_matches_reference_int(values: list[int]) -> None:
    got = h.bin_index(np.array(values, dtype=np.int64))
    assert got.tolist() == [ref_bin(float(v), h.BINS_PER_DOUBLING, h.N_BINS) for v in values]


def test_bins_are_narrow_and_edges_consistent() -> None:
    lower, upper = h.bin_lower_edges(), h.bin_upper_edges()
    assert lower.shape == upper.shape == (h.N_BINS,)
    assert lower[0] == 0.0 and math.isinf(upper[-1])
    assert np.all(upper[:-1] == lower[1:])
    ratio = (1 + upper[:-1]) / (1 + lower[:-1])
    assert np.all(ratio <= 1.091)
    # a value just inside each bin lands in it
    inside = lower + (np.minimum(upper, lower * 2 + 1) - lower) * 0.5
    assert h.bin_index(inside).tolist() == list(range(h.N_BINS))
    # 49.7 days of ms still resolved, beyond that open-ended
    assert h.bin_index(np.array([2.0**32 - 2, 2.0**40]))[1] == h.N_BINS - 1


def test_bin_index_empty_and_validation() -> None:
    assert h.bin_index(np.zeros(0)).shape == (0,)
    assert h.bin_index(np.array([1, 2], dtype=np.int32)).tolist() == [8, 12]
    with pytest.raises(ValueError):
        h.bin_index(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        h.bin_index(np.array(["a"]))


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(-1, h.N_BINS - 1), st.integers(0, 4)), max_size=80),
)
def test_bin_counts_matches_counter(pairs: list[tuple[int, int]]) -> None:
    bins = np.array([b for b, _ in pairs], dtype=np.int16)
    group = np.array([g for _, g in pairs], dtype=np.int64)
    got = h.bin_counts(bins, group, 5)
    assert got.dtype == np.uint64 and got.shape == (5, h.N_BINS)
    expected = Counter((g, b) for b, g in pairs if b >= 0)
    for (g, b), n in expected.items():
        assert got[g, b] == n
    assert int(got.sum()) == sum(expected.values())


def test_bin_counts_merge_by_addition() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(6, 2, 5000)
    group = rng.integers(0, 7, 5000)
    bins = h.bin_index(values)
    whole = h.bin_counts(bins, group, 7)
    parts = h.bin_counts(bins[:1234], group[:1234], 7) + h.bin_counts(bins[1234:], group[1234:], 7)
    assert np.array_equal(whole, parts)


def test_bin_counts_validation() -> None:
    with pytest.raises(ValueError):
        h.bin_counts(np.array([1, 2]), np.array([0]), 1)
    with pytest.raises(ValueError):
        h.bin_counts(np.array([1]), np.array([3]), 2)
    with pytest.raises(ValueError):
        h.bin_counts(np.array([h.N_BINS]), np.array([0]), 1)
    with pytest.raises(ValueError):
        h.bin_counts(np.array([1.0]), np.array([0]), 1)
    assert h.bin_counts(np.zeros(0, np.int16), np.zeros(0, np.int64), 3).sum() == 0


@SETTINGS
@given(
    st.lists(st.floats(min_value=0, max_value=1e9), min_size=1, max_size=200),
    st.sampled_from([0.0, 0.01, 0.5, 0.9, 0.99, 1.0]),
)
def test_quantile_lands_in_bin_of_exact_order_statistic(values: list[float], q: float) -> None:
    hist = h.bin_counts(h.bin_index(np.array(values)), np.zeros(len(values), np.int64), 1)[0]
    got = h.quantile(hist, q)
    exact = ref_rank_value(values, q)
    assert ref_bin(got) == ref_bin(exact)
    assert abs((1 + got) - (1 + exact)) <= 0.05 * (1 + exact)


def test_quantile_edge_cases() -> None:
    empty = np.zeros(h.N_BINS, dtype=np.uint64)
    assert math.isnan(h.quantile(empty, 0.5))
    last = empty.copy()
    last[-1] = 3
    assert h.quantile(last, 0.99) == h.bin_lower_edges()[-1]
    with pytest.raises(ValueError):
        h.quantile(empty, 1.5)
    with pytest.raises(ValueError):
        h.quantile(np.zeros(3, np.uint64), 0.5)


def test_kernels_match_their_python_source() -> None:
    values = np.array([0.0, 1.0, np.nan, -3.0, 1e20, 123.4, np.inf])
    compiled = np.empty(values.shape[0], np.int16)
    python = np.empty(values.shape[0], np.int16)
    h._bin_index_kernel(values, compiled)
    h._bin_index_kernel.py_func(values, python)
    assert np.array_equal(compiled, python)
    bins = np.array([0, 5, -1, 5, 255], dtype=np.int64)
    group = np.array([0, 1, 1, 1, 0], dtype=np.int64)
    a = np.zeros((2, h.N_BINS), np.uint64)
    b = np.zeros((2, h.N_BINS), np.uint64)
    h._bin_counts_kernel(bins, group, a)
    h._bin_counts_kernel.py_func(bins, group, b)
    assert np.array_equal(a, b)
