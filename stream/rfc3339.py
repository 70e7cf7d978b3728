"""Vectorised RFC 3339 parsing: many timestamp strings → epoch milliseconds in one kernel.

An event carries its ``ts`` and, with retrieval, two times per chunk (≈5 per event in
typical RAG traffic); parsing them one by one with ``datetime`` dominated decoding. The
strings are joined into one byte buffer and parsed by a numba kernel instead.

Accepted: ``YYYY-MM-DD`` ``T``/``t``/space ``HH:MM:SS`` optional ``.fraction`` (1–9
digits, floored to the millisecond) and a required offset ``Z``/``z``/``±HH:MM``. Anything
else (no offset, bad field ranges, trailing bytes) gives :data:`INVALID`.
"""

from __future__ import annotations

from itertools import repeat
from operator import is_not

import numpy as np

from ._numba import njit
from .strbuf import utf8_buffer

# Distinct from MISSING (the "no value" marker callers use), so an unparsable optional
# time is never mistaken for an absent one.
MISSING = np.iinfo(np.int64).min
INVALID = MISSING + 1


@njit
def _digits(buf: np.ndarray, start: int, count: int) -> int:  # pragma: no cover - jit
    value: int = 0
    for k in range(start, start + count):
        d = int(buf[k]) - 48
        if d < 0 or d > 9:
            return -1
        value = value * 10 + d
    return value


@njit
def _days_from_civil(y: int, m: int, d: int) -> int:  # pragma: no cover - jit
    # Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic Gregorian date.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit
def _parse_one(buf: np.ndarray, a: int, b: int) -> int:  # pragma: no cover - jit
    n = b - a
    if n < 20:
        return INVALID
    if buf[a + 4] != 45 or buf[a + 7] != 45:  # '-'
        return INVALID
    sep = buf[a + 10]
    if sep != 84 and sep != 116 and sep != 32:  # noqa: PLR1714 - numba: no set literals
        return INVALID
    if buf[a + 13] != 58 or buf[a + 16] != 58:  # ':'
        return INVALID
    year = _digits(buf, a, 4)
    month = _digits(buf, a + 5, 2)
    day = _digits(buf, a + 8, 2)
    hour = _digits(buf, a + 11, 2)
    minute = _digits(buf, a + 14, 2)
    sec = _digits(buf, a + 17, 2)
    if year < 0 or month < 1 or month > 12 or day < 1 or hour < 0 or hour > 23:
        return INVALID
    if minute < 0 or minute > 59 or sec < 0 or sec > 60:
        return INVALID
    leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
    mdays = 31
    if month == 2:
        mdays = 29 if leap else 28
    elif month == 4 or month == 6 or month == 9 or month == 11:  # noqa: PLR1714
        mdays = 30
    if day > mdays:
        return INVALID
    p = a + 19
    millis = 0
    if p < b and buf[p] == 46:  # '.'
        p += 1
        nd = 0
        while p < b and 48 <= buf[p] <= 57:
            if nd < 3:
                millis = millis * 10 + (int(buf[p]) - 48)
            nd += 1
            p += 1
        if nd == 0 or nd > 9:
            return INVALID
        for _ in range(nd, 3):
            millis *= 10
    if p >= b:
        return INVALID  # the offset is required
    offset_min = 0
    c = buf[p]
    if c == 90 or c == 122:  # noqa: PLR1714 - 'Z' 'z'
        p += 1
    elif c == 43 or c == 45:  # noqa: PLR1714 - '+' '-'
        if b - p != 6 or buf[p + 3] != 58:
            return INVALID
        oh = _digits(buf, p + 1, 2)
        om = _digits(buf, p + 4, 2)
        if oh < 0 or oh > 23 or om < 0 or om > 59:
            return INVALID
        offset_min = oh * 60 + om
        if c == 45:
            offset_min = -offset_min
        p += 6
    else:
        return INVALID
    if p != b:
        return INVALID
    days = _days_from_civil(year, month, day)
    secs = ((days * 24 + hour) * 60 + minute) * 60 + sec - offset_min * 60
    return secs * 1000 + millis


@njit
def _parse_many(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:  # pragma: no cover - jit
    out = np.empty(offsets.shape[0] - 1, dtype=np.int64)
    for i in range(out.shape[0]):
        out[i] = _parse_one(buf, offsets[i], offsets[i + 1])
    return out


def parse_rfc3339_ms(texts: list[str]) -> np.ndarray:
    """Epoch ms (int64[n]) of RFC 3339 strings; :data:`INVALID` where a string is not one."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    buf, offsets = utf8_buffer(texts)
    return _parse_many(buf, offsets)


def times_ms(values: list[int | str | None]) -> np.ndarray:
    """Epoch ms (int64[n]) of ints (already epoch ms), RFC 3339 strings and None (→ MISSING)."""
    try:
        return parse_rfc3339_ms(values)  # type: ignore[arg-type]  # the common case: all str
    except TypeError:
        pass  # ints or None among them
    n = len(values)
    arr = np.empty(n, dtype=object)
    arr[:] = values
    is_str = np.fromiter(map(isinstance, values, repeat(str)), dtype=bool, count=n)
    is_int = ~is_str & np.fromiter(map(is_not, values, repeat(None)), dtype=bool, count=n)
    out = np.full(n, MISSING, dtype=np.int64)
    if is_str.any():
        out[is_str] = parse_rfc3339_ms(arr[is_str].tolist())
    out[is_int] = arr[is_int].astype(np.int64)
    return out
