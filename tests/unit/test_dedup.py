"""Dedup on the stream clock: matches the reference model across batch cuts, idle expiry and
restore + rebuild; stays bounded in memory; checkpoints hold no ids."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_dedup import ReferenceDeduper

import llmops_stream.stream.core.dedup as dm
from llmops_stream.stream.core.dedup import Deduper, _fnv1a_pairs, dedup_keys, stable_hashes

H = 1_000  # short horizons keep the property tests fast; the width is ceil(H / generations)
YEAR = 365 * 86_400_000


def obj(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=object)


def check(
    d: Deduper, tenants: list[str], events: list[str], clocks: list[int], offs: list[int]
) -> list[bool]:
    return d.check(
        obj(tenants), obj(events), np.array(clocks, np.int64), np.array(offs, np.int64)
    ).tolist()


def one(d: Deduper, event: str, clock: int, offset: int) -> bool:
    return bool(check(d, ["t"], [event], [clock], [offset])[0])


def invariants(d: Deduper) -> None:
    """Every stored slot is counted under its tag; live ids are the live tags' counts."""
    assert d._tag_count.min() >= 0
    assert int(d._tag_count.sum()) == int(d._used.sum())
    assert int(d._used.sum()) <= 0.8 * int(d._caps.sum())


def restored(d: Deduper, sink: list[tuple[Any, int]], rng: random.Random) -> Deduper:
    """``d`` checkpointed and brought back: the ids of its rebuild range read from ``sink``
    (plus rows outside the range and repeats, in any order, in several calls)."""
    r = Deduper.restore(d.snapshot())
    span = r.rebuild_range()
    assert span == d.rebuild_range()
    rows = [row for row in sink if span and span[0] - 3 <= row[1] < span[1] + 3]
    rows += rng.sample(rows, min(len(rows), 3))
    rng.shuffle(rows)
    cut = rng.randint(0, len(rows))
    for part in (rows[:cut], rows[cut:]):
        keys = np.array([k for k, _ in part], np.uint64)
        r._rebuild_keys(keys, np.array([o for _, o in part], np.int64))
    assert r.rebuild_pending() == 0 and len(r) == len(d)
    assert r.snapshot() == d.snapshot()
    return r


# --------------------------------------------------------------------------- model


CLOCK_STEPS = [0, 0, 0, 1, 7, 62, 63, 64, H - 1, H, H + 63, 3 * H, 400 * H, YEAR]
Op = tuple[str, list[Any]]
op = st.one_of(
    st.tuples(
        st.just("batch"),
        st.lists(
            st.tuples(st.integers(0, 11), st.sampled_from(CLOCK_STEPS), st.integers(1, 3)),
            max_size=25,
        ),
    ),
    st.tuples(st.just("idle"), st.lists(st.tuples(st.sampled_from(CLOCK_STEPS)), max_size=2)),
    st.tuples(st.just("restore"), st.just([])),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(op, max_size=14), st.sampled_from([1, 4, 16]), st.integers(0, 2**32))
def test_matches_reference_with_cuts_idle_and_restore(
    ops: list[Op], generations: int, seed: int
) -> None:
    rng = random.Random(seed)
    ref = ReferenceDeduper(H, generations)
    plain = Deduper(H, generations=generations)  # never checkpointed
    d = Deduper(H, generations=generations)
    sink: list[tuple[Any, int]] = []  # (key, offset) of every inserted id, as llm_calls
    clock, offset = 10**12, 0
    for kind, items in ops:
        if kind == "restore":
            d = restored(d, sink, rng)
            continue
        if kind == "idle":
            for (step,) in items:
                clock += step
                ref.expire(clock)
                plain.expire(clock)
                d.expire(clock)
            assert len(d) == len(plain) == len(ref)
            continue
        tenants, ids, clocks, offs = [], [], [], []
        for key, step, gap in items:
            clock += step
            offset += gap
            tenants.append(["a", "tenant-ü"][key % 2])  # same event_id, other tenant: distinct
            ids.append(f"e{key // 2}")
            # a backdated clock value counts as the current clock (the clock never goes back)
            clocks.append(clock - 5 if rng.random() < 0.1 else clock)
            offs.append(offset)
        want = ref.check(zip(zip(tenants, ids, strict=True), clocks, strict=True))
        assert check(plain, tenants, ids, clocks, offs) == want
        got = check(d, tenants, ids, clocks, offs)
        assert got == want
        keys = dedup_keys(obj(tenants), obj(ids)).tolist() if ids else []
        sink += [(k, o) for k, o, dup in zip(keys, offs, got, strict=True) if not dup]
        assert len(d) == len(plain) == len(ref)
        assert d.snapshot() == plain.snapshot()
        invariants(d)
        invariants(plain)


