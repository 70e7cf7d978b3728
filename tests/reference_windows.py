"""Slow, obviously correct reference for share alerts (``stream.core.windows``).

One event at a time, dicts of Python integers, and at every closed window every pair is
judged from scratch by walking back window by window: the rule of SPEC §3 ("Eval-set
drift", "Alerts have a lifecycle") written as plainly as possible, without the pruning,
the skipping of empty windows or the arrays of the real implementation.
"""

from typing import Any


class RefShareWindows:
    """Share alerts on the stream clock; :meth:`close` returns plain dicts, in order."""

    def __init__(
        self,
        *,
        window_ms: int,
        threshold: float,
        min_count: int,
        lateness_ms: int,
        max_window_ms: int,
        hysteresis: float = 0.0,
    ) -> None:
        self.window_ms = window_ms
        self.threshold = threshold
        self.hysteresis = hysteresis
        self.min_count = min_count
        self.lateness_ms = lateness_ms
        self.max_windows = max_window_ms // window_ms
        self.late_events = 0
        self.closed_end: int | None = None  # windows ending at or before it are closed
        self.next_window: int | None = None  # start of the next window to judge
        # (tenant, app) -> window start -> [numerator, denominator, lags]
        self.data: dict[tuple[str, str], dict[int, list[Any]]] = {}
        # (tenant, app) -> episode start, while firing
        self.firing: dict[tuple[str, str], int] = {}

    def add_event(
        self,
        tenant: str,
        app: str | None,
        ts: int,
        *,
        clock_before: int,
        num: int,
        den: int,
        lags: list[int],
    ) -> None:
        start = ts // self.window_ms * self.window_ms
        end = start + self.window_ms
        closed = self.closed_end is not None and end <= self.closed_end
        if end <= clock_before - self.lateness_ms or closed:
            if den > 0:
                self.late_events += 1
            return
        if den == 0 and not lags:
            return
        windows = self.data.setdefault((tenant, "" if app is None else app), {})
        entry = windows.setdefault(start, [0, 0, []])
        entry[0] += num
        entry[1] += den
        entry[2].extend(max(lag, 0) for lag in lags)

    def _open_ends(self) -> list[int]:
        return [
            start + self.window_ms
            for windows in self.data.values()
            for start in windows
            if self.closed_end is None or start + self.window_ms > self.closed_end
        ]

    def close(self, clock: int | None) -> list[dict[str, Any]]:
        """Close windows ending at or before ``clock - lateness`` (all open ones for None)."""
        if clock is None:
            ends = self._open_ends()
            if not ends:
                return []
            bound = max(ends)
        else:
            bound = clock - self.lateness_ms
        if self.closed_end is not None and bound <= self.closed_end:
            return []
        if self.next_window is None:
            starts = [end - self.window_ms for end in self._open_ends()]
            if starts:
                self.next_window = min(starts)
        self.closed_end = bound
        out: list[dict[str, Any]] = []
        while self.next_window is not None and self.next_window + self.window_ms <= bound:
            for key in sorted(self.data):
                alert = self._judge(key, self.next_window)
                if alert is not None:
                    out.append(alert)
            self.next_window += self.window_ms
        return out

    def _judge(self, key: tuple[str, str], window: int) -> dict[str, Any] | None:
        need = max(self.min_count, 1)
        num = den = 0
        lags: list[int] = []
        evidence = False
        oldest = window
        for k in range(self.max_windows):
            oldest = window - k * self.window_ms
            entry = self.data[key].get(oldest)
            if entry is not None:
                num += entry[0]
                den += entry[1]
                lags += entry[2]
            if den >= need:
                evidence = True
                break
        above = evidence and num / den > self.threshold
        # an open episode stays open while the share is above threshold - hysteresis
        keep = evidence and num / den > self.threshold - self.hysteresis
        if above and key not in self.firing:
            self.firing[key] = window
            status, reason, episode = "firing", None, window
        elif not keep and key in self.firing:
            episode = self.firing.pop(key)
            status, reason = "resolved", "below_threshold" if evidence else "no_data"
        else:
            return None
        return {
            "window": window,
            "tenant": key[0],
            "app": key[1],
            "status": status,
            "reason": reason,
            "episode": episode,
            "value": num / den if den else 0.0,
            "numerator": num,
            "denominator": den,
            "span_start": oldest,
            "span_end": window + self.window_ms,
            "lags": sorted(lags),
        }
