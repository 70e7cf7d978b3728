"""Dedup: first occurrence wins, within and across batches, and survives snapshot/restore."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.dedup import Deduper, _fnv1a_pairs, stable_hashes

H = 3_600_000


def reference(events: list[tuple[str, str, int]], horizon_h: int) -> list[bool]:
    seen: dict[tuple[str, str], int] = {}
    max_hour = None
    out = []
    for t, e, ts in events:
        hour = ts // H
        max_hour = hour if max_hour is None else max(max_hour, hour)
        dup = (t, e) in seen
        out.append(dup)
        seen[(t, e)] = max(seen.get((t, e), hour), hour)
    return out


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "ü"]),
            st.sampled_from(["1", "2", "3", "x" * 50]),
            st.integers(0, 5 * H),
        ),
        max_size=60,
    ),
    st.integers(1, 7),
)
def test_matches_reference_any_split(events: list[tuple[str, str, int]], parts: int) -> None:
    d = Deduper(horizon_ms=1000 * H, capacity=4)
    got: list[bool] = []
    cuts = np.linspace(0, len(events), parts + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        chunk = events[a:b]
        got += d.check(
            np.array([c[0] for c in chunk], dtype=object),
            np.array([c[1] for c in chunk], dtype=object),
            np.array([c[2] for c in chunk], dtype=np.int64),
        ).tolist()
    assert got == reference(events, 1000)


def test_snapshot_restore_and_horizon() -> None:
    d = Deduper(horizon_ms=2 * H, capacity=16)
    t = np.array(["a"], dtype=object)
    assert d.check(t, np.array(["e1"], dtype=object), np.array([0])).tolist() == [False]
    d2 = Deduper.restore(d.snapshot())
    assert d2.check(t, np.array(["e1"], dtype=object), np.array([H])).tolist() == [True]
    # push event time far ahead and force a rebuild: e1 expires, so it counts again
    ids = np.array([f"n{i}" for i in range(64)], dtype=object)
    d2.check(np.array(["a"] * 64, dtype=object), ids, np.full(64, 10 * H))
    assert d2.check(t, np.array(["e1"], dtype=object), np.array([10 * H])).tolist() == [False]


def test_tenant_scoped_and_stable_hash() -> None:
    h = stable_hashes(
        np.array(["a", "b", "é"], dtype=object), np.array(["1", "1", "ü"], dtype=object)
    )
    assert len(set(h.tolist())) == 3
    # FNV-1a 64 of "a\x1f1" computed by hand
    x = 0xCBF29CE484222325
    for byte in b"a\x1f1":
        x = ((x ^ byte) * 0x100000001B3) % 2**64
    assert int(h[0]) == x
    y = 0xCBF29CE484222325
    for byte in "é\x1fü".encode():
        y = ((y ^ byte) * 0x100000001B3) % 2**64
    assert int(h[2]) == y


def test_kernel_python_equals_compiled() -> None:
    a = np.frombuffer("héllo".encode(), dtype=np.uint8)
    b = np.frombuffer(b"worldx", dtype=np.uint8)
    off_a = np.array([0, 3, 6], dtype=np.int64)
    off_b = np.array([0, 5, 6], dtype=np.int64)
    with np.errstate(over="ignore"):  # uint64 wrap-around is the point of FNV
        slow = _fnv1a_pairs.py_func(a, off_a, b, off_b)
    assert slow.tolist() == _fnv1a_pairs(a, off_a, b, off_b).tolist()
