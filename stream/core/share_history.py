"""Array state behind :class:`~.windows.ShareWindows`: open-window counts, the closed-window
history of every (tenant, app) pair, and the evidence rule and alert lifecycle computed
over whole arrays at once (the rule itself is documented in :mod:`.windows`).

Pairs are small integer ids. An *entry* is one closed window of one pair: (pair, window
start, numerator, denominator) plus a sparse lag histogram (CSR: the lag rows of entry
``e`` are ``lag_off[e]:lag_off[e + 1]`` of ``lag_bin``/``lag_cnt``). The history keeps its
entries sorted by (pair, start), so a pair is one contiguous segment and, because counts
are never negative, one global prefix sum of the denominators is non-decreasing: the
evidence span of every judged entry is then a single ``searchsorted`` for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._numba import njit
from .histograms import N_BINS

# Open rows with at least this many pending (uncompacted) columns are summed up.
_COMPACT_AT = 1 << 16


def _prefix(values: np.ndarray) -> np.ndarray:
    """``out[i] = values[:i].sum()``, int64[n + 1]."""
    out = np.zeros(values.shape[0] + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def segment_first(pair: np.ndarray) -> np.ndarray:
    """For each row of a pair-sorted array, the index of its pair's first row."""
    n = pair.shape[0]
    starts = np.ones(n, dtype=bool)
    starts[1:] = pair[1:] != pair[:-1]
    return np.maximum.accumulate(np.where(starts, np.arange(n), 0)) if n else pair.copy()