def colliding_keys(n_distinct: int) -> list[int]:
    """Keys in two shards whose homes coincide: long probe chains, reuse, compaction."""
    return [
        (shard << 56) | (mid << 32) | low
        for shard in (0, 255)
        for mid in range(1, n_distinct // 6 + 2)
        for low in (0, 1, 0xFFFFFFFF)
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 80), st.sampled_from([0, 0, 1, 3, 40, 63, 64, H, 9 * H])),
            max_size=40,
        ),
        max_size=25,
    ),
    st.integers(0, 2**32),
)
def test_colliding_keys_and_tag_reuse_match_reference(
    batches: list[list[tuple[int, int]]], seed: int
) -> None:
    """Many generations (tags are reused many times over) and crowded shards."""
    rng = random.Random(seed)
    pool = colliding_keys(80)
    ref = ReferenceDeduper(H, 16)
    d = Deduper(H)
    sink: list[tuple[Any, int]] = []
    clock, offset = 0, 0
    for batch in batches:
        keys, clocks, offs = [], [], []
        for k, step in batch:
            clock += step
            offset += 1
            keys.append(pool[k % len(pool)])
            clocks.append(clock)
            offs.append(offset)
        want = ref.check(zip(keys, clocks, strict=True))
        got = d._check_keys(
            np.array(keys, np.uint64), np.array(clocks, np.int64), np.array(offs, np.int64)
        ).tolist()
        assert got == want
        sink += [(k, o) for k, o, dup in zip(keys, offs, got, strict=True) if not dup]
        assert len(d) == len(ref)
        invariants(d)
        if rng.random() < 0.2:
            d = restored(d, sink, rng)


