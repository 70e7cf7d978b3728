"""The sliding-window bucket queues of the budget tracker, in one shared pool.

Each sliding (tenant, budget) slot owns a sorted circular queue of ``(bucket id, units)``
rows inside one pool (int64[rows, 2]); its ``q_*`` fields (:data:`.budget_layout.SLOT`) say
where. A full queue moves to a region twice its size at the end of the pool; :func:`repack`
compacts the pool when it fills. Only non-empty buckets are stored, so memory follows the
traffic, not ``tenants x buckets per window``.
"""

import numpy as np
import numpy.typing as npt

from ._numba import njit
from .budget_config import CAP_UNITS
from .budget_layout import META_NSLOTS, META_USED, MIN_POOL, MIN_QCAP

Arr = npt.NDArray[np.int64]
Rec = npt.NDArray[np.void]


@njit
def queue_cap_for(count: int) -> int:
    """Region size for a queue holding ``count`` buckets: 0, or a power of two > count."""
    if count == 0:
        return 0
    cap = MIN_QCAP
    while cap <= count:
        cap *= 2
    return cap


@njit
def repack(slots: Rec, pool: Arr, meta: Arr, headroom: int) -> Arr:
    """Copy every live queue, oldest bucket first, into a fresh pool; returns it (rows x 2).

    Drops the regions abandoned by relocations and fits each queue's region to its size.
    The new pool has twice the live regions plus ``headroom`` rows, so repacks are rare
    (amortised O(1) per stored bucket) and at least ``headroom`` rows are free afterwards.
    """
    nslots = meta[META_NSLOTS]
    total = 0
    for s in range(nslots):
        total += queue_cap_for(slots[s].q_cnt)
    new = np.empty((max(MIN_POOL, 2 * total + headroom), 2), np.int64)
    used = 0
    for s in range(nslots):
        slot = slots[s]
        cnt = slot.q_cnt
        mask = slot.q_cap - 1
        for j in range(cnt):
            p = slot.q_off + ((slot.q_head + j) & mask)
            new[used + j, 0] = pool[p, 0]
            new[used + j, 1] = pool[p, 1]
        slot.q_off = used
        slot.q_head = 0
        slot.q_cap = queue_cap_for(cnt)
        used += slot.q_cap
    meta[META_USED] = used
    return new


@njit
def _reserve(s: int, slots: Rec, pool: Arr, meta: Arr) -> None:
    """Room for one more bucket in slot ``s``'s queue: a full queue moves to a region twice
    its size at the end of the pool (the caller guarantees the free rows)."""
    slot = slots[s]
    cnt = slot.q_cnt
    if cnt < slot.q_cap:
        return
    used = meta[META_USED]
    mask = slot.q_cap - 1
    for j in range(cnt):
        p = slot.q_off + ((slot.q_head + j) & mask)
        pool[used + j, 0] = pool[p, 0]
        pool[used + j, 1] = pool[p, 1]
    slot.q_off = used
    slot.q_head = 0
    slot.q_cap = MIN_QCAP if slot.q_cap == 0 else 2 * slot.q_cap
    meta[META_USED] = used + slot.q_cap


@njit
def _bucket_add(s: int, b: int, a: int, slots: Rec, pool: Arr, meta: Arr) -> int:  # noqa: PLR0917
    """Add ``a`` units (0 < a <= 2**62) to bucket ``b`` of slot ``s``'s sorted queue.

    The bucket saturates at 2**62. Returns by how much it grew. In-order events hit the
    newest bucket or append after it; out-of-order ones binary-search.
    """
    slot = slots[s]
    cnt = slot.q_cnt
    j = cnt - 1  # logical position of the newest bucket <= b (-1: none)
    if cnt > 0 and b <= slot.q_last:
        mask = slot.q_cap - 1
        if b < slot.q_last:
            lo_j = 0
            hi_j = cnt - 1  # invariant: bucket at hi_j > b; answer in [lo_j - 1, hi_j - 1]
            while lo_j < hi_j:
                mid = (lo_j + hi_j) // 2
                if pool[slot.q_off + ((slot.q_head + mid) & mask), 0] <= b:
                    lo_j = mid + 1
                else:
                    hi_j = mid
            j = lo_j - 1
        p = slot.q_off + ((slot.q_head + j) & mask)
        if j >= 0 and pool[p, 0] == b:
            old = pool[p, 1]
            new = old + a if a < CAP_UNITS - old else CAP_UNITS
            pool[p, 1] = new
            return new - old
    _reserve(s, slots, pool, meta)
    mask = slot.q_cap - 1
    k = cnt - 1
    while k > j:  # shift the newer buckets one step to insert after j
        src = slot.q_off + ((slot.q_head + k) & mask)
        dst = slot.q_off + ((slot.q_head + k + 1) & mask)
        pool[dst, 0] = pool[src, 0]
        pool[dst, 1] = pool[src, 1]
        k -= 1
    p = slot.q_off + ((slot.q_head + j + 1) & mask)
    pool[p, 0] = b
    pool[p, 1] = a
    slot.q_cnt = cnt + 1
    if j < 0:
        slot.q_first = b
    if j == cnt - 1:
        slot.q_last = b
    return a


@njit
def gather_buckets(slots: Rec, nslots: int, pool: Arr) -> Arr:
    """All stored buckets, slot after slot, oldest first: int64[total, 2] (bucket, units)."""
    total = 0
    for s in range(nslots):
        total += slots[s].q_cnt
    out = np.empty((total, 2), np.int64)
    w = 0
    for s in range(nslots):
        slot = slots[s]
        mask = slot.q_cap - 1
        for j in range(slot.q_cnt):
            p = slot.q_off + ((slot.q_head + j) & mask)
            out[w, 0] = pool[p, 0]
            out[w, 1] = pool[p, 1]
            w += 1
    return out


@njit
def scatter_buckets(slots: Rec, src_start: Arr, buckets: Arr, meta: Arr, headroom: int) -> Arr:
    """A pool holding, for each slot ``s`` in use, ``slots[s].q_cnt`` buckets read from
    ``buckets[src_start[s]:]`` (int64[total, 2]); sets the queue fields and ``meta``."""
    nslots = meta[META_NSLOTS]
    total = 0
    for s in range(nslots):
        total += queue_cap_for(slots[s].q_cnt)
    pool = np.empty((max(MIN_POOL, 2 * total + headroom), 2), np.int64)
    used = 0
    for s in range(nslots):
        slot = slots[s]
        src = src_start[s]
        for j in range(slot.q_cnt):
            pool[used + j, 0] = buckets[src + j, 0]
            pool[used + j, 1] = buckets[src + j, 1]
        slot.q_off = used
        slot.q_head = 0
        slot.q_cap = queue_cap_for(slot.q_cnt)
        used += slot.q_cap
    meta[META_USED] = used
    return pool
