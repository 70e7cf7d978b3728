"""Numba options in one place, so every kernel compiles the same way.

``cache=True`` keeps compiled kernels on disk between processes (start-up matters for a
CLI); ``fastmath`` stays off: reductions must match the reference implementations and
NaN/inf must keep IEEE semantics (they are rejected upstream, but we never rely on that).
"""

from typing import Any

from numba import njit as _njit

NJIT_OPTIONS: dict[str, Any] = {"cache": True, "fastmath": False, "nogil": True}


def njit(fn: Any) -> Any:
    """Compile ``fn`` with the project's numba options."""
    return _njit(**NJIT_OPTIONS)(fn)
