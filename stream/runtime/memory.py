"""Keep the worker's resident memory close to what it really holds (glibc only).

Batches allocate and free many medium-sized buffers (numpy, pandas, Arrow). glibc's malloc
raises its mmap threshold after large frees and then keeps freed memory in its heaps, so a
long-running worker's RSS drifts far above its live data (measured: ~200 MiB per worker).
``tune()`` pins the thresholds at start; ``trim()`` hands free heap pages back to the OS
and is called after flushes, at most every few seconds. Both are no-ops off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TRIM_EVERY_S = 5.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - probe: glibc has it, musl and macOS do not
    except (OSError, AttributeError):
        return None
    return libc


_libc = _glibc()

_last_trim = 0.0


def tune() -> None:
    """Fix malloc's mmap threshold (256 KiB) and trim threshold (1 MiB)."""
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
        _libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)


def trim() -> None:
    """Return free heap memory to the OS, at most every few seconds."""
    global _last_trim  # noqa: PLW0603 - one process-wide rate limit
    now = time.monotonic()
    if _libc is not None and now - _last_trim >= _TRIM_EVERY_S:
        _last_trim = now
        _libc.malloc_trim(0)
