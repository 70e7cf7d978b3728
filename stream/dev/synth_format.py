"""JSON text of synthetic event times and retrieval chunks, written by numba kernels.

Job
---
:func:`_format_times` gives event times in the mixed wire formats of the traffic (RFC 3339
with ``Z``, ``+00:00`` or ``+02:00``, or integer epoch ms). :func:`_chunks_kernel` writes
the ``retrieval.chunks`` JSON array of many queries in one call. Both write ASCII bytes
into one buffer that is decoded and split once, instead of a Python string operation per
event.
"""

from __future__ import annotations

import numpy as np

from llmops_stream.stream.core._numba import njit

_SUFFIXES = (b"Z", b"+00:00", b"+02:00")
_SUFFIX_BYTES = np.frombuffer(b"Z\0\0\0\0\0+00:00+02:00", dtype=np.uint8).reshape(3, 6)
_SUFFIX_LEN = np.array([len(x) for x in _SUFFIXES], dtype=np.int64)
_TIME_BYTES = 32  # room for one quoted time token and its separator


@njit
def _put_padded(out: np.ndarray, pos: int, value: int, width: int) -> int:
    """Write ``value`` >= 0 as exactly ``width`` zero-padded digits; return the new end."""
    for k in range(width - 1, -1, -1):
        out[pos + k] = 48 + value % 10
        value //= 10
    return pos + width


@njit
def _put_int(out: np.ndarray, pos: int, value: int) -> int:
    """Write an integer in decimal; return the new end."""
    if value < 0:
        out[pos] = 45
        pos += 1
        value = -value
    width = 1
    probe = value
    while probe >= 10:
        probe //= 10
        width += 1
    return _put_padded(out, pos, value, width)


@njit
def _put_bytes(out: np.ndarray, pos: int, src: np.ndarray, start: int, stop: int) -> int:
    for k in range(start, stop):
        out[pos] = src[k]
        pos += 1
    return pos


