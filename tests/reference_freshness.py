"""Slow, obviously correct reference implementation of chunk staleness (freshness).

One event and one chunk at a time, in Python integers, mirroring SPEC §3 "Freshness", so
the vectorised ``chunk_staleness`` can be compared with it. The share-alert reference is
in ``reference_windows``.
"""

import math
from typing import Any

MISSING = -(2**63)


def ref_chunk_staleness(
    ts: list[int],
    offsets: list[int],
    embedded: list[int],
    source: list[int],
    max_age: list[int],
) -> dict[str, list[Any]]:
    """Per event: chunk, stale and outdated counts; per outdated chunk: (lag, event)."""
    out: dict[str, list[Any]] = {"n_chunks": [], "n_stale": [], "n_outdated": [], "lags": []}
    for i, t in enumerate(ts):
        stale = outdated = 0
        for c in range(offsets[i], offsets[i + 1]):
            if embedded[c] == MISSING:
                continue
            is_outdated = source[c] != MISSING and source[c] > embedded[c]
            is_too_old = t - embedded[c] > max_age[i]
            if is_outdated:
                outdated += 1
                out["lags"].append((t - source[c], i))
            if is_outdated or is_too_old:
                stale += 1
        out["n_chunks"].append(offsets[i + 1] - offsets[i])
        out["n_stale"].append(stale)
        out["n_outdated"].append(outdated)
    return out


def ceil_rank(n: int, q: float) -> int:
    """1-based rank of the q-quantile among n values."""
    return max(1, math.ceil(q * n))