@dataclass(slots=True)
class Entries:
    """Closed (pair, window) counts with a sparse lag histogram each; see the module doc."""

    pair: np.ndarray
    start: np.ndarray
    num: np.ndarray
    den: np.ndarray
    lag_off: np.ndarray
    lag_bin: np.ndarray
    lag_cnt: np.ndarray

    @classmethod
    def empty(cls) -> Entries:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, np.zeros(1, dtype=np.int64), z, z)

    def __len__(self) -> int:
        return int(self.pair.shape[0])

    def take(self, idx: np.ndarray) -> Entries:
        """The entries ``idx`` (in that order), lag rows following their entries."""
        if self.lag_bin.shape[0] == 0:  # no lags at all (drift): nothing to gather
            off = np.zeros(idx.shape[0] + 1, dtype=np.int64)
            lag_bin, lag_cnt = self.lag_bin, self.lag_cnt
        else:
            lengths = self.lag_off[idx + 1] - self.lag_off[idx]
            off = _prefix(lengths)
            rows = np.repeat(self.lag_off[idx] - off[:-1], lengths) + np.arange(off[-1])
            lag_bin, lag_cnt = self.lag_bin[rows], self.lag_cnt[rows]
        return Entries(
            self.pair[idx], self.start[idx], self.num[idx], self.den[idx], off, lag_bin, lag_cnt
        )

    def insert(self, new: Entries) -> tuple[Entries, np.ndarray]:
        """Merge ``new`` (sorted by pair, start; each newer than all entries of its pair).

        Returns the merged entries and a bool mask of the rows that came from ``new``. A
        linear merge (not a sort): a window close must not cost a sort of the history.
        """
        n, k = len(self), len(new)
        pos = np.searchsorted(self.pair, new.pair, side="right") + np.arange(k)
        is_new = np.zeros(n + k, dtype=bool)
        is_new[pos] = True
        order = np.empty(n + k, dtype=np.int64)
        order[pos] = n + np.arange(k)
        order[~is_new] = np.arange(n)
        both = Entries(
            np.concatenate([self.pair, new.pair]),
            np.concatenate([self.start, new.start]),
            np.concatenate([self.num, new.num]),
            np.concatenate([self.den, new.den]),
            np.concatenate([self.lag_off, new.lag_off[1:] + self.lag_off[-1]]),
            np.concatenate([self.lag_bin, new.lag_bin]),
            np.concatenate([self.lag_cnt, new.lag_cnt]),
        )
        return both.take(order), is_new

    def rows_between(self, first: int, stop: int, lo_start: int, hi_start: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` within ``[first, stop)`` (one pair) whose start is in
        ``[lo_start, hi_start]``."""
        starts = self.start[first:stop]
        lo = first + int(np.searchsorted(starts, lo_start, side="left"))
        hi = first + int(np.searchsorted(starts, hi_start, side="right"))
        return lo, hi

    def arrays(self) -> list[bytes]:
        """The columns as little-endian int64 bytes (for snapshots)."""
        cols = (self.pair, self.start, self.num, self.den, self.lag_off, self.lag_bin)
        return [c.astype("<i8").tobytes() for c in (*cols, self.lag_cnt)]

    @classmethod
    def from_arrays(cls, raw: list[bytes]) -> Entries:
        cols = [np.frombuffer(b, dtype="<i8").astype(np.int64) for b in raw]
        return cls(*cols)


class OpenRows:
    """Counts of the windows still open, as int64 columns ``(start, pair, bin, num, den, cnt)``.

    A row with ``bin == -1`` holds event counts of one (window, pair); a row with ``bin >= 0``
    the count of one lag bin. Batches are appended as they come and summed per
    (start, pair, bin) only when needed, so adding stays O(batch) however many windows and
    pairs are open.
    """

    def __init__(self, window_ms: int, rows: np.ndarray | None = None) -> None:
        self.window_ms = window_ms
        self.rows = np.zeros((6, 0), dtype=np.int64) if rows is None else rows
        self.pending: list[np.ndarray] = []
        self.pending_len = 0

    def append(self, block: np.ndarray) -> None:
        self.pending.append(block)
        self.pending_len += block.shape[1]
        # Compacting only once pending rows outnumber the compacted ones keeps it amortised.
        if self.pending_len >= max(_COMPACT_AT, self.rows.shape[1]):
            self.compact()

    def _order(self, data: np.ndarray, *, pair_major: bool = False) -> np.ndarray:
        """Column order by (start, pair, bin), or (pair, start, bin): one int64 key sorts
        much faster than a three-key lexsort, when windows and pairs are few enough to pack."""
        start, pair, lag_bin = data[0], data[1], data[2]
        if start.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        lo = int(start.min())
        n_windows = (int(start.max()) - lo) // self.window_ms + 1
        n_pairs = int(pair.max()) + 1
        if n_windows * n_pairs * (N_BINS + 1) >= 1 << 62:
            if pair_major:
                return np.lexsort((lag_bin, start, pair))
            return np.lexsort((lag_bin, pair, start))
        window = (start - lo) // self.window_ms
        major = pair * n_windows + window if pair_major else window * n_pairs + pair
        return np.argsort(major * (N_BINS + 1) + lag_bin + 1)

    def compact(self) -> None:
        if not self.pending:
            return
        data = np.concatenate([self.rows, *self.pending], axis=1)
        self.pending = []
        self.pending_len = 0
        data = data[:, self._order(data)]
        change = np.ones(data.shape[1], dtype=bool)
        change[1:] = np.any(data[:3, 1:] != data[:3, :-1], axis=0)
        heads = np.flatnonzero(change)
        if heads.shape[0] == data.shape[1]:
            self.rows = data
            return
        self.rows = np.vstack([data[:3, heads], np.add.reduceat(data[3:], heads, axis=1)])

    def starts(self) -> np.ndarray:
        """Start of every open window, ascending."""
        self.compact()
        return np.unique(self.rows[0])

    def pop_until(self, last_start: int) -> Entries:
        """Remove the windows starting at or before ``last_start``; their entries sorted by
        (pair, start), lag rows attached."""
        self.compact()
        k = int(np.searchsorted(self.rows[0], last_start, side="right"))
        taken, self.rows = self.rows[:, :k], self.rows[:, k:]
        taken = taken[:, self._order(taken, pair_major=True)]
        is_entry = taken[2] < 0
        # Every lag row has its event's count row (bin -1 sorts first in its group).
        heads = np.flatnonzero(is_entry)
        e = heads.shape[0]
        lag_off = np.empty(e + 1, dtype=np.int64)
        lag_off[:-1] = heads - np.arange(e)
        lag_off[-1] = k - e
        lags = taken[:, ~is_entry]
        return Entries(
            taken[1, heads],
            taken[0, heads],
            taken[3, heads],
            taken[4, heads],
            lag_off,
            lags[2],
            lags[5],
        )

    def first_start(self) -> int | None:
        """Earliest open window start (without compacting: called on every close)."""
        firsts = [int(b[0].min()) for b in self.pending if b.shape[1]]
        if self.rows.shape[1]:
            firsts.append(int(self.rows[0, 0]))
        return min(firsts, default=None)

    def last_start(self) -> int | None:
        lasts = [int(b[0].max()) for b in self.pending if b.shape[1]]
        if self.rows.shape[1]:
            lasts.append(int(self.rows[0, -1]))
        return max(lasts, default=None)


@dataclass(slots=True)
class Episodes:
    """Firing state per pair id (dense): whether an episode is open, the window start that
    opened it, and the oldest window start of its latest evidence (which is what ends it
    when traffic stops)."""

    firing: np.ndarray
    episode: np.ndarray
    evidence: np.ndarray

    @classmethod
    def empty(cls) -> Episodes:
        z = np.zeros(0, dtype=np.int64)
        return cls(np.zeros(0, dtype=bool), z, z)

    def grow(self, n_pairs: int) -> None:
        size = self.firing.shape[0]
        if size >= n_pairs:
            return
        extra = max(n_pairs, 2 * size, 16) - size
        self.firing = np.concatenate([self.firing, np.zeros(extra, dtype=bool)])
        self.episode = np.concatenate([self.episode, np.zeros(extra, dtype=np.int64)])
        self.evidence = np.concatenate([self.evidence, np.zeros(extra, dtype=np.int64)])

    def next_expiry(self, span_ms: int) -> int | None:
        """Earliest window start at which a firing pair runs out of evidence (no new data)."""
        ev = self.evidence[self.firing]
        return int(ev.min()) + span_ms if ev.shape[0] else None


class Transition(NamedTuple):
    """One alert to emit: judged at the window starting ``window``; the alert covers the
    history rows ``[lo, hi)`` of ``pair``, from ``span_start`` to the end of ``window``."""

    window: int
    pair: int
    status: str
    reason: str | None
    episode: int
    lo: int
    hi: int
    span_start: int


def _no_data(
    hist: Entries, reach: int, window: int, pid: int, *, episode: int, rows: tuple[int, int]
) -> Transition:
    """A no-data resolution judged at ``window``: it covers the longest span, with whatever
    the pair's history ``rows`` (a half-open range) still hold there."""
    lo, hi = hist.rows_between(rows[0], rows[1], window - reach, window)
    return Transition(window, pid, "resolved", "no_data", episode, lo, hi, window - reach)


@njit
def _scan(
    same: np.ndarray, above: np.ndarray, keep: np.ndarray, stored: np.ndarray, late: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The firing state machine over one close's judgements (bool[k] each, sorted by pair
    then window): ``same`` judgement of the pair of the one before, ``above`` share over
    the threshold, ``keep`` share over threshold - hysteresis, ``stored`` the pair's state
    before this close, ``late`` the previous evidence left the longest span before this
    window. Returns bool[k] ``expired``, ``fire``, ``resolve`` and the state after each."""
    k = same.shape[0]
    expired = np.zeros(k, np.bool_)
    fire = np.zeros(k, np.bool_)
    resolve = np.zeros(k, np.bool_)
    state = np.zeros(k, np.bool_)
    for t in range(k):
        before = state[t - 1] if same[t] else stored[t]
        expired[t] = before and late[t]
        held = before and not late[t]
        fire[t] = above[t] and not held
        resolve[t] = held and not keep[t]
        state[t] = fire[t] or (held and keep[t])
    return expired, fire, resolve, state


def lifecycle(
    hist: Entries,
    is_new: np.ndarray,
    eps: Episodes,
    *,
    min_count: int,
    threshold: float,
    window_ms: int,
    k_max: int,
    s_limit: int,
    hysteresis: float = 0.0,
) -> list[Transition]:
    """Judge every newly closed entry, run the firing/resolved state machine and end the
    episodes whose evidence runs out by window ``s_limit``; updates ``eps`` in place.

    A pair's judgement can only change at a window where it has new data, or at the one
    window where its evidence leaves the longest span; so judging just those windows is
    the same as judging every pair at every window, whatever the number of empty windows.
    """
    w = window_ms
    reach = (k_max - 1) * w  # the span of a window starting at S covers starts S-reach..S
    m = max(min_count, 1)  # a share needs a denominator
    den0 = _prefix(hist.den)
    num0 = _prefix(hist.num)
    first = segment_first(hist.pair)
    out: list[Transition] = []
    i = np.flatnonzero(is_new)
    if i.shape[0]:
        p, s = hist.pair[i], hist.start[i]
        # Newest-first, the span grows until its denominator reaches m: the oldest entry
        # needed is the last one whose prefix sum is <= (prefix at i+1) - m.
        j = np.searchsorted(den0, den0[i + 1] - m, side="right") - 1
        ok = j >= first[i]
        j = np.where(ok, j, i)
        ok &= hist.start[j] >= s - reach
        num, den = num0[i + 1] - num0[j], den0[i + 1] - den0[j]
        share = np.zeros(i.shape[0], dtype=np.float64)
        np.divide(num, den, out=share, where=ok)
        above = ok & (share > threshold)
        span = np.where(ok, hist.start[j], s)

        k = i.shape[0]
        t = np.arange(k)
        same = np.zeros(k, dtype=bool)  # previous judgement is of the same pair
        same[1:] = p[1:] == p[:-1]
        prev_span = np.where(same, np.roll(span, 1), eps.evidence[p])
        expiry = prev_span + k_max * w
        # an open episode stays open while the share is above threshold - hysteresis
        keep = ok & (share > threshold - hysteresis)
        expired, fire, resolve, state = _scan(same, above, keep, eps.firing[p], expiry < s)
        first_t = np.maximum.accumulate(np.where(same, 0, t))
        last_fire = np.maximum.accumulate(np.where(fire, t, -1))
        fire_before = np.full(k, -1, dtype=np.int64)
        fire_before[1:] = last_fire[:-1]
        # The episode open before judgement t: fired earlier in this close, else stored.
        opened_here = fire_before >= first_t
        episode_before = np.where(opened_here, s[np.maximum(fire_before, 0)], eps.episode[p])

        for q in np.flatnonzero(expired).tolist():
            row, episode = int(i[q]), int(episode_before[q])
            rows = (int(first[row]), row)  # the pair's rows before this judgement
            out.append(_no_data(hist, reach, int(expiry[q]), int(p[q]), episode=episode, rows=rows))
        for q in np.flatnonzero(fire | resolve).tolist():
            start, row, pid, episode = int(s[q]), int(i[q]), int(p[q]), int(episode_before[q])
            if fire[q]:
                tr = Transition(start, pid, "firing", None, start, int(j[q]), row + 1, int(span[q]))
            elif ok[q]:
                reason = "below_threshold"
                tr = Transition(
                    start, pid, "resolved", reason, episode, int(j[q]), row + 1, int(span[q])
                )
            else:
                rows = (int(first[row]), row + 1)
                tr = _no_data(hist, reach, start, pid, episode=episode, rows=rows)
            out.append(tr)

        # State after each pair's last judgement of this close.
        last = np.ones(k, dtype=bool)
        last[:-1] = p[1:] != p[:-1]
        lt = np.flatnonzero(last)
        lp = p[lt]
        opened = last_fire[lt] >= first_t[lt]
        eps.episode[lp] = np.where(opened, s[np.maximum(last_fire[lt], 0)], eps.episode[lp])
        eps.firing[lp] = state[lt]
        eps.evidence[lp] = span[lt]

    # Firing pairs without new data whose evidence has left the longest span.
    due = np.flatnonzero(eps.firing & (eps.evidence <= s_limit - k_max * w))
    if due.shape[0]:
        bounds = np.searchsorted(hist.pair, np.stack([due, due + 1]), side="left")
        for q, pid in enumerate(due.tolist()):
            end, episode = int(eps.evidence[pid]) + k_max * w, int(eps.episode[pid])
            rows = (int(bounds[0, q]), int(bounds[1, q]))
            out.append(_no_data(hist, reach, end, pid, episode=episode, rows=rows))
        eps.firing[due] = False
    return out


def prune(hist: Entries, *, min_count: int, first_needed: int) -> Entries:
    """Drop what no future judgement can use: entries starting before ``first_needed``
    (outside the longest span of every window still to close) and, per pair, entries
    older than the newest ones whose denominators already reach ``min_count``."""
    n = len(hist)
    if n == 0:
        return hist
    first = segment_first(hist.pair)
    seg_end = np.ones(n, dtype=bool)
    seg_end[:-1] = hist.pair[1:] != hist.pair[:-1]
    last = np.flatnonzero(seg_end)
    den0 = _prefix(hist.den)
    j = np.searchsorted(den0, den0[last + 1] - max(min_count, 1), side="right") - 1
    keep_from = np.maximum(j, first[last])
    seg_id = np.cumsum(np.concatenate([[True], seg_end[:-1]])) - 1
    keep = (np.arange(n) >= keep_from[seg_id]) & (hist.start >= first_needed)
    if keep.all():
        return hist
    return hist.take(np.flatnonzero(keep))
