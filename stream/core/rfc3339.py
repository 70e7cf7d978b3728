"""Vectorised RFC 3339 parsing: many timestamp strings → epoch milliseconds in one kernel.

An event carries its ``ts`` and, with retrieval, two times per chunk (≈5 per event in
typical RAG traffic); parsing them one by one with ``datetime`` dominated decoding. The
strings are joined into one byte buffer and parsed by a numba kernel instead.

Accepted: ``YYYY-MM-DD`` ``T``/``t``/space ``HH:MM:SS`` optional ``.fraction`` (1–9
digits, floored to the millisecond) and a required offset ``Z``/``z``/``±HH:MM``. Anything
else (no offset, bad field ranges, trailing bytes) gives :data:`INVALID`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._numba import njit
from .strbuf import utf8_buffer

# Distinct from MISSING (the "no value" marker callers use), so an unparsable optional
# time is never mistaken for an absent one.
MISSING = np.iinfo(np.int64).min
INVALID = MISSING + 1
WRONG_TYPE = MISSING + 2  # a raw JSON time that is neither a string, an integer nor null


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


@njit
def _parse_json_many(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:  # pragma: no cover
    out = np.empty(offsets.shape[0] - 1, dtype=np.int64)
    for i in range(out.shape[0]):
        a, b = offsets[i], offsets[i + 1]
        if b - a >= 2 and buf[a] == 34 and buf[b - 1] == 34:  # a JSON string
            escaped = False
            for k in range(a + 1, b - 1):
                if buf[k] == 92:  # a backslash escape has no place in a timestamp
                    escaped = True
            out[i] = INVALID if escaped else _parse_one(buf, a + 1, b - 1)
        elif (
            b - a == 4
            and buf[a] == 110
            and buf[a + 1] == 117
            and buf[a + 2] == 108
            and buf[a + 3] == 108
        ):  # null
            out[i] = MISSING
        else:  # a JSON integer (epoch ms); other JSON types are the wrong type
            k = a + 1 if b > a and buf[a] == 45 else a
            n = b - k
            digits = n > 0
            for j in range(k, b):
                if buf[j] < 48 or buf[j] > 57:
                    digits = False
            if not digits:
                out[i] = WRONG_TYPE
            elif n > 18:
                out[i] = INVALID  # beyond any plausible epoch ms (and int64)
            else:
                value = _digits(buf, k, n)
                out[i] = -value if k > a else value
    return out


def json_times_ms(raws: Sequence[Any]) -> np.ndarray:
    """Epoch ms (int64[n]) of raw JSON values (``msgspec.Raw`` or bytes) holding a time.

    A JSON string is parsed as RFC 3339 (:data:`INVALID` if it is not one), a JSON integer
    is epoch ms, ``null`` is :data:`MISSING`; any other JSON value (object, float, boolean)
    is :data:`WRONG_TYPE`.
    Decoding times as raw JSON lets the decoder skip building a ``str`` or ``int`` per time.
    """
    if not raws:
        return np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(raws) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, raws), dtype=np.int64, count=len(raws)), out=offsets[1:])
    buf = np.frombuffer(b"".join(raws), dtype=np.uint8)
    return _parse_json_many(buf, offsets)
