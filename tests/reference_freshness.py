"""Slow, obviously correct reference implementations for freshness and share windows.

One event (and one chunk) at a time, in Python integers and dicts, mirroring the rules of
SPEC §3 "Freshness"/"Eval-set drift" and the documented window semantics, so the
vectorised ``chunk_staleness`` and ``ShareWindows`` can be compared with them.
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


class RefShareWindows:
    """Share windows kept in a dict, fed one event at a time, closed once at the end.

    An event is late when its window ends at or before (max timestamp of the events before
    it) - lateness; late events with a non-zero denominator are counted and dropped.
    """

    def __init__(self, window_ms: int, threshold: float, min_count: int, lateness_ms: int) -> None:
        self.window_ms = window_ms
        self.threshold = threshold
        self.min_count = min_count
        self.lateness_ms = lateness_ms
        self.watermark: int | None = None
        self.late_events = 0
        # (start, tenant, app) -> [numerator, denominator, lags]
        self.windows: dict[tuple[int, str, str], list[Any]] = {}

    def add_event(
        self, tenant: str, app: str | None, ts: int, *, num: int, den: int, lags: list[int]
    ) -> None:
        start = (ts // self.window_ms) * self.window_ms
        late = (
            self.watermark is not None
            and start + self.window_ms <= self.watermark - self.lateness_ms
        )
        self.watermark = ts if self.watermark is None else max(self.watermark, ts)
        if late:
            if den > 0:
                self.late_events += 1
            return
        if den == 0 and num == 0 and not lags:
            return
        key = (start, tenant, "" if app is None else app)
        entry = self.windows.setdefault(key, [0, 0, []])
        entry[0] += num
        entry[1] += den
        entry[2].extend(max(lag, 0) for lag in lags)

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts of every window, sorted by (start, tenant, app)."""
        out = []
        for (start, tenant, app), (num, den, lags) in sorted(self.windows.items()):
            if den == 0 or den < self.min_count or not num / den > self.threshold:
                continue
            out.append(
                {
                    "start": start,
                    "tenant": tenant,
                    "app": app,
                    "value": num / den,
                    "numerator": num,
                    "denominator": den,
                    "lags": sorted(lags),
                }
            )
        return out


def ceil_rank(n: int, q: float) -> int:
    """1-based rank of the q-quantile among n values."""
    return max(1, math.ceil(q * n))
