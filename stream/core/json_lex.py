"""Strict JSON lexing primitives for the numba call-event scanner (:mod:`.json_scan`).

Every function works on one message inside a batch byte buffer ``buf`` (uint8), reads
``buf[p:end]`` and returns the index just after what it read, or -1 (:data:`FAIL`) when the
input is not what it must be. "Strict" means: what these accept, msgspec accepts as JSON
too (numbers by the JSON grammar, strings of printable ASCII with valid escapes, no
``\\u`` surrogate escapes, nesting up to :data:`MAX_DEPTH`); they may refuse more than
msgspec does, since a refusal only sends the message to msgspec.
"""

from __future__ import annotations

import numpy as np

from ._numba import njit
from .rfc3339 import INVALID, MISSING, WRONG_TYPE, _parse_one

__all__ = ["FAIL", "MAX_DEPTH", "MISSING"]

MAX_DEPTH = 32  # msgspec recurses per level; far below its limit, far above real events
FAIL = -1
_SIMPLE_ESCAPE = np.zeros(256, dtype=np.bool_)  # bytes JSON allows after a backslash, u aside
_SIMPLE_ESCAPE[list(b'"\\/bfnrt')] = True
# per byte inside a string: 0 plain printable ASCII, 1 the closing quote, 2 anything else
# (a backslash, a control byte, a non-ASCII byte); one table load per byte beats comparisons
_CLASS = np.full(256, 2, dtype=np.uint8)
_CLASS[32:128] = 0
_CLASS[34] = 1
_CLASS[92] = 2
_POW10 = np.array([10.0**k for k in range(23)])  # all exact in float64


@njit
def _ws(buf: np.ndarray, p: int, end: int) -> int:  # pragma: no cover - jit
    while p < end:
        c = buf[p]
        if c != 32 and c != 10 and c != 13 and c != 9:  # noqa: PLR1714 - numba: no sets
            return p
        p += 1
    return p


@njit
def _str_end(buf: np.ndarray, p: int, end: int) -> int:  # pragma: no cover - jit
    """Index of the closing quote of the string opening at ``p``; -1 on any escape or
    non-printable/non-ASCII byte (a string we keep must equal its raw bytes)."""
    q = p + 1
    while q < end:
        k = _CLASS[buf[q]]
        if k != 0:
            return q if k == 1 else FAIL
        q += 1
    return FAIL


@njit
def _hex(c: int) -> int:  # pragma: no cover - jit
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


@njit
def _skip_str(buf: np.ndarray, p: int, end: int) -> int:  # pragma: no cover - jit
    """Index after a skipped string opening at ``p`` with valid escapes; -1 otherwise."""
    q = p + 1
    while q < end:
        k = _CLASS[buf[q]]
        if k == 0:
            q += 1
            continue
        if k == 1:
            return q + 1
        if buf[q] != 92 or q + 1 >= end:
            return FAIL
        e = buf[q + 1]
        if e == 117:  # \uXXXX; surrogates (pairs or not) are left to msgspec
            if q + 6 > end:
                return FAIL
            v = 0
            for j in range(q + 2, q + 6):
                h = _hex(buf[j])
                if h < 0:
                    return FAIL
                v = v * 16 + h
            if 0xD800 <= v <= 0xDFFF:
                return FAIL
            q += 6
        elif _SIMPLE_ESCAPE[e]:
            q += 2
        else:
            return FAIL
    return FAIL


@njit
def _number(
    buf: np.ndarray, p: int, end: int
) -> tuple[int, int, int, int, int, int]:  # pragma: no cover - jit
    """Strict JSON number at ``p``: (end index or -1, negative, mantissa, significant
    digits, power of ten, is a plain integer). The mantissa is exact only for <= 18
    significant digits."""
    neg = 0
    if p < end and buf[p] == 45:
        neg = 1
        p += 1
    if p >= end:
        return FAIL, 0, 0, 0, 0, 0
    c = buf[p]
    mant = 0
    nsig = 0
    exp = 0
    if c == 48:
        p += 1
    elif 49 <= c <= 57:
        while p < end and 48 <= buf[p] <= 57:
            if nsig < 18:
                mant = mant * 10 + (int(buf[p]) - 48)
            nsig += 1
            p += 1
    else:
        return FAIL, 0, 0, 0, 0, 0
    isint = 1
    if p < end and buf[p] == 46:
        isint = 0
        p += 1
        first = p
        while p < end and 48 <= buf[p] <= 57:
            d = int(buf[p]) - 48
            if nsig > 0 or d != 0:
                if nsig < 18:
                    mant = mant * 10 + d
                nsig += 1
            exp -= 1
            p += 1
        if p == first:
            return FAIL, 0, 0, 0, 0, 0
    if p < end and (buf[p] == 101 or buf[p] == 69):
        isint = 0
        p += 1
        sign = 1
        if p < end and (buf[p] == 43 or buf[p] == 45):
            if buf[p] == 45:
                sign = -1
            p += 1
        first = p
        e = 0
        while p < end and 48 <= buf[p] <= 57:
            if e < 100_000:
                e = e * 10 + (int(buf[p]) - 48)
            p += 1
        if p == first:
            return FAIL, 0, 0, 0, 0, 0
        exp += sign * e
    return p, neg, mant, nsig, exp, isint


@njit
def _literal(buf: np.ndarray, p: int, end: int) -> tuple[int, int]:  # pragma: no cover - jit
    """(end index or -1, kind) of ``null`` (0), ``false`` (1) or ``true`` (2) at ``p``."""
    c = buf[p]
    if c == 110 and p + 4 <= end and buf[p + 1] == 117 and buf[p + 2] == 108 and buf[p + 3] == 108:
        return p + 4, 0
    if c == 116 and p + 4 <= end and buf[p + 1] == 114 and buf[p + 2] == 117 and buf[p + 3] == 101:
        return p + 4, 2
    if (
        c == 102
        and p + 5 <= end
        and buf[p + 1] == 97
        and buf[p + 2] == 108
        and buf[p + 3] == 115
        and buf[p + 4] == 101
    ):
        return p + 5, 1
    return FAIL, 0