@njit
def _put_time(  # noqa: PLR0917 - numba kernels take plain positional arrays
    out: np.ndarray,
    pos: int,
    t: int,
    style: int,
    quoted: bool,
    suffix: np.ndarray,
    suffix_len: np.ndarray,
) -> int:
    """Write one event time: ``YYYY-MM-DDTHH:MM:SS.mmm<suffix>`` (in double quotes if
    ``quoted``: a JSON token), or for style 3 the integer epoch ms (only if ``quoted``;
    otherwise nothing, the caller supplies the int). Returns the new end.

    Civil date from days since 1970-01-01 after H. Hinnant's ``civil_from_days``."""
    if style == 3:
        return _put_int(out, pos, t) if quoted else pos
    if quoted:
        out[pos] = 34
        pos += 1
    if style == 2:
        t += 7_200_000  # "+02:00" shows the local wall time
    days = t // 86_400_000
    rem = t - days * 86_400_000
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    pos = _put_padded(out, pos, year, 4)
    out[pos] = 45  # -
    pos = _put_padded(out, pos + 1, month, 2)
    out[pos] = 45
    pos = _put_padded(out, pos + 1, day, 2)
    out[pos] = 84  # T
    pos = _put_padded(out, pos + 1, rem // 3_600_000, 2)
    out[pos] = 58  # :
    pos = _put_padded(out, pos + 1, rem // 60_000 % 60, 2)
    out[pos] = 58
    pos = _put_padded(out, pos + 1, rem // 1000 % 60, 2)
    out[pos] = 46  # .
    pos = _put_padded(out, pos + 1, rem % 1000, 3)
    pos = _put_bytes(out, pos, suffix[style], 0, suffix_len[style])
    if quoted:
        out[pos] = 34
        pos += 1
    return pos


@njit
def _format_times_kernel(  # noqa: PLR0917 - numba kernels take plain positional arrays
    ms: np.ndarray,
    style: np.ndarray,
    suffix: np.ndarray,
    suffix_len: np.ndarray,
    quoted: bool,
    out: np.ndarray,
) -> int:
    """One time per line (see :func:`_put_time`) into ``out``; returns bytes written."""
    pos = 0
    for i in range(ms.shape[0]):
        pos = _put_time(out, pos, ms[i], style[i], quoted, suffix, suffix_len)
        out[pos] = 10
        pos += 1
    return pos


def _time_lines(ms: np.ndarray, style: np.ndarray, *, quoted: bool) -> list[str]:
    """Kernel output split into one string per time (see :func:`_put_time`)."""
    if len(ms) == 0:
        return []
    ms = np.ascontiguousarray(ms, dtype=np.int64)
    style = np.ascontiguousarray(style, dtype=np.int64)
    buf = np.empty(len(ms) * _TIME_BYTES, dtype=np.uint8)
    used = _format_times_kernel(ms, style, _SUFFIX_BYTES, _SUFFIX_LEN, quoted, buf)
    # One decode and one split instead of a Python string operation per event.
    return buf[: used - 1].tobytes().decode("ascii").split("\n")


def _format_times(ms: np.ndarray, style: np.ndarray) -> list[str | int]:
    """Event times in mixed wire formats, one per element of ``ms`` (int64 epoch ms).

    ``style``: 0 RFC 3339 ``Z``, 1 ``+00:00``, 2 ``+02:00`` (local wall time), 3 integer
    epoch ms. All RFC 3339 forms carry milliseconds."""
    out: list[str | int] = list(_time_lines(ms, style, quoted=False))
    for i in np.flatnonzero(style == 3).tolist():
        out[i] = int(ms[i])
    return out


_CHUNK_PIECES = (
    b'{"chunk_id":"', b"-doc-", b"#", b'","doc_id":"', b'","embedded_at":',
    b',"source_updated_at":', b',"score":0.', b"}",
)  # fmt: skip
_CHUNK_LIT = np.frombuffer(b"".join(_CHUNK_PIECES), dtype=np.uint8)
_CHUNK_LIT_OFF = np.cumsum([0] + [len(p) for p in _CHUNK_PIECES]).astype(np.int64)


@njit
def _chunks_kernel(  # noqa: PLR0917, PLR0914 - numba kernels take plain positional arrays
    count: np.ndarray,
    app: np.ndarray,
    names: np.ndarray,
    names_off: np.ndarray,
    doc: np.ndarray,
    part: np.ndarray,
    embedded: np.ndarray,
    source: np.ndarray,
    style: np.ndarray,
    score_e4: np.ndarray,
    lit: np.ndarray,
    lit_off: np.ndarray,
    suffix: np.ndarray,
    suffix_len: np.ndarray,
    out: np.ndarray,
) -> int:
    """The ``retrieval.chunks`` JSON array of each query, one per line.

    ``count[q]`` chunks per query, flat chunk columns in query order; ``app[q]`` indexes the
    app names (``names`` bytes, ``names_off`` offsets). Every value is ASCII without quotes
    or backslashes, so nothing needs escaping. Returns bytes written."""
    pos = 0
    k = 0
    for q in range(count.shape[0]):
        a0 = names_off[app[q]]
        a1 = names_off[app[q] + 1]
        out[pos] = 91  # [
        pos += 1
        for c in range(count[q]):
            if c:
                out[pos] = 44  # ,
                pos += 1
            pos = _put_bytes(out, pos, lit, lit_off[0], lit_off[1])
            doc_start = pos
            pos = _put_bytes(out, pos, names, a0, a1)
            pos = _put_bytes(out, pos, lit, lit_off[1], lit_off[2])
            pos = _put_padded(out, pos, doc[k], 5)
            doc_stop = pos
            pos = _put_bytes(out, pos, lit, lit_off[2], lit_off[3])
            pos = _put_int(out, pos, part[k])
            pos = _put_bytes(out, pos, lit, lit_off[3], lit_off[4])
            pos = _put_bytes(out, pos, out, doc_start, doc_stop)
            pos = _put_bytes(out, pos, lit, lit_off[4], lit_off[5])
            pos = _put_time(out, pos, embedded[k], style[k], True, suffix, suffix_len)
            pos = _put_bytes(out, pos, lit, lit_off[5], lit_off[6])
            pos = _put_time(out, pos, source[k], style[k], True, suffix, suffix_len)
            pos = _put_bytes(out, pos, lit, lit_off[6], lit_off[7])
            pos = _put_padded(out, pos, score_e4[k], 4)
            pos = _put_bytes(out, pos, lit, lit_off[7], lit_off[8])
            k += 1
        out[pos] = 93  # ]
        out[pos + 1] = 10
        pos += 2
    return pos
