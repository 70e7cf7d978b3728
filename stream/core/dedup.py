"""Deduplication of app retries: a repeated ``event_id`` of a tenant counts once.

Each (tenant_id, event_id) is hashed to 64 bits (FNV-1a, stable across processes so the
state can be checkpointed) and kept in an open-addressing hash set, with the event-time
hour it was seen, for a horizon of event time (default 24 h). The first occurrence wins,
also within one batch. Memory: 16 bytes per slot at <= 50 % load, i.e. about 32 bytes per
distinct event inside the horizon. Two different ids colliding on 64 bits is ~1e-8 likely
at 1e6 live ids (n²/2⁶⁵); such an event would be counted as a duplicate.
"""

from __future__ import annotations

import io

import numpy as np

from ._numba import njit
from .strbuf import utf8_buffer

_EMPTY = np.uint64(0)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit
def _fnv1a_pairs(
    buf_a: np.ndarray, off_a: np.ndarray, buf_b: np.ndarray, off_b: np.ndarray
) -> np.ndarray:  # pragma: no cover - jit
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
        out[i] = h if h != 0 else np.uint64(1)  # 0 marks an empty slot
    return out


def stable_hashes(tenant_ids: np.ndarray, event_ids: np.ndarray) -> np.ndarray:
    """uint64[n] FNV-1a of ``tenant_id + "\x1f" + event_id`` (UTF-8) for each event."""
    if len(tenant_ids) != len(event_ids):
        raise ValueError("tenant_ids and event_ids differ in length")
    buf_a, off_a = utf8_buffer(list(tenant_ids))
    buf_b, off_b = utf8_buffer(list(event_ids))
    return _fnv1a_pairs(buf_a, off_a, buf_b, off_b)


@njit
def _insert(
    keys: np.ndarray, hours: np.ndarray, hashes: np.ndarray, ev_hours: np.ndarray
) -> tuple[np.ndarray, int]:  # pragma: no cover - jit
    mask = np.uint64(keys.shape[0] - 1)
    dup = np.zeros(hashes.shape[0], dtype=np.bool_)
    added = 0
    for i in range(hashes.shape[0]):
        h = hashes[i]
        slot = h & mask
        while True:
            k = keys[slot]
            if k == 0:
                keys[slot] = h
                hours[slot] = ev_hours[i]
                added += 1
                break
            if k == h:
                dup[i] = True
                hours[slot] = max(hours[slot], ev_hours[i])
                break
            slot = (slot + np.uint64(1)) & mask
    return dup, added


class Deduper:
    """Set of recently seen (tenant, event_id) with an event-time horizon.

    :meth:`check` returns a bool[n] mask of duplicates (repeats of an id seen before within
    the horizon, or earlier in the same batch) and remembers the new ids.
    """

    def __init__(self, horizon_ms: int = 24 * 3_600_000, capacity: int = 1 << 16) -> None:
        self.horizon_hours = max(1, -(-horizon_ms // 3_600_000))
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._hours = np.zeros(cap, dtype=np.int64)
        self._size = 0
        self._max_hour = np.iinfo(np.int64).min

    def __len__(self) -> int:
        return self._size

    def check(self, tenant_ids: np.ndarray, event_ids: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
        """Duplicate mask (bool[n]) for events in arrival order; records the new ones."""
        n = len(event_ids)
        if n == 0:
            return np.zeros(0, dtype=bool)
        hours = np.asarray(ts_ms, dtype=np.int64) // 3_600_000
        self._max_hour = max(self._max_hour, int(hours.max()))
        if (self._size + n) * 2 > self._keys.shape[0]:
            self._rebuild(self._size + n)
        dup, added = _insert(self._keys, self._hours, stable_hashes(tenant_ids, event_ids), hours)
        self._size += int(added)
        return dup

    def _rebuild(self, needed: int) -> None:
        """Drop ids older than the horizon and resize so that load stays <= 50 %."""
        live = self._keys != 0
        live &= self._hours > self._max_hour - self.horizon_hours
        keys, hours = self._keys[live], self._hours[live]
        cap = self._keys.shape[0]
        while needed * 2 > cap or (len(keys) + needed) * 2 > cap:
            cap *= 2
        if len(keys) * 8 < cap and cap > (1 << 16) and needed * 4 <= cap:
            cap //= 2  # shrink after a burst has expired
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._hours = np.zeros(cap, dtype=np.int64)
        self._size = 0
        if len(keys):
            _, added = _insert(self._keys, self._hours, keys, hours)
            self._size = int(added)

    def snapshot(self) -> bytes:
        """Serialised state (for checkpoints)."""
        buf = io.BytesIO()
        live = self._keys != 0
        np.savez(
            buf,
            keys=self._keys[live],
            hours=self._hours[live],
            meta=np.array([self.horizon_hours, self._max_hour], dtype=np.int64),
        )
        return buf.getvalue()

    @classmethod
    def restore(cls, data: bytes) -> Deduper:
        """Inverse of :meth:`snapshot`."""
        z = np.load(io.BytesIO(data))
        horizon_hours, max_hour = (int(x) for x in z["meta"])
        d = cls(horizon_hours * 3_600_000, capacity=max(16, 2 * len(z["keys"])))
        d._max_hour = max_hour
        if len(z["keys"]):
            _, added = _insert(d._keys, d._hours, z["keys"], z["hours"])
            d._size = int(added)
        return d
