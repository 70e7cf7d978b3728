"""The call event's JSON keys for the numba scanner (:mod:`.json_scan`): ids and lookup.

Keys are numbered across groups (top level, ``usage``, ``route``, ``retrieval``, a chunk,
and the ``status`` literals); within its object a key's id minus its group's first id is
its bit in the "seen" mask that catches duplicates. A key is looked up by (group, length,
first byte), unique within each group, then confirmed by one full comparison.
"""

from __future__ import annotations

import numpy as np

from ._numba import njit
from .json_lex import FAIL as _FAIL
from .json_lex import _str_end, _ws

# Keys, by id. A key's id is its bit in the "seen" mask of its object (duplicates decline).
_TOP = (
    b"event_id",  # 0
    b"ts",
    b"tenant_id",
    b"model",
    b"usage",
    b"schema_version",  # 5
    b"provider",
    b"app",
    b"served_model",
    b"prompt_id",
    b"prompt_version",  # 10
    b"latency_ms",
    b"ttft_ms",
    b"status",
    b"route",
    b"context_window",  # 15
    b"embedding",
    b"embedding_model",
    b"retrieval",
)
_USAGE = (
    b"input_tokens",
    b"output_tokens",
    b"cache_read_tokens",
    b"cache_write_tokens",
    b"cache_write_1h_tokens",
    b"reasoning_tokens",
)
_ROUTE = (b"tier", b"escalated")
_RETRIEVAL = (b"index_version", b"chunks")
_CHUNK = (b"chunk_id", b"doc_id", b"embedded_at", b"source_updated_at", b"score")
_STATUS = (b"ok", b"error", b"rate_limited", b"timeout", b"cache_hit")  # decode.STATUSES
_ALL = _TOP + _USAGE + _ROUTE + _RETRIEVAL + _CHUNK + _STATUS
_TOP0, _USAGE0 = 0, len(_TOP)
_ROUTE0 = _USAGE0 + len(_USAGE)
_RETR0 = _ROUTE0 + len(_ROUTE)
_CHUNK0 = _RETR0 + len(_RETRIEVAL)
_STATUS0 = _CHUNK0 + len(_CHUNK)
_KEY_BUF = np.frombuffer(b"".join(_ALL), dtype=np.uint8)
_KEY_OFF = np.zeros(len(_ALL) + 1, dtype=np.int64)
_KEY_OFF[1:] = np.cumsum([len(k) for k in _ALL])
# (group, length, first byte) → key id: unique within each group, checked below, so one
# full comparison identifies a key
_KEY_LUT = np.full((6, 32, 128), -1, dtype=np.int16)
for _g, _keys in enumerate((_TOP, _USAGE, _ROUTE, _RETRIEVAL, _CHUNK, _STATUS)):
    for _k in _keys:
        assert _KEY_LUT[_g, len(_k), _k[0]] < 0, _k  # noqa: S101 - a table invariant
        _KEY_LUT[_g, len(_k), _k[0]] = _ALL.index(_k)


@njit
def _key(
    buf: np.ndarray, p: int, end: int, group: int
) -> tuple[int, int]:  # pragma: no cover - jit
    """At a member's key: (id among ``group``'s keys or -1 if unknown, index of its value) or
    (-1, -1) when the key is malformed or escaped."""
    if p >= end or buf[p] != 34:
        return -1, _FAIL
    q = _str_end(buf, p, end)
    if q < 0:
        return -1, _FAIL
    kid = _match(buf, p + 1, q, group)
    q = _ws(buf, q + 1, end)
    if q >= end or buf[q] != 58:
        return -1, _FAIL
    q = _ws(buf, q + 1, end)
    if q >= end:
        return -1, _FAIL
    return kid, q


@njit
def _match(buf: np.ndarray, a: int, b: int, group: int) -> int:  # pragma: no cover - jit
    """Id of the key ``buf[a:b]`` (ASCII) among ``group``'s keys, else -1."""
    n = b - a
    if n <= 0 or n >= 32:
        return -1
    k = _KEY_LUT[group, n, buf[a]]
    if k < 0:
        return -1
    s = _KEY_OFF[k]
    for j in range(n):
        if buf[a + j] != _KEY_BUF[s + j]:
            return -1
    return k
