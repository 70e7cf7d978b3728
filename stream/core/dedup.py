"""Deduplication of app retries: a repeated ``event_id`` of a tenant counts once.

**What counts as a repeat.** Each (tenant_id, event_id) is hashed to 64 bits (FNV-1a, stable
across processes, then a bijective mixer so every bit is well spread). An id is remembered
from its first occurrence at stream-clock time ``c`` until the clock reaches the end of the
*generation* holding ``c`` plus the horizon: generations are fixed slices of clock time of
width ``ceil(horizon / 16)`` (epoch aligned; 16 = ``GENERATIONS``). An id is thus remembered
for at least one horizon and at most one horizon plus one generation (+6.25 %) of *clock*
time, whatever its own ``ts`` says. A repeat arriving while its id is remembered is a
duplicate and changes nothing (first occurrence wins, also within one batch); once
forgotten, it counts as new.

**Layout.** 256 shards (the top 8 bits of the hash) of open-addressing tables with linear
probing, one ``uint64`` per slot. Because the shard already fixes the top 8 bits of a key,
those bits of a slot hold the key's generation *tag* instead, so a slot keeps the full
64-bit identity and its generation in 8 bytes. Expiring a generation is O(1): its tag is
marked dead; dead slots are reused by later inserts on their probe path and dropped when
their shard is compacted (when it reaches 80 % load, and round-robin, a few shards per new
generation, so that every dead tag is purged long before its number is reused). Each shard
grows or shrinks alone, so a rehash never needs more than one shard's worth of extra
memory (1/256 of the set).

**Memory per live id.** A compacted shard holds its live ids at 60 % load (50 % while it
grows), and compacts at 80 % (live + dead), so a slot costs 8 / 0.6 = 13.3 bytes per live
id in steady state (10--16 bytes while growing); ``bench/soak.py`` measures ~13.5 B.

**Collision risk.** Keys are compared on all 64 bits, so a new id is taken for a duplicate
(and lost) with probability ``live_ids / 2**64`` per lookup: 3.3e-13 at 6M live ids (one
lost event in ~3e12), 2e-11 at 360M (1 h at 100,000 events/s: one in ~5e10).

**Checkpoints hold no ids.** :meth:`Deduper.snapshot` writes the horizon, the clock and,
per live generation, its index (which fixes its clock range), the source offset of its
first id and its id count: a few hundred bytes whatever the number of live ids. After
:meth:`Deduper.restore` the set is empty; the ids of the source offsets
:meth:`Deduper.rebuild_range` are read back from the sink (they are exactly the inserted
ids) and given to :meth:`Deduper.rebuild`, which puts each id into the generation its
offset falls in. The result then behaves exactly as the uninterrupted set, and snapshots
equal bytes when the states are equal (a CRC guards against corrupted input).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
from numba.typed import List as TypedList

from ._numba import njit
from .strbuf import utf8_buffer

GENERATIONS = 16
"""Generations per horizon (a generation is ``ceil(horizon / GENERATIONS)`` of clock)."""
MAX_GENERATIONS = 64  # live generations (<= this + 2) must leave most of the 255 tags free

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_SHIFT = np.uint64(56)  # top 8 bits: shard of a key, tag of a slot
_LOW = np.uint64((1 << 56) - 1)
_LO32 = np.uint64(0xFFFFFFFF)
_NSHARDS = 256
_NTAGS = 256  # tag 0 never used: a slot of 0 is empty
_MIN_CAP = 8
_SWEEP_SHARDS = 4  # shards compacted per new generation: all of them every 64 generations
_DEAD = np.iinfo(np.int64).min  # expiry clock of a free or dead tag: dead at every clock
_NO_TIME = int(np.iinfo(np.int64).min)
_CLOCK_LIMIT = 1 << 62  # keeps (generation + 1) * width + horizon inside int64

_MAGIC = b"LSDEDUP1"
_HEAD = struct.Struct("<8sqqqqq")  # magic, horizon, generations, clock, end offset, n gens
_CRC = struct.Struct("<I")
Arr = np.ndarray


# --------------------------------------------------------------------------- kernels


@njit
def _fnv1a_pairs(buf_a: Arr, off_a: Arr, buf_b: Arr, off_b: Arr) -> Arr:  # pragma: no cover - jit
    """FNV-1a 64 of ``a[i] + b"\x1f" + b[i]`` for every i; 0 is remapped to 1."""
    n = off_a.shape[0] - 1
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        h = _FNV_OFFSET
        for j in range(off_a[i], off_a[i + 1]):
            h = (h ^ np.uint64(buf_a[j])) * _FNV_PRIME
        h = (h ^ np.uint64(0x1F)) * _FNV_PRIME
        for j in range(off_b[i], off_b[i + 1]):
            h = (h ^ np.uint64(buf_b[j])) * _FNV_PRIME
        out[i] = h if h != 0 else np.uint64(1)
    return out


@njit
def _home(word: Any, cap: int) -> int:  # pragma: no cover - jit
    """First slot of a key in a table of ``cap`` slots (multiply-shift on its low 32 bits)."""
    return int((np.int64(word & _LO32) * cap) >> 32)


@njit
def _compact(tab: Arr, clock: int, exp: Arr, cnt: Arr) -> tuple[Arr, int]:  # pragma: no cover
    """A new table with the slots of ``tab`` live at ``clock``; dead ones leave ``cnt``."""
    cap = tab.shape[0]
    live = 0
    for j in range(cap):
        w = tab[j]
        if w != 0 and clock < exp[np.int64(w >> _SHIFT)]:
            live += 1
    # Mostly live: the shard is growing, leave room (50 % load) so it does not rehash soon.
    # Mostly dead: the shard holds a steady population, 60 % load keeps it compact.
    new_cap = live * 2 if live * 10 > cap * 7 else (live * 5) // 3 + 1
    new_cap = max(new_cap, _MIN_CAP)
    out = np.zeros(new_cap, np.uint64)
    for j in range(cap):
        w = tab[j]
        if w == 0:
            continue
        t = np.int64(w >> _SHIFT)
        if clock < exp[t]:
            k = _home(w, new_cap)
            while out[k] != 0:
                k += 1
                if k == new_cap:
                    k = 0
            out[k] = w
        else:
            cnt[t] -= 1
    return out, live


@njit
def _check(  # noqa: PLR0917 - numba kernels take plain positional arrays
    tabs: Any, used: Arr, caps: Arr, exp: Arr, cnt: Arr, keys: Arr, clocks: Arr, tags: Arr, dup: Arr
) -> None:  # pragma: no cover - jit
    """Look up and insert ``keys`` in order; ``dup[i]`` set for repeats of a live key.

    State: ``tabs`` the shards' tables, ``used`` their non-empty slots, ``caps`` their
    sizes; per tag ``exp`` its expiry clock and ``cnt`` the slots holding it. A key is live
    while ``clocks[i] < exp[tag]``. A new key goes to the first dead slot on its probe path
    (or the empty slot ending it), with tag ``tags[i]``.
    """
    for i in range(keys.shape[0]):
        key = keys[i]
        c = clocks[i]
        s = np.int64(key >> _SHIFT)
        tab = tabs[s]
        if (used[s] + 1) * 5 > tab.shape[0] * 4:  # keep load <= 80 %: probes stay short
            tab, live = _compact(tab, c, exp, cnt)
            tabs[s] = tab
            used[s] = live
            caps[s] = tab.shape[0]
        cap = tab.shape[0]
        low = key & _LOW
        j = _home(key, cap)
        free = -1
        w = tab[j]
        while w != 0 and (w & _LOW) != low:
            if free < 0 and c >= exp[np.int64(w >> _SHIFT)]:
                free = j
            j += 1
            if j == cap:
                j = 0
            w = tab[j]
        word = (np.uint64(tags[i]) << _SHIFT) | low
        if w != 0:
            t = np.int64(w >> _SHIFT)
            if c < exp[t]:
                dup[i] = True
                continue
            cnt[t] -= 1  # the key was forgotten: it counts again, in its new generation
            tab[j] = word
        elif free >= 0:
            cnt[np.int64(tab[free] >> _SHIFT)] -= 1
            tab[free] = word
        else:
            tab[j] = word
            used[s] += 1
        cnt[tags[i]] += 1


@njit
def _sweep(  # noqa: PLR0917 - numba kernels take plain positional arrays
    tabs: Any, used: Arr, caps: Arr, exp: Arr, cnt: Arr, first: int, count: int, clock: int
) -> None:  # pragma: no cover - jit
    """Compact ``count`` shards from ``first`` on (cyclically) at ``clock``."""
    n = used.shape[0]
    for k in range(count):
        s = (first + k) % n
        tab, live = _compact(tabs[s], clock, exp, cnt)
        tabs[s] = tab
        used[s] = live
        caps[s] = tab.shape[0]


# --------------------------------------------------------------------------- keys


def stable_hashes(tenant_ids: Arr, event_ids: Arr) -> Arr:
    """uint64[n] FNV-1a of ``tenant_id + "\x1f" + event_id`` (UTF-8) for each event."""
    if len(tenant_ids) != len(event_ids):
        raise ValueError("tenant_ids and event_ids differ in length")
    buf_a, off_a = utf8_buffer(list(tenant_ids))
    buf_b, off_b = utf8_buffer(list(event_ids))
    return _fnv1a_pairs(buf_a, off_a, buf_b, off_b)


def dedup_keys(tenant_ids: Arr, event_ids: Arr) -> Arr:
    """uint64[n] keys the set stores: :func:`stable_hashes` through a bijective finalizer
    (murmur3's fmix64: no two hashes meet, and the bits used for shards and slots are
    well mixed, which FNV's are not). Array arithmetic wraps around without warnings."""
    x = stable_hashes(tenant_ids, event_ids)
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


def _int64(values: Any, n: int, name: str) -> Arr:
    arr = np.asarray(values)
    if arr.shape != (n,) or (n and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be an integer array of length {n}")
    return arr.astype(np.int64, copy=False)


def _keys_and_offsets(tenant_ids: Arr, event_ids: Arr, offsets: Arr) -> tuple[Arr, Arr]:
    if len(tenant_ids) != len(event_ids):
        raise ValueError("tenant_ids and event_ids differ in length")
    keys = dedup_keys(tenant_ids, event_ids) if len(event_ids) else np.zeros(0, np.uint64)
    return keys, _int64(offsets, len(keys), "offsets")


def _new_tables() -> Any:
    """The shards' empty tables, as a numba typed list (built by a cached kernel: building
    it from Python compiles numba's own list helpers anew in every process, ~2.5 s)."""
    return _make_tables(_NSHARDS, _MIN_CAP)


@njit
def _make_tables(n: int, cap: int) -> Any:  # pragma: no cover - jit
    tabs = TypedList()
    for _ in range(n):
        tabs.append(np.zeros(cap, np.uint64))
    return tabs


# --------------------------------------------------------------------------- the set


class Deduper:
    """Set of recently seen (tenant, event_id) on the stream clock; see the module doc.

    :meth:`check` returns a bool[n] mask of duplicates and remembers the new ids.
    ``generations``: generations per horizon (tests and tuning; 16 by default).
    """

    def __init__(self, horizon_ms: int = 3_600_000, *, generations: int = GENERATIONS) -> None:
        if int(horizon_ms) < 1 or int(horizon_ms) > _CLOCK_LIMIT:
            raise ValueError("horizon_ms must be in 1..2**62")
        if not 1 <= int(generations) <= MAX_GENERATIONS:
            raise ValueError(f"generations must be in 1..{MAX_GENERATIONS}")
        self.horizon_ms = int(horizon_ms)
        self.generations = int(generations)
        self.gen_ms = -(-self.horizon_ms // self.generations)
        self._tables = _new_tables()
        self._used = np.zeros(_NSHARDS, np.int64)  # non-empty slots (live or dead) per shard
        self._caps = np.full(_NSHARDS, _MIN_CAP, np.int64)
        self._expire_at = np.full(_NTAGS, _DEAD, np.int64)  # per tag; _DEAD when not live
        self._tag_count = np.zeros(_NTAGS, np.int64)  # slots holding each tag
        self._clock = _NO_TIME
        self._last_offset = _NO_TIME  # offsets must never go back (rebuild relies on it)
        self._end_offset = 0  # last inserted offset + 1
        # live generations, oldest first: index, tag, source offset of the first id
        self._gen: list[int] = []
        self._tag: list[int] = []
        self._first: list[int] = []
        self._sweep_next = 0
        # between restore() and the first check()/expire(): the restored snapshot
        self._restored: bytes | None = None
        self._expected = 0
        self._rebuilt = False

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return int(self._tag_count[self._tag].sum()) if self._tag else 0

    @property
    def clock_ms(self) -> int:
        """The set's clock (the largest clock seen; ``NO_TIME`` before any)."""
        return self._clock

    def memory_bytes(self) -> int:
        """Bytes held by the set's arrays (tables and per-shard/per-tag bookkeeping)."""
        small = self._used.nbytes + self._caps.nbytes + self._expire_at.nbytes
        return int(self._caps.sum()) * 8 + small + self._tag_count.nbytes

    def rebuild_range(self) -> tuple[int, int] | None:
        """Source offsets ``[from, to)`` holding the live ids; None if nothing is live."""
        return (self._first[0], self._end_offset) if self._gen else None

    def rebuild_pending(self) -> int:
        """Ids the restored snapshot lists that :meth:`rebuild` has not put back (0 = done)."""
        return max(0, self._expected - len(self)) if self._restored is not None else 0

    # ------------------------------------------------------------------ updates

    def check(self, tenant_ids: Arr, event_ids: Arr, clock_ms: Arr, offsets: Arr) -> Arr:
        """Duplicate mask (bool[n]) of events in stream order; remembers the new ids.

        ``tenant_ids``/``event_ids``: object[n] of str; ``clock_ms``: int64[n] stream clock
        right after each event (a value below the set's clock is taken as its clock: the
        clock never goes back); ``offsets``: int64[n] source offsets, never decreasing
        (ValueError otherwise). Also forgets what expires by ``clock_ms[-1]``.
        """
        keys, offs = _keys_and_offsets(tenant_ids, event_ids, offsets)
        return self._check_keys(keys, _int64(clock_ms, len(keys), "clock_ms"), offs)

    def expire(self, clock_ms: int) -> None:
        """Forget the ids whose generation end + horizon <= ``clock_ms`` (clock moves on)."""
        self._leave_rebuild()
        clock = int(clock_ms)
        if clock > _CLOCK_LIMIT:
            raise ValueError("clock_ms out of range")
        if clock > self._clock:
            self._clock = clock
            self._expire(clock)

    def _check_keys(self, keys: Arr, clock: Arr, offsets: Arr) -> Arr:
        """:meth:`check` on keys from :func:`dedup_keys` (or any well-mixed uint64)."""
        n = keys.shape[0]
        dup = np.zeros(n, np.bool_)
        if n == 0:
            return dup
        self._leave_rebuild()
        if keys.dtype != np.uint64 or clock.dtype != np.int64 or offsets.dtype != np.int64:
            raise ValueError("keys must be uint64, clocks and offsets int64")
        if offsets[0] < self._last_offset or np.any(offsets[1:] < offsets[:-1]):
            raise ValueError("source offsets went back")
        if clock[0] < self._clock:
            clock = clock.copy()
            clock[0] = self._clock
        clock = np.maximum.accumulate(clock)
        if clock[-1] > _CLOCK_LIMIT or clock[0] < -_CLOCK_LIMIT:
            raise ValueError("clock_ms out of range")
        gens = clock // self.gen_ms
        bounds = [0, *(np.flatnonzero(gens[1:] != gens[:-1]) + 1).tolist(), n]
        run = 0
        while run < len(bounds) - 1:  # usually once: a batch spans one or two generations
            run = self._check_runs((keys, clock, offsets, gens, dup), bounds, run)
        self._clock = int(clock[-1])
        self._last_offset = int(offsets[-1])
        self._expire(self._clock)
        return dup

    def _check_runs(self, cols: tuple[Arr, Arr, Arr, Arr, Arr], bounds: list[int], run: int) -> int:
        """Check the runs (one generation each) from ``run`` on, as far as free tags allow.

        ``cols``: the batch's keys, clocks, offsets and generations, then its output mask.
        """
        keys, clock, offsets, gens, dup = cols
        a = bounds[run]
        self._expire(int(clock[a]))
        free = self._free_tags()
        run_tags: list[int] = []
        fresh: list[tuple[int, int, int]] = []  # (run, generation, tag) of new generations
        end = run
        while end < len(bounds) - 1:
            g = int(gens[bounds[end]])
            if self._gen and self._gen[-1] == g:
                run_tags.append(self._tag[-1])
            else:
                if not free:
                    if end > run:
                        break  # check these first, later runs then find their tags freed
                    self._sweep_all(int(clock[a]))
                    free = self._free_tags()
                tag = free.pop()
                self._expire_at[tag] = (g + 1) * self.gen_ms + self.horizon_ms
                fresh.append((end, g, tag))
                run_tags.append(tag)
            end += 1
        b = bounds[end]
        tags = np.repeat(np.array(run_tags, np.int64), np.diff(bounds[run : end + 1]))
        _check(*self._state(), keys[a:b], clock[a:b], tags, dup[a:b])
        new = np.flatnonzero(~dup[a:b])
        if new.size:
            self._end_offset = int(offsets[a + new[-1]]) + 1
        for r, g, tag in fresh:
            x, y = bounds[r], bounds[r + 1]
            first = int(np.argmin(dup[x:y]))  # first False: the generation's first id
            if self._tag_count[tag] == 0 or dup[x + first]:
                self._expire_at[tag] = _DEAD  # nothing inserted: the tag goes back
                continue
            self._gen.append(g)
            self._tag.append(tag)
            self._first.append(int(offsets[x + first]))
            _sweep(*self._state(), self._sweep_next, _SWEEP_SHARDS, int(clock[b - 1]))
            self._sweep_next = (self._sweep_next + _SWEEP_SHARDS) % _NSHARDS
        return end

    def _state(self) -> tuple[Any, Arr, Arr, Arr, Arr]:
        """The arrays every kernel works on: tables, per-shard used/caps, per-tag state."""
        return self._tables, self._used, self._caps, self._expire_at, self._tag_count

    def _free_tags(self) -> list[int]:
        """Tags no live generation uses and no slot holds, highest first (pop() = lowest)."""
        free = np.flatnonzero((self._expire_at == _DEAD) & (self._tag_count == 0))
        return free[free > 0][::-1].tolist()

    def _sweep_all(self, clock: int) -> None:
        """Compact every shard: purges every dead tag (rare: tags ran out after clock jumps)."""
        _sweep(*self._state(), 0, _NSHARDS, clock)

    def _expire(self, clock: int) -> None:
        k = 0
        while k < len(self._gen) and self._expire_at[self._tag[k]] <= clock:
            self._expire_at[self._tag[k]] = _DEAD
            k += 1
        if k:
            del self._gen[:k], self._tag[:k], self._first[:k]
        if not self._gen and self._used.any():
            self._tables = _new_tables()  # all gone: give the memory back
            self._used[:] = 0
            self._caps[:] = _MIN_CAP
            self._tag_count[:] = 0

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> bytes:
        """Metadata only (no ids): a few hundred bytes whatever the number of live ids."""
        if self._restored is not None:
            return self._restored  # still the restored state until events move it on
        gens = np.zeros((len(self._gen), 3), dtype="<i8")
        if self._gen:
            gens[:, 0] = self._gen
            gens[:, 1] = self._first
            gens[:, 2] = self._tag_count[self._tag]
        end = self._end_offset if self._gen else 0
        body = _HEAD.pack(
            _MAGIC, self.horizon_ms, self.generations, self._clock, end, len(self._gen)
        )
        body += gens.tobytes()
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def restore(cls, data: bytes) -> Deduper:
        """An empty set awaiting :meth:`rebuild` of :meth:`rebuild_range`; ValueError on junk."""
        horizon, generations, clock, end, gens = _parse(data)
        d = cls(horizon, generations=generations)
        d._clock = clock
        d._restored = bytes(data)
        if gens.shape[0]:
            d._gen = gens[:, 0].tolist()
            d._first = gens[:, 1].tolist()
            d._tag = list(range(1, gens.shape[0] + 1))
            d._expire_at[d._tag] = (gens[:, 0] + 1) * d.gen_ms + horizon
            d._end_offset = end
            d._last_offset = end - 1
            d._expected = int(gens[:, 2].sum())
        return d

    def rebuild(self, tenant_ids: Arr, event_ids: Arr, offsets: Arr) -> None:
        """Put back the ids inserted at source ``offsets`` (any order, in one or more calls).

        Call after :meth:`restore` and before the first :meth:`check`/:meth:`expire`, with the
        (tenant_id, event_id, offset) of every row written from :meth:`rebuild_range`; rows
        outside that range are ignored, repeated rows are harmless.
        """
        self._rebuild_keys(*_keys_and_offsets(tenant_ids, event_ids, offsets))

    def _rebuild_keys(self, keys: Arr, offsets: Arr) -> None:
        """:meth:`rebuild` on keys from :func:`dedup_keys`."""
        if self._restored is None:
            raise RuntimeError("rebuild() is only valid after restore(), before check()")
        self._rebuilt = True
        span = self.rebuild_range()
        if span is None or keys.shape[0] == 0:
            return
        keep = (offsets >= span[0]) & (offsets < span[1])
        keys, offsets = keys[keep], offsets[keep]
        # the generation of an id is the last one whose first offset is <= the id's offset
        idx = np.searchsorted(np.array(self._first, np.int64), offsets, side="right") - 1
        tags = np.array(self._tag, np.int64)[idx]
        clocks = np.full(keys.shape[0], self._clock, np.int64)
        dup = np.zeros(keys.shape[0], np.bool_)
        _check(*self._state(), keys, clocks, tags, dup)

    def _leave_rebuild(self) -> None:
        if self._restored is None:
            return
        if self._gen and not self._rebuilt:
            raise RuntimeError("restored set: call rebuild() with rebuild_range()'s ids first")
        self._restored = None


def _parse(data: bytes) -> tuple[int, int, int, int, Arr]:
    """Fields of a snapshot, validated (ValueError on anything else)."""
    raw = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b""
    if len(raw) < _HEAD.size + _CRC.size or raw[:8] != _MAGIC:
        raise ValueError("not a dedup snapshot")
    if _CRC.unpack(raw[-_CRC.size :])[0] != zlib.crc32(raw[: -_CRC.size]):
        raise ValueError("dedup snapshot corrupted (checksum)")
    _, horizon, generations, clock, end, ngens = _HEAD.unpack(raw[: _HEAD.size])
    if not (0 <= ngens < _NTAGS and len(raw) == _HEAD.size + 24 * ngens + _CRC.size):
        raise ValueError("dedup snapshot corrupted (length)")
    if not (1 <= horizon <= _CLOCK_LIMIT and 1 <= generations <= MAX_GENERATIONS):
        raise ValueError("dedup snapshot corrupted (horizon)")
    gens = np.frombuffer(raw, "<i8", ngens * 3, _HEAD.size).reshape(ngens, 3).astype(np.int64)
    idx, first, count = (gens[:, k].tolist() for k in range(3))
    width = -(-horizon // generations)
    # generations in order, each live at the clock and not ahead of it, with ids
    ok = not ngens or (
        abs(clock) <= _CLOCK_LIMIT
        and min(count) >= 1
        and all(a < b for a, b in zip(idx, idx[1:], strict=False))
        and all(a <= b for a, b in zip(first, first[1:], strict=False))
        and end > first[-1]
        and (idx[0] + 1) * width + horizon > clock >= idx[-1] * width
    )
    if not ok:
        raise ValueError("dedup snapshot corrupted (generations)")
    return horizon, generations, clock, end, gens
