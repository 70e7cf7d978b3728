"""Share alerts (numerator / denominator) per tenant and app, on the stream clock.

Drift alerts use uncovered / scored, freshness alerts stale queries / retrieval queries.

**Windows.** Base windows ``[start, start + window_ms)`` are aligned on multiples of
``window_ms`` since the epoch. The caller owns the stream clock
(:class:`~.clock.StreamClock`): :meth:`ShareWindows.add` gets, per event, the clock just
before it (``clock_before``, non-decreasing), never the largest timestamp seen, so one
event dated in 2099 lands in its own far window and changes nothing else. An event is
*late* when its window ends at or before ``clock_before - lateness_ms`` or was already
closed; late events are dropped (those with a non-zero denominator are counted in
``late_events``). ``close(clock_ms)`` closes every window ending at or before
``clock_ms - lateness_ms``; ``close(None)`` closes every open window (end of a finite
replay). Windows without any event close too: time passes for the evidence rule and for
the no-data resolution below. Closing costs O(entries + pairs), never O(elapsed windows).
Lateness depends only on ``clock_before``, so as long as ``close`` gets the stream clock
of its time (never ahead of the next event's ``clock_before``), the alerts do not depend
on how the stream was cut into batches or on when ``close`` ran. A ``None`` app is the
same as ``""``.

**Evidence rule** (multi-window alerting as in the SRE workbook). When a base window W
closes, each (tenant, app) pair with history is judged over W if its denominator there
is at least ``min_count`` (0 counts as 1: a share needs a denominator); otherwise over
the last k base windows ending at W, for the smallest k = 2, 3, … up to
``max_window_ms // window_ms`` whose summed denominator reaches ``min_count``. The share
is summed numerator / summed denominator over that span. If even the longest span lacks
``min_count``, the pair has no evidence at W. So a quiet tenant (40 calls a quarter hour,
half uncovered) is judged over 30 minutes and alerted; one with three calls is not.

**Lifecycle** per pair: judged share > ``threshold`` while not firing → one alert
``status="firing"`` (an episode opens); while firing, further windows above the threshold
emit nothing; judged share <= threshold → one ``status="resolved"`` alert with the same
``alert_id`` (``details["reason"] = "below_threshold"``); a firing pair whose longest span
no longer holds ``min_count`` (traffic stopped) is resolved with reason ``"no_data"``.
``alert_id`` = hash of (type, metric, tenant, app, episode start), the episode start being
the start of the window whose close fired it. An alert's ``window_start``/``window_end``
are the judged span (for no-data: the longest span ending at the window where evidence
ran out), ``value`` and the detail counts are over that span (no-data: whatever it still
holds, 0.0 when empty), ``emitted_at`` is the end of the judging window (the engine stays free of
the wall clock). Details: the numerator and denominator counts under their names,
``window_ms``, ``span_ms``, ``episode_start`` (RFC 3339), ``reason`` on resolved alerts,
and with ``lag_quantiles`` ``lag_count`` and ``lag_p50_ms``/``lag_p90_ms``/``lag_p99_ms``
over the same span (the sparse lag histograms of its windows merged; None without lags).
Alerts of one ``close`` come ordered by judging window start, then tenant, then app.

**State.** Per pair only the newest closed windows whose denominators reach ``min_count``
are kept (older ones can never be part of a smallest span again), and nothing older than
the longest span; see :mod:`.share_history` for the array layout. :meth:`snapshot` carries
that history, the open windows and the firing episodes, so a restart continues exactly.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pandas as pd

from .alerts import Alert, make_alert
from .histograms import N_BINS, bin_index, quantile
from .share_history import Entries, Episodes, OpenRows, Transition, lifecycle, prune
from .timeutil import ms_to_iso

_SNAPSHOT_VERSION = 2
# Epoch-ms timestamps are limited to +-2**62 (+-146 million years) and durations to 2**45 ms
# (1,100 years), so window arithmetic in int64 can never overflow.
_TS_LIMIT = 1 << 62
_MAX_DURATION = 1 << 45
_FLOOR = -_TS_LIMIT - 4 * _MAX_DURATION  # below every window end
_CEIL = _TS_LIMIT + 4 * _MAX_DURATION  # above every window end
_QUANTILES = (("lag_p50_ms", 0.5), ("lag_p90_ms", 0.9), ("lag_p99_ms", 0.99))


def _as_counts(name: str, values: np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be bool or integer, got {array.dtype}")
    out = array.astype(np.int64)
    if n and int(out.min()) < 0:
        raise ValueError(f"{name} must be >= 0")
    return out


def _clamp(ms: int) -> int:
    return min(max(ms, _FLOOR), _CEIL)


class ShareWindows:
    """Share alerts of ``numerator / denominator`` per (tenant, app); see the module doc.

    ``alert_type``: ``"drift"`` or ``"freshness"``; ``metric``: alert metric name (part of
    the alert id); ``window_ms``: base window; ``threshold``: share above which a pair
    fires; ``min_count``: denominator needed for a judgement; ``lateness_ms``: how long
    after its end (on the stream clock) a window still accepts events; ``max_window_ms``:
    longest span judged (at least one window; whole windows count); ``numerator_name``/
    ``denominator_name``: keys of the counts in the details; ``lag_quantiles``: events bring
    lags (:meth:`add`'s ``lag_ms``/``lag_event``) and details carry lag quantiles;
    ``hysteresis``: an open episode resolves only once the share is at or below
    ``threshold - hysteresis`` (share points; 0 = back at the threshold).
    """

    def __init__(
        self,
        *,
        alert_type: str,
        metric: str,
        window_ms: int = 15 * 60_000,
        threshold: float,
        min_count: int,
        lateness_ms: int = 60_000,
        severity: str = "warning",
        numerator_name: str = "numerator",
        denominator_name: str = "denominator",
        lag_quantiles: bool = False,
        max_window_ms: int = 24 * 3_600_000,
        hysteresis: float = 0.0,
    ) -> None:
        if alert_type not in ("drift", "freshness"):
            raise ValueError(f"alert_type must be 'drift' or 'freshness', got {alert_type!r}")
        if not 0 < window_ms <= _MAX_DURATION:
            raise ValueError(f"window_ms must be in (0, 2**45], got {window_ms}")
        if not 0 <= lateness_ms <= _MAX_DURATION:
            raise ValueError(f"lateness_ms must be in [0, 2**45], got {lateness_ms}")
        if not window_ms <= max_window_ms <= _MAX_DURATION:
            raise ValueError(f"max_window_ms must be in [window_ms, 2**45], got {max_window_ms}")
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        self.hysteresis = float(hysteresis)
        self.alert_type = alert_type
        self.metric = metric
        self.window_ms = int(window_ms)
        self.threshold = float(threshold)
        self.min_count = int(min_count)
        self.lateness_ms = int(lateness_ms)
        self.max_window_ms = int(max_window_ms)
        self.severity = severity
        self.numerator_name = numerator_name
        self.denominator_name = denominator_name
        self.lag_quantiles = bool(lag_quantiles)
        self.late_events = 0
        self._k_max = self.max_window_ms // self.window_ms
        self._tenants: dict[Any, int] = {}
        self._tenant_list: list[Any] = []
        self._apps: dict[Any, int] = {}
        self._app_list: list[Any] = []
        self._pair_index = pd.Index(np.zeros(0, dtype=np.int64))
        self._pair_tenant = np.zeros(0, dtype=np.int64)
        self._pair_app = np.zeros(0, dtype=np.int64)
        self._open = OpenRows(self.window_ms)
        self._hist = Entries.empty()
        self._eps = Episodes.empty()
        self._next_expiry: int | None = None  # window start where a firing pair runs dry
        self._closed_end = _FLOOR  # windows ending at or before this instant are closed

    @property
    def open_windows(self) -> list[int]:
        """Start (epoch ms) of every open window holding events, ascending."""
        return [int(s) for s in self._open.starts()]

    # ------------------------------------------------------------------ adding

    @staticmethod
    def _intern(values: np.ndarray, table: dict[Any, int], names: list[Any]) -> np.ndarray:
        """Table id of every value (None is the same as ""), registering new ones."""
        codes, uniques = pd.factorize(values)  # hashing in C; None comes back as -1
        ids = []
        for value in [*uniques.tolist(), ""]:
            if value not in table:
                table[value] = len(names)
                names.append(value)
            ids.append(table[value])
        return np.asarray(ids, dtype=np.int64)[codes]  # -1 picks the trailing ""

    def _pair_ids(self, tenants: np.ndarray, apps: np.ndarray) -> np.ndarray:
        tc = self._intern(tenants, self._tenants, self._tenant_list)
        ac = self._intern(apps, self._apps, self._app_list)
        keys, unique = pd.factorize((tc << 32) | ac)
        ids = self._pair_index.get_indexer(unique).astype(np.int64)
        fresh = np.flatnonzero(ids < 0)
        if fresh.shape[0]:
            n = len(self._pair_index)
            ids[fresh] = n + np.arange(fresh.shape[0])
            self._set_pairs(np.concatenate([self._pair_index.to_numpy(), unique[fresh]]))
        return ids[keys]

    def _set_pairs(self, keys: np.ndarray) -> None:
        """Pair id i is (tenant id, app id) packed as ``keys[i]``."""
        self._pair_index = pd.Index(keys.astype(np.int64))
        self._pair_tenant = keys >> 32
        self._pair_app = keys & 0xFFFFFFFF

    def add(
        self,
        tenant_ids: np.ndarray,
        apps: np.ndarray,
        ts_ms: np.ndarray,
        numerator: np.ndarray,
        denominator: np.ndarray,
        *,
        clock_before: np.ndarray,
        lag_ms: np.ndarray | None = None,
        lag_event: np.ndarray | None = None,
    ) -> None:
        """Count a batch of ``n`` events, in stream order.

        ``tenant_ids``/``apps``: ``object[n]`` (str, or None for no app); ``ts_ms``:
        ``int64[n]`` event times; ``numerator``/``denominator``: ``bool[n]`` or non-negative
        integer ``[n]``, numerator <= denominator; ``clock_before``: ``int64[n]``, the stream
        clock just before each event (non-decreasing). Optional ``lag_ms``: ``int64[o]``
        lags (negative ones count as 0) owned by events ``lag_event``: ``int64[o]``.
        """
        ts = np.asarray(ts_ms)
        if ts.ndim != 1 or ts.dtype != np.int64:
            raise ValueError("ts_ms must be a 1-d int64 array")
        n = ts.shape[0]
        tenants = np.asarray(tenant_ids, dtype=object)
        app_values = np.asarray(apps, dtype=object)
        if tenants.shape != (n,) or app_values.shape != (n,):
            raise ValueError(f"tenant_ids and apps must have shape ({n},)")
        clock = np.asarray(clock_before)
        if clock.shape != (n,) or clock.dtype != np.int64:
            raise ValueError(f"clock_before must be int64 of shape ({n},)")
        if n > 1 and bool(np.any(clock[1:] < clock[:-1])):
            raise ValueError("clock_before must be non-decreasing")
        if n and (int(ts.min()) < -_TS_LIMIT or int(ts.max()) > _TS_LIMIT):
            raise ValueError("ts_ms must be within +-2**62 ms of the epoch")
        num = _as_counts("numerator", numerator, n)
        den = _as_counts("denominator", denominator, n)
        if n and bool(np.any(num > den)):
            raise ValueError("numerator must not exceed denominator")
        lags, owners = self._check_lags(lag_ms, lag_event, n)
        if n == 0:
            return

        w = self.window_ms
        starts = (ts // w) * w
        # Late: the window ends at or before clock_before - lateness, or is already closed.
        bound = np.maximum(np.clip(clock, _FLOOR, _CEIL) - self.lateness_ms, self._closed_end)
        late = starts + w <= bound
        self.late_events += int(np.count_nonzero(late & (den > 0)))
        keep = ~late & (den > 0)
        lag_keep: np.ndarray | None = None
        if lags is not None and owners is not None and lags.shape[0]:
            keep |= np.bincount(owners, minlength=n).astype(bool) & ~late
            lag_keep = keep[owners]
        kept = np.flatnonzero(keep)
        if kept.shape[0] == 0:
            return
        pairs = np.zeros(n, dtype=np.int64)
        pairs[kept] = self._pair_ids(tenants[kept], app_values[kept])
        self._eps.grow(len(self._pair_index))
        block = np.stack(
            [starts[kept], pairs[kept], np.full(kept.shape[0], -1), num[kept], den[kept]]
            + [np.zeros(kept.shape[0], dtype=np.int64)]
        )
        self._open.append(block)
        if lag_keep is not None and lags is not None and owners is not None:
            mine = owners[lag_keep]
            if mine.shape[0]:
                bins = bin_index(np.maximum(lags[lag_keep], 0)).astype(np.int64)
                zeros = np.zeros(mine.shape[0], dtype=np.int64)
                ones = np.ones(mine.shape[0], dtype=np.int64)
                self._open.append(np.stack([starts[mine], pairs[mine], bins, zeros, zeros, ones]))

    def _check_lags(
        self, lag_ms: np.ndarray | None, lag_event: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if (lag_ms is None) != (lag_event is None):
            raise ValueError("lag_ms and lag_event go together")
        if lag_ms is None or lag_event is None:
            return None, None
        if not self.lag_quantiles:
            raise ValueError("lags need ShareWindows(lag_quantiles=True)")
        lags = np.asarray(lag_ms)
        owners = np.asarray(lag_event)
        if lags.ndim != 1 or lags.dtype != np.int64 or owners.shape != lags.shape:
            raise ValueError("lag_ms and lag_event must be 1-d int64 arrays of one length")
        if owners.dtype.kind not in "iu":
            raise ValueError("lag_event must be integer")
        owners = owners.astype(np.int64, copy=False)
        if lags.shape[0] and (int(owners.min()) < 0 or int(owners.max()) >= n):
            raise ValueError(f"lag_event must index the batch [0, {n})")
        return lags, owners

    # ------------------------------------------------------------------ closing

    def close(self, clock_ms: int | None) -> list[Alert]:
        """Close the windows ending at or before ``clock_ms - lateness_ms`` (every open one
        when None) and judge them; returns their alerts (see the module doc for the order)."""
        w = self.window_ms
        if clock_ms is None:
            last = self._open.last_start()
            if last is None:
                return []
            bound = last + w
        else:
            bound = _clamp(int(clock_ms) - self.lateness_ms)
        if bound <= self._closed_end:
            return []
        self._closed_end = bound
        s_limit = (bound // w - 1) * w  # start of the last closed window
        first_open = self._open.first_start()
        if (first_open is None or first_open > s_limit) and (
            self._next_expiry is None or self._next_expiry > s_limit
        ):
            return []  # no window with data closes and no episode runs dry: nothing to judge
        hist, is_new = self._hist.insert(self._open.pop_until(s_limit))
        self._eps.grow(len(self._pair_index))
        transitions = lifecycle(
            hist,
            is_new,
            self._eps,
            min_count=self.min_count,
            threshold=self.threshold,
            window_ms=w,
            k_max=self._k_max,
            s_limit=s_limit,
            hysteresis=self.hysteresis,
        )
        alerts = self._alerts(hist, transitions)
        first_needed = s_limit + w - (self._k_max - 1) * w
        self._hist = prune(hist, min_count=self.min_count, first_needed=first_needed)
        self._next_expiry = self._eps.next_expiry(self._k_max * w)
        return alerts

    def _alerts(self, hist: Entries, transitions: list[Transition]) -> list[Alert]:
        rows = []
        for tr in transitions:
            tenant = str(self._tenant_list[self._pair_tenant[tr.pair]])
            app = str(self._app_list[self._pair_app[tr.pair]])
            rows.append((tr.window, tenant, app, tr))
        rows.sort(key=lambda r: r[:3])
        out = []
        for window, tenant, app, tr in rows:
            num = int(hist.num[tr.lo : tr.hi].sum())
            den = int(hist.den[tr.lo : tr.hi].sum())
            end = window + self.window_ms
            details: dict[str, Any] = {
                self.numerator_name: num,
                self.denominator_name: den,
                "window_ms": self.window_ms,
                "span_ms": end - tr.span_start,
                "episode_start": ms_to_iso(tr.episode),
            }
            if tr.reason is not None:
                details["reason"] = tr.reason
            if self.lag_quantiles:
                details.update(self._lag_details(hist, tr.lo, tr.hi))
            out.append(
                make_alert(
                    type=self.alert_type,
                    severity=self.severity,
                    tenant_id=tenant,
                    app=app,
                    metric=self.metric,
                    value=num / den if den else 0.0,
                    threshold=self.threshold,
                    window_start_ms=tr.span_start,
                    window_end_ms=end,
                    id_parts=(self.metric, tenant, app, tr.episode),
                    details=details,
                    status=tr.status,
                    emitted_at_ms=end,
                )
            )
        return out

    @staticmethod
    def _lag_details(hist: Entries, lo: int, hi: int) -> dict[str, Any]:
        a, b = int(hist.lag_off[lo]), int(hist.lag_off[hi])
        hist_bins = np.zeros(N_BINS, dtype=np.uint64)
        np.add.at(hist_bins, hist.lag_bin[a:b], hist.lag_cnt[a:b].astype(np.uint64))
        total = int(hist_bins.sum())
        details: dict[str, Any] = {"lag_count": total}
        for name, q in _QUANTILES:
            details[name] = quantile(hist_bins, q) if total else None
        return details

    # ------------------------------------------------------------------ state

    def _params(self) -> dict[str, Any]:
        return {
            "alert_type": self.alert_type,
            "metric": self.metric,
            "window_ms": self.window_ms,
            "threshold": self.threshold,
            "min_count": self.min_count,
            "lateness_ms": self.lateness_ms,
            "max_window_ms": self.max_window_ms,
            "severity": self.severity,
            "numerator_name": self.numerator_name,
            "denominator_name": self.denominator_name,
            "lag_quantiles": self.lag_quantiles,
            "hysteresis": self.hysteresis,
        }

    def snapshot(self) -> bytes:
        """Serialise the whole state (parameters included) to bytes (msgpack).

        Only pairs that still hold open counts, history or a firing episode are written
        (renumbered), so a restart also forgets pairs that went quiet for good.
        """
        self._open.compact()
        n_pairs = len(self._pair_index)
        self._eps.grow(n_pairs)
        firing = np.flatnonzero(self._eps.firing[:n_pairs])
        used = np.unique(np.concatenate([self._open.rows[1], self._hist.pair, firing]))
        remap = np.full(max(n_pairs, 1), -1, dtype=np.int64)
        remap[used] = np.arange(used.shape[0])  # increasing: sort orders are kept
        pair_tenant = self._pair_tenant[used]
        pair_app = self._pair_app[used]
        tenants, tenant_code = np.unique(pair_tenant, return_inverse=True)
        apps, app_code = np.unique(pair_app, return_inverse=True)
        open_rows = self._open.rows.copy()
        open_rows[1] = remap[open_rows[1]]
        hist = self._hist
        hist = Entries(
            remap[hist.pair],
            hist.start,
            hist.num,
            hist.den,
            hist.lag_off,
            hist.lag_bin,
            hist.lag_cnt,
        )
        state = {
            "version": _SNAPSHOT_VERSION,
            "params": self._params(),
            "late_events": self.late_events,
            "closed_end": self._closed_end,
            "tenants": [self._tenant_list[t] for t in tenants.tolist()],
            "apps": [self._app_list[a] for a in apps.tolist()],
            "pair_tenant": tenant_code.astype("<i8").tobytes(),
            "pair_app": app_code.astype("<i8").tobytes(),
            "open": open_rows.astype("<i8").tobytes(),
            "history": hist.arrays(),
            "firing": [
                remap[firing].astype("<i8").tobytes(),
                self._eps.episode[firing].astype("<i8").tobytes(),
                self._eps.evidence[firing].astype("<i8").tobytes(),
            ],
        }
        return msgspec.msgpack.encode(state)

    @classmethod
    def restore(cls, data: bytes, **overrides: Any) -> ShareWindows:
        """Rebuild from :meth:`snapshot` bytes.

        ``overrides`` may change ``threshold``, ``min_count``, ``lateness_ms``,
        ``max_window_ms`` and ``severity`` (a changed configuration at restart; they apply
        from the next judgement on, to the history kept so far); the shape of the state
        (type, metric, window length, lags) cannot change.
        """
        allowed = {
            "threshold", "min_count", "lateness_ms", "severity", "max_window_ms", "hysteresis"
        }  # fmt: skip
        if set(overrides) - allowed:
            raise ValueError(f"only {sorted(allowed)} can be overridden on restore")
        state = msgspec.msgpack.decode(data)
        if not isinstance(state, dict) or state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError("not a ShareWindows snapshot of a supported version")
        params = dict(state["params"])
        params.update(overrides)
        self = cls(**params)
        self.late_events = int(state["late_events"])
        self._closed_end = int(state["closed_end"])
        self._tenant_list = list(state["tenants"])
        self._tenants = {t: i for i, t in enumerate(self._tenant_list)}
        self._app_list = list(state["apps"])
        self._apps = {a: i for i, a in enumerate(self._app_list)}
        pair_tenant = np.frombuffer(state["pair_tenant"], dtype="<i8").astype(np.int64)
        pair_app = np.frombuffer(state["pair_app"], dtype="<i8").astype(np.int64)
        self._set_pairs((pair_tenant << 32) | pair_app)
        rows = np.frombuffer(state["open"], dtype="<i8").astype(np.int64).reshape(6, -1)
        self._open = OpenRows(self.window_ms, rows)
        self._hist = Entries.from_arrays(state["history"])
        self._eps.grow(len(self._pair_index))
        pids, episode, evidence = (np.frombuffer(b, dtype="<i8") for b in state["firing"])
        self._eps.firing[pids] = True
        self._eps.episode[pids] = episode
        self._eps.evidence[pids] = evidence
        self._next_expiry = self._eps.next_expiry(self._k_max * self.window_ms)
        return self