@pytest.mark.parametrize("sweep", [dm._SWEEP_SHARDS, 0])
def test_one_batch_over_more_generations_than_tags(
    sweep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch crossing 1,500 generations: tags run out mid-batch and are purged and reused
    (``sweep`` 0: no round-robin compaction, so the fallback that compacts all shards)."""
    monkeypatch.setattr(dm, "_SWEEP_SHARDS", sweep)
    swept: list[int] = []
    sweep_all = Deduper._sweep_all

    def counted(self: Deduper, clock: int) -> None:
        swept.append(clock)
        sweep_all(self, clock)

    monkeypatch.setattr(Deduper, "_sweep_all", counted)
    rng = np.random.default_rng(4)
    # one key per generation, a different shard each time (each revisited 256 generations
    # later: dead tags are not reused before then), then a repeat of it or of the one before
    j = np.arange(1500, dtype=np.uint64)
    first = ((j % np.uint64(256)) << np.uint64(56)) | (j // np.uint64(256) + np.uint64(1))
    second = np.where(rng.random(1500) < 0.5, first, np.roll(first, 1))
    keys = np.stack([first, second], axis=1).reshape(-1)
    clocks = np.repeat(np.arange(1500, dtype=np.int64) * 63, 2) + rng.integers(0, 2, 3000)
    clocks = np.maximum.accumulate(clocks)
    d, ref = Deduper(H), ReferenceDeduper(H, 16)
    want = ref.check(zip(keys.tolist(), clocks.tolist(), strict=True))
    assert d._check_keys(keys, clocks, np.arange(3000, dtype=np.int64)).tolist() == want
    assert len(d) == len(ref) and sum(want) > 500
    invariants(d)
    assert bool(swept) == (sweep == 0)


# --------------------------------------------------------------------------- edge cases


def test_empty_batch_and_single_event() -> None:
    d = Deduper(H)
    assert check(d, [], [], [], []) == []
    assert len(d) == 0 and d.rebuild_range() is None
    assert one(d, "a", 5, 100) is False
    assert len(d) == 1 and d.rebuild_range() == (100, 101)
    assert one(d, "a", 6, 101) is True


def test_first_occurrence_wins_within_a_batch() -> None:
    d = Deduper(H)
    got = check(d, ["t", "t", "u", "t"], ["a", "a", "a", "b"], [0, 0, 0, 1], [0, 1, 2, 3])
    assert got == [False, True, False, False]
    assert len(d) == 3


def test_horizon_boundary_on_generation_end() -> None:
    """Remembered until the end of its generation plus the horizon, exactly."""
    d = Deduper(16_000)  # generations of 1,000 ms
    assert one(d, "x", 500, 0) is False  # generation [0, 1000): remembered until 17,000
    assert one(d, "x", 16_999, 1) is True
    assert one(d, "x", 17_000, 2) is False  # forgotten: counts again, from clock 17,000
    assert one(d, "x", 17_999 + 16_000, 3) is True
    d.expire(18_000 + 16_000)
    assert len(d) == 0
    assert one(d, "x", 34_000, 4) is False


def test_horizon_boundary_inside_one_batch() -> None:
    d = Deduper(16_000)
    got = check(d, ["t"] * 5, ["x"] * 5, [500, 16_999, 17_000, 17_001, 33_999], list(range(5)))
    assert got == [False, True, False, True, True]
    assert len(d) == 1 and d.rebuild_range() == (2, 3)
    invariants(d)


def test_repeats_do_not_extend_memory() -> None:
    d = Deduper(16_000)
    assert one(d, "x", 0, 0) is False
    assert one(d, "x", 16_500, 1) is True  # a duplicate does not refresh the id
    assert one(d, "x", 17_000, 2) is False


def test_backdated_clock_values_count_as_the_current_clock() -> None:
    """A clock value below the set's clock (a backdated event's) is the set's clock: it
    neither revives forgotten ids nor makes live ones expire early."""
    d = Deduper(16_000)
    assert one(d, "x", 100_000, 0) is False
    assert one(d, "x", 0, 1) is True  # counted at clock 100,000
    assert one(d, "y", 0, 2) is False  # inserted at clock 100,000, not 0
    assert one(d, "y", 116_999, 3) is True
    d.expire(5)  # an older clock changes nothing
    assert len(d) == 2 and d.clock_ms == 116_999


def test_clock_jump_of_years_empties_the_set() -> None:
    d = Deduper(3_600_000)
    n = 50_000
    keys = np.random.default_rng(1).integers(0, 2**64, n, dtype=np.uint64)
    d._check_keys(keys, np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64))
    assert len(d) > 0 and d.memory_bytes() > 400_000
    small = Deduper(3_600_000).memory_bytes()
    d.expire(10 * YEAR)
    assert len(d) == 0 and d.rebuild_range() is None and d.memory_bytes() == small
    # same through a batch whose clock jumped
    d._check_keys(keys[:1000], np.full(1000, 20 * YEAR, np.int64), np.arange(n, n + 1000))
    d._check_keys(keys[:1], np.array([40 * YEAR]), np.array([n + 1000]))
    assert len(d) == 1


def test_offsets_must_not_go_back_and_shapes_are_checked() -> None:
    d = Deduper(H)
    one(d, "a", 0, 10)
    with pytest.raises(ValueError, match="offsets"):
        one(d, "b", 0, 9)
    with pytest.raises(ValueError, match="offsets"):
        check(d, ["t", "t"], ["c", "d"], [0, 0], [12, 11])
    with pytest.raises(ValueError, match="length"):
        d.check(obj(["t"]), obj(["a", "b"]), np.zeros(1, np.int64), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="clock_ms"):
        d.check(obj(["t"]), obj(["a"]), np.zeros(2, np.int64), np.zeros(1, np.int64))
    with pytest.raises(ValueError):
        Deduper(0)


# --------------------------------------------------------------------------- checkpoints


def test_snapshot_holds_no_ids() -> None:
    sizes = []
    for n in (1_000, 1_000_000):
        d = Deduper()
        ids = obj([f"evt-{i}" for i in range(n)])
        offs = np.arange(n, dtype=np.int64)
        # clock spread over the same generations whatever n
        clocks = np.linspace(0, 3_599_999, n).astype(np.int64)
        assert not d.check(obj(["t"] * n), ids, clocks, offs).any()
        assert len(d) == n
        sizes.append(len(d.snapshot()))
    assert sizes[0] == sizes[1] < 500


def test_snapshot_equal_for_equal_states_and_restore_then_rebuild() -> None:
    a, b = Deduper(H), Deduper(H)
    for d in (a, b):
        check(d, ["t"] * 3, ["x", "y", "x"], [0, 70, 200], [1, 2, 3])
    assert a.snapshot() == b.snapshot()
    r = Deduper.restore(a.snapshot())
    assert len(r) == 0 and r.rebuild_range() == (1, 3) and r.rebuild_pending() == 2
    assert r.snapshot() == a.snapshot()
    with pytest.raises(RuntimeError, match="rebuild"):
        one(r, "x", 300, 4)
    with pytest.raises(RuntimeError, match="rebuild"):
        r.expire(300)
    r.rebuild(obj(["t"]), obj(["y"]), np.array([2]))
    assert r.rebuild_pending() == 1
    r.rebuild(obj(["t", "t"]), obj(["x", "zz"]), np.array([1, 3]))  # 3 is past the range
    assert r.rebuild_pending() == 0 and len(r) == 2
    assert one(r, "x", 300, 4) is True and one(r, "zz", 300, 5) is False
    with pytest.raises(RuntimeError, match="restore"):
        r.rebuild(obj([]), obj([]), np.zeros(0, np.int64))


def test_restore_of_an_empty_set_needs_no_rebuild() -> None:
    r = Deduper.restore(Deduper(H).snapshot())
    assert r.rebuild_range() is None
    assert one(r, "x", 0, 0) is False


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: b"not a snapshot",
        lambda s: b"",
        lambda s: s[:-1],
        lambda s: s[:20] + bytes([s[20] ^ 1]) + s[21:],
        lambda s: b"X" + s[1:],
        lambda s: s + b"\0",
    ],
)
def test_restore_rejects_garbage(mutate: Any) -> None:
    d = Deduper(H)
    check(d, ["t"] * 2, ["x", "y"], [0, 500], [1, 2])
    with pytest.raises(ValueError):
        Deduper.restore(mutate(d.snapshot()))


def test_restore_rejects_inconsistent_generations() -> None:
    d = Deduper(H)
    check(d, ["t"] * 2, ["x", "y"], [0, 500], [1, 2])
    head = dm._HEAD.size
    body = bytearray(d.snapshot()[: -dm._CRC.size])
    body[head + 24 : head + 32] = body[head : head + 8]  # two generations with one index
    body += dm._CRC.pack(dm.zlib.crc32(bytes(body)))
    with pytest.raises(ValueError, match="generations"):
        Deduper.restore(bytes(body))


# --------------------------------------------------------------------------- memory


def test_memory_flat_and_bytes_per_live_id() -> None:
    """1M new ids per horizon, streamed over 4 horizons: old ids expire while new ones come."""
    n, hour = 1_000_000, 3_600_000
    rng = np.random.default_rng(7)
    d = Deduper(hour)
    memory, per_id = [], []
    for h in range(4):
        for part in range(4):
            i = np.arange(n // 4, dtype=np.int64) + (4 * h + part) * (n // 4)
            keys = rng.integers(0, 2**64, i.shape[0], np.uint64)
            assert not d._check_keys(keys, i * hour // n, i).any()
        memory.append(d.memory_bytes())
        per_id.append(d.memory_bytes() / len(d))
        # about one horizon and a half generation of ids are live
        assert 0.99 * n <= len(d) <= n * 17 // 16
    assert max(memory[1:]) <= 1.1 * min(memory[1:]) and max(memory) <= 1.1 * memory[0]
    assert max(per_id) <= 16.0 and per_id[-1] <= 14.0
    # no shard ever holds over 1/64 of the set: a rehash never needs much extra memory
    assert int(d._caps.max()) * 8 < d.memory_bytes() / 64


# --------------------------------------------------------------------------- kernels


def test_tenant_scoped_and_stable_hash() -> None:
    h = stable_hashes(obj(["a", "b", "é"]), obj(["1", "1", "ü"]))
    assert len(set(h.tolist())) == 3
    x = 0xCBF29CE484222325  # FNV-1a 64 of "a\x1f1" computed by hand
    for byte in b"a\x1f1":
        x = ((x ^ byte) * 0x100000001B3) % 2**64
    assert int(h[0]) == x
    y = 0xCBF29CE484222325
    for byte in "é\x1fü".encode():
        y = ((y ^ byte) * 0x100000001B3) % 2**64
    assert int(h[2]) == y
    assert len(set(dedup_keys(obj(["a", "b", "é"]), obj(["1", "1", "ü"])).tolist())) == 3


def _dispatchers() -> dict[str, Any]:
    return {k: v for k, v in vars(dm).items() if hasattr(v, "py_func") and k.startswith("_")}


def test_every_kernel_is_covered_by_the_pure_python_run() -> None:
    assert set(_dispatchers()) == {
        "_fnv1a_pairs",
        "_home",
        "_compact",
        "_check",
        "_sweep",
        "_make_tables",
    }


def test_kernels_pure_python_match_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same results with every kernel run as plain Python (as without numba's JIT)."""
    rng = random.Random(3)
    pool = colliding_keys(60)
    steps = [0, 0, 1, 63, H, 50 * H]

    def go() -> tuple[list[bool], list[int], bytes, int]:
        d = Deduper(H)
        out: list[bool] = []
        lens = []
        sink: list[tuple[Any, int]] = []
        clock, offset = 0, 0
        for b in range(60):
            n = rng.randint(0, 30)
            clocks = np.cumsum([rng.choice(steps) for _ in range(n)], dtype=np.int64) + clock
            clock = int(clocks[-1]) if n else clock
            keys = [rng.choice(pool) for _ in range(n)]
            offs = list(range(offset, offset + n))
            dup = d._check_keys(np.array(keys, np.uint64), clocks, np.array(offs, np.int64))
            out += dup.tolist()
            sink += [(k, o) for k, o, x in zip(keys, offs, dup, strict=True) if not x]
            offset += n
            lens.append(len(d))
            if b % 20 == 19:
                d = restored(d, sink, rng)
        ids = obj([f"é{i % 7}" for i in range(40)])
        out += d.check(
            obj(["t"] * 40), ids, np.full(40, clock), np.arange(offset, offset + 40)
        ).tolist()
        return out, lens, d.snapshot(), d.memory_bytes()

    rng.seed(3)
    compiled = go()
    for name, disp in _dispatchers().items():
        monkeypatch.setattr(dm, name, disp.py_func)
    rng.seed(3)
    with np.errstate(over="ignore"):  # uint64 wrap-around is the point of FNV and the mixer
        plain = go()
    assert sum(compiled[0]) > 40 and plain == compiled


def test_fnv_kernel_python_equals_compiled() -> None:
    a = np.frombuffer("héllo".encode(), dtype=np.uint8)
    b = np.frombuffer(b"worldx", dtype=np.uint8)
    off_a = np.array([0, 3, 6], dtype=np.int64)
    off_b = np.array([0, 5, 6], dtype=np.int64)
    with np.errstate(over="ignore"):
        slow = _fnv1a_pairs.py_func(a, off_a, b, off_b)
    assert slow.tolist() == _fnv1a_pairs(a, off_a, b, off_b).tolist()
