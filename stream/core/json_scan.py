"""Columnar fast path of call-event decoding: one numba pass over a batch of JSON messages.

The messages are joined into one byte buffer (``uint8[total]`` plus ``int64[n+1]``
offsets, as :mod:`.strbuf` lays strings out). :func:`scan_calls` reads each message and
either **accepts** it, filling numeric columns, times (epoch ms, parsed with
:mod:`.rfc3339`'s kernel) and the byte spans of its string values, or **declines** it.
A declined message is decoded by msgspec instead, so the scanner only accepts what it is
sure msgspec would decode to the same values without an error. It declines:

* any byte outside printable ASCII (``0x20..0x7f``) inside a string, and any backslash in
  a key or in a string we keep (a skipped value's string may hold valid escapes, except
  ``\\u`` surrogates);
* duplicate known keys, ``null`` for a required field, a JSON type other than the field's,
  an integer field given as a fraction or exponent (msgspec refuses ``1.0`` for an int),
  more than 18 significant digits, a float that is not exactly ``m * 10**e`` with
  ``m < 2**53`` and ``|e| <= 22`` (so its rounding cannot differ), a chunk score msgspec
  might find out of range;
* values outside the event's constraints (token range, id and model lengths, the status
  set, ``context_window`` range, negative latency/ttft), a missing required field;
* embeddings given as JSON arrays, skipped values nested deeper than :data:`MAX_DEPTH`,
  anything after the object but JSON whitespace, a non-object top level, messages above
  the size limit.

Unknown keys are skipped (their values validated as strict JSON), as msgspec ignores them.
Semantic checks (token consistency, time range, embedding content) are not made here: the
caller applies them to columns from either path alike.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ._numba import njit
from .interning import INTERNED
from .json_keys import _CHUNK0, _RETR0, _ROUTE0, _STATUS0, _TOP, _USAGE0, _key, _match
from .json_lex import FAIL as _FAIL
from .json_lex import (
    MAX_DEPTH,
    MISSING,
    _int,
    _literal,
    _next,
    _nonneg_float,
    _number,
    _skip_value,
    _str_or_null,
    _time,
    _ws,
)

MAX_TOKENS = 10**12
MAX_CONTEXT = 2**31

#: string columns, by row of ``CallScan.starts``/``ends``; ``embedding`` has start -1 when
#: absent, the others an empty span (absent and null read as "")
STRINGS = ("event_id", *INTERNED, "embedding")
# top-level key id → string row (-1: not a string field)
_TOP_STR = np.array([STRINGS.index(k.decode()) if k.decode() in STRINGS else -1 for k in _TOP])
_S_TIER, _S_INDEX, _S_EMB = (
    STRINGS.index("route_tier"), STRINGS.index("index_version"), STRINGS.index("embedding")
)  # fmt: skip
#: integer columns, by row of ``CallScan.ints``
INTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "context_window",
    "ts_ms",
    "status",
    "route_escalated",
    "n_chunks",
)
_I_CONTEXT, _I_TS, _I_STATUS, _I_ESC, _I_NCHUNKS = (
    INTS.index(k) for k in ("context_window", "ts_ms", "status", "route_escalated", "n_chunks")
)


@njit
def _usage(  # noqa: PLR0917 - numba kernels take plain positional arrays
    buf: np.ndarray, p: int, end: int, i: int, ints: np.ndarray, stack: np.ndarray
) -> int:  # pragma: no cover - jit
    if buf[p] != 123:
        return _FAIL
    p = _ws(buf, p + 1, end)
    if p < end and buf[p] == 125:
        return _FAIL  # input_tokens and output_tokens are required
    seen = 0
    while True:
        kid, p = _key(buf, p, end, 1)
        if p < 0:
            return _FAIL
        if kid < 0:
            p = _skip_value(buf, p, end, stack)
        else:
            bit = 1 << (kid - _USAGE0)
            if seen & bit:
                return _FAIL
            seen |= bit
            if kid >= _USAGE0 + 2 and buf[p] == 110:  # optional counts may be null
                p, kind = _literal(buf, p, end)
                if kind != 0:
                    return _FAIL
            else:
                p, v = _int(buf, p, end, 0, MAX_TOKENS)
                ints[kid - _USAGE0, i] = v
        if p < 0:
            return _FAIL
        more, p = _next(buf, p, end)
        if more < 0:
            return _FAIL
        if more == 0:
            return p if seen & 3 == 3 else _FAIL


@njit
def _route(  # noqa: PLR0917 - numba kernels take plain positional arrays
    buf: np.ndarray,
    p: int,
    end: int,
    i: int,
    ints: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    stack: np.ndarray,
) -> int:  # pragma: no cover - jit
    if buf[p] != 123:
        q, kind = _literal(buf, p, end)
        return q if kind == 0 else _FAIL
    p = _ws(buf, p + 1, end)
    if p < end and buf[p] == 125:
        return p + 1
    seen = 0
    while True:
        kid, p = _key(buf, p, end, 2)
        if p < 0:
            return _FAIL
        if kid < 0:
            p = _skip_value(buf, p, end, stack)
        else:
            bit = 1 << (kid - _ROUTE0)
            if seen & bit:
                return _FAIL
            seen |= bit
            if kid == _ROUTE0:
                p, s, e = _str_or_null(buf, p, end)
                if s >= 0:
                    starts[_S_TIER, i] = s
                    ends[_S_TIER, i] = e
            else:
                p, kind = _literal(buf, p, end)
                ints[_I_ESC, i] = kind == 2
        if p < 0:
            return _FAIL
        more, p = _next(buf, p, end)
        if more <= 0:
            return p


@njit
def _chunk(  # noqa: PLR0917 - numba kernels take plain positional arrays
    buf: np.ndarray, p: int, end: int, emb: np.ndarray, src: np.ndarray, c: int, stack: np.ndarray
) -> int:  # pragma: no cover - jit
    if p >= end or buf[p] != 123:
        return _FAIL
    p = _ws(buf, p + 1, end)
    if p < end and buf[p] == 125:
        return _FAIL  # embedded_at is required
    seen = 0
    src[c] = MISSING
    while True:
        kid, p = _key(buf, p, end, 4)
        if p < 0:
            return _FAIL
        if kid < 0:
            p = _skip_value(buf, p, end, stack)
        else:
            bit = 1 << (kid - _CHUNK0)
            if seen & bit:
                return _FAIL
            seen |= bit
            if kid <= _CHUNK0 + 1:  # chunk_id, doc_id: checked, not kept
                p = _str_or_null(buf, p, end)[0]
            elif kid == _CHUNK0 + 2:
                p, emb[c] = _time(buf, p, end, stack)
            elif kid == _CHUNK0 + 3:
                p, src[c] = _time(buf, p, end, stack)
            elif buf[p] == 110:
                p, kind = _literal(buf, p, end)
                if kind != 0:
                    return _FAIL
            else:  # score: any float msgspec surely holds without overflow
                p, neg, mant, nsig, exp, _ = _number(buf, p, end)
                if nsig > 18 or exp < -280 or nsig + exp > 280:
                    return _FAIL
        if p < 0:
            return _FAIL
        more, p = _next(buf, p, end)
        if more < 0:
            return _FAIL
        if more == 0:
            return p if seen & 4 else _FAIL


@njit
def _retrieval(  # noqa: PLR0917 - numba kernels take plain positional arrays
    buf: np.ndarray,
    p: int,
    end: int,
    i: int,
    starts: np.ndarray,
    ends: np.ndarray,
    emb: np.ndarray,
    src: np.ndarray,
    c0: int,
    stack: np.ndarray,
) -> tuple[int, int]:  # pragma: no cover - jit
    """(index after, chunks written from ``c0`` on) of a retrieval value; index -1 if bad."""
    c = c0
    if buf[p] != 123:
        q, kind = _literal(buf, p, end)
        return (q if kind == 0 else _FAIL), c
    p = _ws(buf, p + 1, end)
    if p < end and buf[p] == 125:
        return p + 1, c
    seen = 0
    while True:
        kid, p = _key(buf, p, end, 3)
        if p < 0:
            return _FAIL, c
        if kid < 0:
            p = _skip_value(buf, p, end, stack)
        else:
            bit = 1 << (kid - _RETR0)
            if seen & bit:
                return _FAIL, c
            seen |= bit
            if kid == _RETR0:
                p, s, e = _str_or_null(buf, p, end)
                if s >= 0:
                    starts[_S_INDEX, i] = s
                    ends[_S_INDEX, i] = e
            elif buf[p] == 91:
                p = _ws(buf, p + 1, end)
                if p < end and buf[p] == 93:
                    p += 1
                else:
                    while p >= 0:
                        p = _chunk(buf, p, end, emb, src, c, stack)
                        if p < 0:
                            return _FAIL, c
                        c += 1
                        p = _ws(buf, p, end)
                        if p < end and buf[p] == 93:
                            p += 1
                            break
                        if p >= end or buf[p] != 44:
                            return _FAIL, c
                        p = _ws(buf, p + 1, end)
            else:
                p, kind = _literal(buf, p, end)
                if kind != 0:
                    return _FAIL, c
        if p < 0:
            return _FAIL, c
        more, p = _next(buf, p, end)
        if more <= 0:
            return p, c


@njit
def _message(  # noqa: PLR0917 - numba kernels take plain positional arrays
    buf: np.ndarray,
    a: int,
    end: int,
    i: int,
    ints: np.ndarray,
    floats: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    emb: np.ndarray,
    src: np.ndarray,
    c0: int,
    stack: np.ndarray,
) -> int:  # pragma: no cover - jit
    """Scan message ``i`` (``buf[a:end]``); returns the chunk count after it, -1 to decline."""
    p = _ws(buf, a, end)
    if p >= end or buf[p] != 123:
        return _FAIL
    p = _ws(buf, p + 1, end)
    if p < end and buf[p] == 125:
        return _FAIL
    c = c0
    seen = 0
    while True:
        kid, p = _key(buf, p, end, 0)
        if p < 0:
            return _FAIL
        if kid < 0:
            p = _skip_value(buf, p, end, stack)
        else:
            bit = 1 << kid
            if seen & bit:
                return _FAIL
            seen |= bit
            row = _TOP_STR[kid]
            if row >= 0:
                p, s, e = _str_or_null(buf, p, end)
                if s >= 0:
                    starts[row, i] = s
                    ends[row, i] = e
                elif kid <= 3:  # event_id, tenant_id, model: null is not a string
                    return _FAIL
                if kid <= 3 and (e - s < 1 or e - s > (256 if kid == 3 else 128)):
                    return _FAIL
            elif kid == 1:
                p, ints[_I_TS, i] = _time(buf, p, end, stack)
            elif kid == 4:
                p = _usage(buf, p, end, i, ints, stack)
            elif kid == 14:
                p = _route(buf, p, end, i, ints, starts, ends, stack)
            elif kid == 18:
                p, c = _retrieval(buf, p, end, i, starts, ends, emb, src, c0, stack)
            elif buf[p] == 110:  # null for an optional scalar: its default
                p, kind = _literal(buf, p, end)
                if kind != 0:
                    return _FAIL
            elif kid == 5:  # schema_version: any int is accepted (and not kept)
                p = _int(buf, p, end, -(10**18), 10**18)[0]
            elif kid == 15:
                p, ints[_I_CONTEXT, i] = _int(buf, p, end, 0, MAX_CONTEXT)
            elif kid == 11 or kid == 12:  # noqa: PLR1714 - numba: no sets
                p, floats[kid - 11, i] = _nonneg_float(buf, p, end)
            else:  # status
                p, s, e = _str_or_null(buf, p, end)
                code = _match(buf, s, e, 5)
                if code < 0:
                    return _FAIL
                ints[_I_STATUS, i] = code - _STATUS0
        if p < 0:
            return _FAIL
        more, p = _next(buf, p, end)
        if more < 0:
            return _FAIL
        if more == 0:
            break
    if seen & 0b11111 != 0b11111 or _ws(buf, p, end) != end:
        return _FAIL
    return c


@njit
def _scan(
    buf: np.ndarray, offsets: np.ndarray, max_bytes: int
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:  # pragma: no cover - jit
    n = offsets.shape[0] - 1
    ok = np.zeros(n, dtype=np.bool_)
    ints = np.zeros((len(INTS), n), dtype=np.int64)
    floats = np.full((2, n), np.nan)
    starts = np.zeros((len(STRINGS), n), dtype=np.int64)
    ends = np.zeros((len(STRINGS), n), dtype=np.int64)
    cap = 16 + 8 * n
    emb = np.empty(cap, dtype=np.int64)
    src = np.empty(cap, dtype=np.int64)
    stack = np.empty(MAX_DEPTH, dtype=np.uint8)
    c = 0
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        if b - a > max_bytes:
            continue
        need = c + (b - a) // 16 + 1  # a chunk takes >= 17 bytes: {"embedded_at":0}
        if need > cap:
            cap = max(2 * cap, need)
            grown = np.empty(cap, dtype=np.int64)
            grown[:c] = emb[:c]
            emb = grown
            grown = np.empty(cap, dtype=np.int64)
            grown[:c] = src[:c]
            src = grown
        starts[_S_EMB, i] = -1
        after = _message(buf, a, b, i, ints, floats, starts, ends, emb, src, c, stack)
        if after >= 0:
            ok[i] = True
            ints[_I_NCHUNKS, i] = after - c
            c = after
    return ok, ints, floats, starts, ends, emb[:c].copy(), src[:c].copy()


@dataclass
class CallScan:
    """What :func:`scan_calls` read from ``n`` messages (rows of declined ones are junk).

    ``ok`` bool[n] (accepted); ``ints`` int64[len(INTS), n]; ``floats`` float64[2, n]
    (latency_ms, ttft_ms; NaN when absent); ``starts``/``ends`` int64[len(STRINGS), n] byte
    spans into the buffer; chunk times int64[c], epoch ms as ``json_times_ms`` gives them,
    of the accepted messages' chunks in order (``ints[INTS.index("n_chunks")]`` per row).
    """

    ok: np.ndarray
    ints: np.ndarray
    floats: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    chunk_embedded_at_ms: np.ndarray
    chunk_source_updated_at_ms: np.ndarray


def scan_calls(buf: np.ndarray, offsets: np.ndarray, max_bytes: int) -> CallScan:
    """Scan message ``i`` = ``buf[offsets[i]:offsets[i+1]]`` of each of ``n`` messages
    (``buf`` uint8[total], ``offsets`` int64[n+1], increasing); messages longer than
    ``max_bytes`` are declined."""
    if buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.c_contiguous:
        raise TypeError("buf must be a contiguous uint8[total] array")
    if offsets.dtype != np.int64 or offsets.ndim != 1 or offsets.shape[0] < 1:
        raise TypeError("offsets must be an int64[n+1] array")
    if offsets[0] < 0 or offsets[-1] > buf.shape[0] or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must increase within the buffer")
    n = offsets.shape[0] - 1
    if n < _SPLIT_MIN or _workers() < 2:
        return CallScan(*_scan(buf, offsets, int(max_bytes)))
    # The kernel runs without the GIL: the second half of a large batch is scanned on
    # another core meanwhile. Spans are positions in the shared buffer, and chunks come in
    # message order, so the halves' results simply follow each other.
    mid = n // 2
    second = _executor().submit(_scan, buf, offsets[mid:], int(max_bytes))
    a = _scan(buf, offsets[: mid + 1], int(max_bytes))
    b = second.result()
    return CallScan(
        np.concatenate([a[0], b[0]]),
        np.concatenate([a[1], b[1]], axis=1),
        np.concatenate([a[2], b[2]], axis=1),
        np.concatenate([a[3], b[3]], axis=1),
        np.concatenate([a[4], b[4]], axis=1),
        np.concatenate([a[5], b[5]]),
        np.concatenate([a[6], b[6]]),
    )


_SPLIT_MIN = 4096  # below it a thread hand-over costs more than half a scan saves
_POOL: list[ThreadPoolExecutor] = []


def _workers() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _executor() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(1, thread_name_prefix="llmops-scan"))
    return _POOL[0]
