"""Per-minute aggregation against a dict-based reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.aggregate import (
    USAGE_COUNTERS,
    USAGE_KEYS,
    _group_sum,
    factorize_rows,
    group_sum,
    usage_rows,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2**40)), max_size=50))
def test_group_sum_reference(rows: list[tuple[int, int]]) -> None:
    g = np.array([r[0] for r in rows], dtype=np.int64)
    v = np.array([[r[1] for r in rows], [1] * len(rows)], dtype=np.int64).reshape(2, len(rows))
    out = group_sum(g, v, 5)
    for k in range(5):
        assert out[0, k] == sum(r[1] for r in rows if r[0] == k)
        assert out[1, k] == sum(1 for r in rows if r[0] == k)
    assert (_group_sum.py_func(g, v, 5) == out).all()


def test_factorize_rows_groups_equal_tuples() -> None:
    a = np.array(["x", "y", "x", "x"], dtype=object)
    b = np.array([1, 1, 1, 2])
    key, first = factorize_rows([a, b])
    assert key[0] == key[2] and len({key[0], key[1], key[3]}) == 3
    assert len(first) == 3


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["t1", "t2"]),
            st.sampled_from(["a", ""]),
            st.integers(0, 10**12),
            st.floats(0, 1e3),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_usage_rows_reference(rows: list[tuple[int, str, str, int, float]]) -> None:
    n = len(rows)
    minute = np.array([r[0] * 60_000 for r in rows], dtype=np.int64)
    keys = {k: np.array(["m"] * n, dtype=object) for k in USAGE_KEYS}
    keys["tenant_id"] = np.array([r[1] for r in rows], dtype=object)
    keys["app"] = np.array([r[2] for r in rows], dtype=object)
    counters = {k: np.zeros(n, dtype=np.int64) for k in USAGE_COUNTERS}
    counters["calls"] = np.ones(n, dtype=np.int64)
    counters["input_tokens"] = np.array([r[3] for r in rows], dtype=np.int64)
    cost = np.array([r[4] for r in rows])
    out = usage_rows(
        minute,
        keys=keys,
        counters=counters,
        cost_usd=cost,
        latency_ms=np.full(n, 5.0),
        lag_ms=np.zeros(0, np.int64),
        lag_event=np.zeros(0, np.int64),
    )
    ref: dict[tuple[int, str, str], list[float]] = {}
    for m, t, a, tok, c in rows:
        acc = ref.setdefault((m * 60, t, a), [0, 0, 0.0])
        acc[0] += 1
        acc[1] += tok
        acc[2] += c
    got = {
        (int(out["minute"][i]), out["tenant_id"][i], out["app"][i]): [
            int(out["calls"][i]),
            int(out["input_tokens"][i]),
            float(out["cost_usd"][i]),
        ]
        for i in range(len(out["minute"]))
    }
    assert got.keys() == ref.keys()
    for k, (calls, tok, c) in ref.items():
        assert got[k][:2] == [calls, tok]
        assert abs(got[k][2] - c) <= 1e-9 * max(1.0, c)
    assert sum(sum(h) for h in out["latency_hist"]) == n
