"""Slow, obviously correct model of the dedup set (stream/core/dedup.py) for the tests.

An id first seen at stream-clock time ``c`` is remembered until the clock reaches
``(c // width + 1) * width + horizon`` (the end of its generation plus the horizon), with
``width = ceil(horizon / generations)``. A repeat while remembered is a duplicate and
changes nothing; the clock never goes back (a lower clock counts as the current one).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

NO_TIME = -(2**63)


class ReferenceDeduper:
    def __init__(self, horizon_ms: int, generations: int = 16) -> None:
        self.horizon_ms = horizon_ms
        self.width = -(-horizon_ms // generations)
        self.clock = NO_TIME
        self.until: dict[Hashable, int] = {}  # id -> clock at which it is forgotten

    def check(self, events: Iterable[tuple[Hashable, int]]) -> list[bool]:
        """Duplicate flags of ``(id, clock)`` pairs in stream order."""
        out = []
        for key, clock in events:
            self.clock = max(self.clock, clock)
            now = self.clock
            if key in self.until and now < self.until[key]:
                out.append(True)
            else:
                out.append(False)
                self.until[key] = (now // self.width + 1) * self.width + self.horizon_ms
        return out

    def expire(self, clock: int) -> None:
        self.clock = max(self.clock, clock)

    def __len__(self) -> int:
        return sum(1 for until in self.until.values() if self.clock < until)
