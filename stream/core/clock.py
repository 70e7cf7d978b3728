"""The stream's clock: one per partition (or per replay), in epoch milliseconds.

Budget windows, dedup expiry and drift/freshness windows all run on this clock, never on
the largest timestamp an event claims. It advances:

* with event time: to the largest ``ts`` of the admitted events, in stream order;
* with the wall clock while the stream is idle: once no event has moved it for
  ``idle_ms`` of wall time, :meth:`StreamClock.tick` moves it up to the wall clock, so a
  tenant that sends nothing (e.g. because a gateway refuses it) still sees its sliding
  spend decay and its calendar period end.

An event whose ``ts`` is more than ``max_future_skew_ms`` ahead of the wall clock is not
admitted (the engine rejects it as ``ts_in_future``), so no single event can push the clock
beyond the wall clock plus that skew. Old events are admitted and leave the clock where it
is: they count in their own minute, period and windows.

The wall clock is a callable returning epoch ms, given by the caller (the real one in the
CLI and worker, :class:`~llmops_stream.stream.testing.ManualClock` in tests).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NO_TIME = int(np.iinfo(np.int64).min)
"""Clock value before the first event (below every real time)."""

WallClock = Callable[[], int]


class StreamClock:
    """Event-time clock bounded by the wall clock; see the module doc.

    ``wall``: returns the wall-clock time, epoch ms. ``max_future_skew_ms``: how far ahead
    of the wall clock an event may be (default 15 min). ``idle_ms``: wall time without
    progress after which :meth:`tick` follows the wall clock.
    """

    def __init__(
        self, wall: WallClock, *, max_future_skew_ms: int = 900_000, idle_ms: int = 1_000
    ) -> None:
        if max_future_skew_ms < 0 or idle_ms < 0:
            raise ValueError("max_future_skew_ms and idle_ms must be >= 0")
        self.wall = wall
        self.max_future_skew_ms = int(max_future_skew_ms)
        self.idle_ms = int(idle_ms)
        self.value = NO_TIME
        self._progress_wall = int(wall())  # wall time of the last advance by an event

    def future_mask(self, ts_ms: np.ndarray) -> np.ndarray:
        """bool[n]: events too far ahead of the wall clock (to be rejected)."""
        limit = int(self.wall()) + self.max_future_skew_ms
        return np.asarray(ts_ms, dtype=np.int64) > limit

    def advance(self, ts_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance over admitted events ``ts_ms`` (int64[n], stream order).

        Returns ``(before, at)``: int64[n] clock just before each event and just after it
        (``at[i] = max(before[i], ts[i])``, non-decreasing). The caller has already dropped
        the events of :meth:`future_mask`.
        """
        ts = np.asarray(ts_ms, dtype=np.int64)
        n = ts.shape[0]
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        at = np.maximum.accumulate(np.maximum(ts, self.value))
        before = np.empty(n, np.int64)
        before[0] = self.value
        before[1:] = at[:-1]
        if int(at[-1]) > self.value:
            self.value = int(at[-1])
            self._progress_wall = int(self.wall())
        return before, at

    def tick(self) -> bool:
        """Follow the wall clock if idle for ``idle_ms``; True when the clock moved."""
        now = int(self.wall())
        # idle counts from the last advance by an event, so once idle the clock keeps up
        # with the wall at every tick (a tenant released at its window's end is released
        # within one tick, not one idle period, later)
        if self.value != NO_TIME and now - self._progress_wall >= self.idle_ms and now > self.value:
            self.value = now
            return True
        return False

    def restore(self, value: int) -> None:
        """Continue from a checkpointed clock ``value`` (idle time counts from now)."""
        self.value = int(value)
        self._progress_wall = int(self.wall())