@njit
def _skip_value(
    buf: np.ndarray, p: int, end: int, stack: np.ndarray
) -> int:  # pragma: no cover - jit
    """Index after the (strictly valid) JSON value at ``p``; -1 if invalid or too deep."""
    depth = 0
    while True:  # p is at a value
        p = _ws(buf, p, end)
        if p >= end:
            return FAIL
        c = buf[p]
        closed = True
        if c == 123 or c == 91:  # noqa: PLR1714 - numba: no sets; { [
            if depth >= MAX_DEPTH:
                return FAIL
            stack[depth] = c
            depth += 1
            p = _ws(buf, p + 1, end)
            if p >= end:
                return FAIL
            if buf[p] == c + 2:  # } ]
                p += 1
                depth -= 1
            elif c == 123:
                closed = False
                p = _skip_key(buf, p, end)
                if p < 0:
                    return FAIL
            else:
                closed = False
        elif c == 34:
            p = _skip_str(buf, p, end)
        elif c == 45 or 48 <= c <= 57:
            p = _number(buf, p, end)[0]
        else:
            p = _literal(buf, p, end)[0]
        if p < 0:
            return FAIL
        if not closed:
            continue  # a container's first value
        while True:  # after a value: close containers or move to the next member
            if depth == 0:
                return p
            p = _ws(buf, p, end)
            if p >= end:
                return FAIL
            c = buf[p]
            top = stack[depth - 1]
            if c == top + 2:
                p += 1
                depth -= 1
                continue
            if c != 44:
                return FAIL
            p += 1
            if top == 123:
                p = _skip_key(buf, _ws(buf, p, end), end)
                if p < 0:
                    return FAIL
            break


@njit
def _skip_key(buf: np.ndarray, p: int, end: int) -> int:  # pragma: no cover - jit
    """At a member's key: index after its ``:`` (and whitespace), or -1."""
    if p >= end or buf[p] != 34:
        return FAIL
    p = _skip_str(buf, p, end)
    if p < 0:
        return FAIL
    p = _ws(buf, p, end)
    if p >= end or buf[p] != 58:
        return FAIL
    return p + 1


@njit
def _next(buf: np.ndarray, p: int, end: int) -> tuple[int, int]:  # pragma: no cover - jit
    """After a member's value: (1, next key index) on ``,``, (0, index after ``}``) at the
    object's end, (-1, -1) otherwise."""
    p = _ws(buf, p, end)
    if p < end:
        if buf[p] == 44:
            return 1, _ws(buf, p + 1, end)
        if buf[p] == 125:
            return 0, p + 1
    return -1, FAIL


@njit
def _int(
    buf: np.ndarray, p: int, end: int, lo: int, hi: int
) -> tuple[int, int]:  # pragma: no cover - jit
    """(index after, value) of a plain JSON integer in [lo, hi] at ``p``; index -1 if it is
    anything else (null included)."""
    q, neg, mant, nsig, _, isint = _number(buf, p, end)
    if q < 0 or not isint or nsig > 18:
        return FAIL, 0
    v = -mant if neg else mant
    if v < lo or v > hi or (neg and v == 0):  # -0: leave msgspec's reading to msgspec
        return FAIL, 0
    return q, v


@njit
def _nonneg_float(buf: np.ndarray, p: int, end: int) -> tuple[int, float]:  # pragma: no cover - jit
    """(index after, value) of a non-negative JSON number whose float64 is exact; -1 else."""
    q, neg, mant, nsig, exp, _ = _number(buf, p, end)
    if q < 0 or neg or nsig > 18 or mant >= 2**53 or exp < -22 or exp > 22:
        return FAIL, 0.0
    if exp >= 0:
        return q, float(mant) * _POW10[exp]
    return q, float(mant) / _POW10[-exp]


@njit
def _time(
    buf: np.ndarray, p: int, end: int, stack: np.ndarray
) -> tuple[int, int]:  # pragma: no cover - jit
    """(index after, epoch ms) of a raw JSON time, as :func:`.rfc3339.json_times_ms`
    reads it: string → RFC 3339 or INVALID, integer → ms (INVALID beyond 18 digits),
    null → MISSING, any other value → WRONG_TYPE."""
    c = buf[p]
    if c == 34:
        q = _str_end(buf, p, end)
        if q < 0:
            return FAIL, 0
        return q + 1, _parse_one(buf, p + 1, q)
    if c == 45 or 48 <= c <= 57:
        q, neg, mant, nsig, _, isint = _number(buf, p, end)
        if q < 0:
            return FAIL, 0
        if not isint:
            return q, WRONG_TYPE
        if nsig > 18:
            return q, INVALID
        return q, -mant if neg else mant
    if c == 110:
        q = _literal(buf, p, end)[0]
        return q, MISSING
    q = _skip_value(buf, p, end, stack)
    return q, WRONG_TYPE


@njit
def _str_or_null(
    buf: np.ndarray, p: int, end: int
) -> tuple[int, int, int]:  # pragma: no cover - jit
    """(index after, start, end) of a kept string at ``p``; start -1 for null; index -1
    for anything else."""
    if buf[p] == 34:
        q = _str_end(buf, p, end)
        if q < 0:
            return FAIL, 0, 0
        return q + 1, p + 1, q
    q, kind = _literal(buf, p, end)
    if q < 0 or kind != 0:
        return FAIL, 0, 0
    return q, -1, -1
