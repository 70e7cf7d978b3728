"""Strings out of byte spans of a batch buffer, without one Python object per row where we
can: label columns become per-batch dictionary codes, ids become ``str`` in bulk.

The spans come from :mod:`.json_scan` (``starts``/``ends`` int64[k, n] into a uint8
buffer, printable ASCII). A label column (tenant, model, app, ...) holds a handful of
distinct values per batch: :func:`span_labels` hashes the spans in a numba kernel, so only
the distinct values are decoded to ``str``. :func:`span_strs` turns one column of
(mostly distinct) ids into an object array of ``str``.
"""

from __future__ import annotations

import numpy as np

from ._numba import njit


@njit
def _same(buf: np.ndarray, a: int, b: int, c: int, d: int) -> bool:  # pragma: no cover - jit
    if b - a != d - c:
        return False
    for j in range(b - a):  # noqa: SIM110 - numba: a plain loop, no generator
        if buf[a + j] != buf[c + j]:
            return False
    return True


@njit
def _hash(buf: np.ndarray, a: int, b: int) -> np.int64:  # pragma: no cover - jit
    # bytes packed 8 to a word, one multiply per word (wrapping int64 arithmetic): a
    # per-byte multiply chain was most of the kernel's time
    h = np.int64(b - a) * np.int64(-7046029254386353131)
    q = a
    while q < b:
        w = np.int64(0)
        for j in range(min(8, b - q)):
            w |= np.int64(buf[q + j]) << np.int64(8 * j)
        h = (h ^ w) * np.int64(-4658895280553007687)
        h ^= h >> np.int64(31)
        q += 8
    return h


@njit
def _dict_codes(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - jit
    """Per column k and row j of ``rows``: codes[k, j] numbers the distinct spans in order of
    first appearance; firsts[k, u] is the row (of ``starts``) where value u first appears,
    counts[k] how many there are."""
    ncol = starts.shape[0]
    m = rows.shape[0]
    codes = np.empty((ncol, m), dtype=np.int32)
    firsts = np.empty((ncol, max(m, 1)), dtype=np.int64)
    counts = np.zeros(ncol, dtype=np.int64)
    hashes = np.empty(max(m, 1), dtype=np.int64)
    for k in range(ncol):
        size = 64
        table = np.full(size, -1, dtype=np.int32)
        nu = 0
        for j in range(m):
            r = rows[j]
            a = starts[k, r]
            b = ends[k, r]
            h = _hash(buf, a, b)
            slot = h & (size - 1)
            while True:
                u = table[slot]
                if u < 0:
                    u = nu
                    table[slot] = u
                    firsts[k, u] = r
                    hashes[u] = h
                    nu += 1
                    if 2 * nu > size:  # keep the table at most half full
                        size *= 4
                        table = np.full(size, -1, dtype=np.int32)
                        for v in range(nu):
                            s = hashes[v] & (size - 1)
                            while table[s] >= 0:
                                s = (s + 1) & (size - 1)
                            table[s] = v
                    break
                f = firsts[k, u]
                if hashes[u] == h and _same(buf, a, b, starts[k, f], ends[k, f]):
                    break
                slot = (slot + 1) & (size - 1)
            codes[k, j] = u
        counts[k] = nu
    return codes, firsts, counts


def span_labels(
    data: bytes, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per column k of ``starts``/``ends`` (int64[ncol, n] spans of ASCII text into
    ``buf``, the uint8 view of ``data``): (int32[m] codes, object[u] distinct ``str``
    values in order of first appearance) over ``rows`` (int64[m] row indices)."""
    if buf.dtype != np.uint8 or buf.ndim != 1 or len(data) != buf.shape[0]:
        raise TypeError("buf must be the uint8[total] view of data")
    if starts.shape != ends.shape or starts.dtype != np.int64 or ends.dtype != np.int64:
        raise TypeError("starts and ends must be int64[ncol, n] arrays of one shape")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    codes, firsts, counts = _dict_codes(buf, starts, ends, rows)
    out = []
    for k in range(starts.shape[0]):
        first = firsts[k, : counts[k]].tolist()
        values = np.empty(len(first), dtype=object)
        values[:] = [
            data[a:b].decode("ascii") for a, b in zip(starts[k, first], ends[k, first], strict=True)
        ]
        out.append((codes[k], values))
    return out


@njit
def _gather(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int
) -> np.ndarray:  # pragma: no cover - jit
    out = np.zeros((starts.shape[0], width), dtype=np.uint8)
    for j in range(starts.shape[0]):
        a = starts[j]
        for q in range(ends[j] - a):
            out[j, q] = buf[a + q]
    return out


def span_strs(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """object[m] of ``str``: the ASCII text of ``buf[starts[j]:ends[j]]`` (int64[m] each),
    which holds no NUL byte."""
    if len(starts) == 0:
        return np.empty(0, dtype=object)
    width = max(int((ends - starts).max()), 1)
    # fixed-width bytes → numpy unicode → str objects: each step is one C loop (numpy drops
    # the trailing NUL padding, which the text itself never holds)
    fixed = _gather(buf, starts, ends, width).view(f"S{width}").ravel()
    return fixed.astype(f"U{width}").astype(object)
