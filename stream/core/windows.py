"""Tumbling event-time windows of a share (numerator / denominator) per tenant and app.

Drift alerts use uncovered / scored, freshness alerts stale queries / retrieval queries.
Windows are aligned on multiples of ``window_ms`` since the epoch and closed by the
watermark: a window ``[start, end)`` closes once ``end <= watermark - lateness_ms``. When it
closes, every (tenant, app) whose share is above ``threshold`` with at least ``min_count``
in the denominator gets exactly one alert, identified by (metric, tenant, app, window start).

Lateness is decided per event against the largest timestamp of the events *before it in
stream order* (and against windows already closed): an event is late when its window ends
at or before that watermark minus ``lateness_ms``. Because that depends only on the order of
the events, not on how they were cut into batches or when :meth:`ShareWindows.close` ran,
the same stream always yields the same alerts. Late events are dropped; those with a
non-zero denominator are counted in ``late_events``.

Optionally each event brings lags (e.g. freshness lags of outdated chunks); the window then
keeps a sparse log-scale histogram per (tenant, app) and alerts carry p50/p90/p99 lags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from .alerts import Alert, make_alert
from .histograms import N_BINS, bin_index, quantile

_INT64_MIN = int(np.iinfo(np.int64).min)
# Pending sparse lag contributions of a window are merged once they hold this many entries.
_LAG_COMPACT_AT = 1 << 16
_SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class _Window:
    """Counts of one open window, indexed by pair id (arrays grow with the pair table)."""

    num: np.ndarray
    den: np.ndarray
    lag_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lag_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pending: list[np.ndarray] = field(default_factory=list)
    pending_len: int = 0

    def grow(self, n_pairs: int) -> None:
        size = self.num.shape[0]
        if size >= n_pairs:
            return
        new = max(n_pairs, 2 * size, 16)
        self.num = np.concatenate([self.num, np.zeros(new - size, dtype=np.int64)])
        self.den = np.concatenate([self.den, np.zeros(new - size, dtype=np.int64)])

    def add_lags(self, keys: np.ndarray) -> None:
        """``keys``: ``pair * N_BINS + bin`` of each lag (one entry per lag)."""
        self.pending.append(keys)
        self.pending_len += keys.shape[0]
        if self.pending_len >= _LAG_COMPACT_AT:
            self.compact()

    def compact(self) -> None:
        if not self.pending:
            return
        keys = np.concatenate([self.lag_keys, *self.pending])
        weights = np.concatenate([self.lag_counts, np.ones(self.pending_len, dtype=np.int64)])
        unique, inverse = np.unique(keys, return_inverse=True)
        counts = np.zeros(unique.shape[0], dtype=np.int64)
        np.add.at(counts, inverse, weights)
        self.lag_keys, self.lag_counts = unique, counts
        self.pending = []
        self.pending_len = 0


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


class ShareWindows:
    """Tumbling windows of ``numerator / denominator`` per (tenant, app); see module doc.

    ``alert_type``: ``"drift"`` or ``"freshness"``; ``metric``: alert metric name (also part
    of the alert id); ``window_ms``: window length; ``threshold``: share above which a
    window alerts; ``min_count``: minimum denominator for an alert; ``lateness_ms``: how long
    after its end (in event time) a window still accepts events; ``numerator_name`` and
    ``denominator_name``: keys of the counts in the alert details; ``lag_quantiles``: events
    bring lags (:meth:`add`'s ``lag_ms``/``lag_event``) and alert details carry
    ``lag_count`` and ``lag_p50_ms``/``lag_p90_ms``/``lag_p99_ms`` (None without lags).
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
    ) -> None:
        if alert_type not in ("drift", "freshness"):
            raise ValueError(f"alert_type must be 'drift' or 'freshness', got {alert_type!r}")
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms}")
        if lateness_ms < 0:
            raise ValueError(f"lateness_ms must be >= 0, got {lateness_ms}")
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        self.alert_type = alert_type
        self.metric = metric
        self.window_ms = int(window_ms)
        self.threshold = float(threshold)
        self.min_count = int(min_count)
        self.lateness_ms = int(lateness_ms)
        self.severity = severity
        self.numerator_name = numerator_name
        self.denominator_name = denominator_name
        self.lag_quantiles = bool(lag_quantiles)
        self.late_events = 0
        self._tenants: dict[Any, int] = {}
        self._tenant_list: list[Any] = []
        self._apps: dict[Any, int] = {}
        self._app_list: list[Any] = []
        self._pairs: dict[int, int] = {}
        self._pair_tenant: list[int] = []
        self._pair_app: list[int] = []
        self._windows: dict[int, _Window] = {}
        self._watermark: int | None = None
        # Windows ending at or before this instant are closed.
        self._closed_end = _INT64_MIN

    # ------------------------------------------------------------------ properties

    @property
    def watermark(self) -> int | None:
        """Largest event time seen (epoch ms), None before the first event."""
        return self._watermark

    @property
    def open_windows(self) -> list[int]:
        """Start (epoch ms) of every open window, ascending."""
        return sorted(self._windows)

    # ------------------------------------------------------------------ adding

    @staticmethod
    def _intern(values: list[Any], table: dict[Any, int], names: list[Any]) -> np.ndarray:
        # One dict insertion per distinct value, then a C-level map over the batch.
        for value in dict.fromkeys(values):
            if value not in table:
                table[value] = len(names)
                names.append(value)
        return np.fromiter(map(table.__getitem__, values), dtype=np.int64, count=len(values))

    def add(
        self,
        tenant_ids: np.ndarray,
        apps: np.ndarray,
        ts_ms: np.ndarray,
        numerator: np.ndarray,
        denominator: np.ndarray,
        *,
        lag_ms: np.ndarray | None = None,
        lag_event: np.ndarray | None = None,
    ) -> None:
        """Count a batch of ``n`` events, in stream order.

        ``tenant_ids``/``apps``: ``object[n]`` (str, or None for no app); ``ts_ms``:
        ``int64[n]`` event times; ``numerator``/``denominator``: ``bool[n]`` or non-negative
        integer ``[n]``, numerator <= denominator. Optional ``lag_ms``: ``int64[o]`` lags
        (negative ones count as 0) owned by events ``lag_event``: ``int64[o]``.
        """
        ts = np.asarray(ts_ms)
        if ts.ndim != 1 or ts.dtype != np.int64:
            raise ValueError("ts_ms must be a 1-d int64 array")
        n = ts.shape[0]
        tenants = np.asarray(tenant_ids, dtype=object)
        app_values = np.asarray(apps, dtype=object)
        if tenants.shape != (n,) or app_values.shape != (n,):
            raise ValueError(f"tenant_ids and apps must have shape ({n},)")
        num = _as_counts("numerator", numerator, n)
        den = _as_counts("denominator", denominator, n)
        if n and bool(np.any(num > den)):
            raise ValueError("numerator must not exceed denominator")
        if (lag_ms is None) != (lag_event is None):
            raise ValueError("lag_ms and lag_event go together")
        if lag_ms is not None and not self.lag_quantiles:
            raise ValueError("lags need ShareWindows(lag_quantiles=True)")
        lags: np.ndarray | None = None
        owners: np.ndarray | None = None
        if lag_ms is not None and lag_event is not None:
            lags = np.asarray(lag_ms)
            owners = np.asarray(lag_event)
            if lags.ndim != 1 or lags.dtype != np.int64 or owners.shape != lags.shape:
                raise ValueError("lag_ms and lag_event must be 1-d int64 arrays of one length")
            if owners.dtype.kind not in "iu":
                raise ValueError("lag_event must be integer")
            owners = owners.astype(np.int64, copy=False)
            if lags.shape[0] and (int(owners.min()) < 0 or int(owners.max()) >= n):
                raise ValueError(f"lag_event must index the batch [0, {n})")
        if n == 0:
            return

        # Watermark before each event: max of the previous watermark and earlier events.
        before = np.empty(n, dtype=np.int64)
        before[0] = _INT64_MIN if self._watermark is None else self._watermark
        if n > 1:
            np.maximum.accumulate(ts[:-1], out=before[1:])
            np.maximum(before[1:], before[0], out=before[1:])
        np.maximum(before, _INT64_MIN + self.lateness_ms, out=before)
        bound = np.maximum(before - self.lateness_ms, self._closed_end)
        starts = (ts // self.window_ms) * self.window_ms
        late = starts + self.window_ms <= bound
        self.late_events += int(np.count_nonzero(late & (den > 0)))
        top = int(ts.max())
        self._watermark = top if self._watermark is None else max(self._watermark, top)

        keep = ~late & ((den > 0) | (num > 0))
        lag_keep: np.ndarray | None = None
        if lags is not None and owners is not None and lags.shape[0]:
            keep |= np.bincount(owners, minlength=n).astype(bool) & ~late
            lag_keep = keep[owners]
        if not keep.any():
            return
        kept = np.flatnonzero(keep)
        tc = self._intern(tenants[kept].tolist(), self._tenants, self._tenant_list)
        ac = self._intern(app_values[kept].tolist(), self._apps, self._app_list)
        combo = (tc << 32) | ac
        unique_combo, combo_inverse = np.unique(combo, return_inverse=True)
        pair_ids = np.empty(unique_combo.shape[0], dtype=np.int64)
        for i, key in enumerate(unique_combo.tolist()):
            pid = self._pairs.get(key)
            if pid is None:
                pid = len(self._pair_tenant)
                self._pairs[key] = pid
                self._pair_tenant.append(key >> 32)
                self._pair_app.append(key & 0xFFFFFFFF)
            pair_ids[i] = pid
        pairs = pair_ids[combo_inverse]
        n_pairs = len(self._pair_tenant)
        kept_num = num[kept]
        kept_den = den[kept]
        unique_starts, window_of = np.unique(starts[kept], return_inverse=True)

        lag_window: np.ndarray | None = None
        lag_keys: np.ndarray | None = None
        if lag_keep is not None and lags is not None and owners is not None:
            # Position of each kept event among the kept ones, to find a lag's window/pair.
            position = np.cumsum(keep) - 1
            owner_pos = position[owners[lag_keep]]
            bins = bin_index(np.maximum(lags[lag_keep], 0)).astype(np.int64)
            lag_keys = pairs[owner_pos] * N_BINS + bins
            lag_window = window_of[owner_pos]

        for w, start in enumerate(unique_starts.tolist()):
            window = self._windows.get(start)
            if window is None:
                window = _Window(
                    num=np.zeros(max(n_pairs, 16), dtype=np.int64),
                    den=np.zeros(max(n_pairs, 16), dtype=np.int64),
                )
                self._windows[start] = window
            window.grow(n_pairs)
            if unique_starts.shape[0] == 1:
                sel: slice | np.ndarray = slice(None)
            else:
                sel = window_of == w
            np.add.at(window.num, pairs[sel], kept_num[sel])
            np.add.at(window.den, pairs[sel], kept_den[sel])
            if lag_keys is not None and lag_window is not None:
                mine = lag_keys[lag_window == w]
                if mine.shape[0]:
                    window.add_lags(mine)

    # ------------------------------------------------------------------ closing

    def close(self, watermark_ms: int | None = None) -> list[Alert]:
        """Close windows with ``end <= watermark_ms - lateness_ms`` (all when None).

        Returns the alerts of the closed windows, ordered by window start, tenant and app.
        """
        if watermark_ms is None:
            starts = sorted(self._windows)
            if starts:
                self._closed_end = max(self._closed_end, starts[-1] + self.window_ms)
        else:
            bound = int(watermark_ms) - self.lateness_ms
            starts = sorted(s for s in self._windows if s + self.window_ms <= bound)
            self._closed_end = max(self._closed_end, bound)
        alerts: list[Alert] = []
        for start in starts:
            alerts.extend(self._alerts_of(start, self._windows.pop(start)))
        return alerts

    def _alerts_of(self, start: int, window: _Window) -> list[Alert]:
        n_pairs = len(self._pair_tenant)
        num = window.num[:n_pairs]
        den = window.den[:n_pairs]
        eligible = (den > 0) & (den >= self.min_count)
        share = np.zeros(n_pairs, dtype=np.float64)
        np.divide(num, den, out=share, where=eligible)
        hits = np.flatnonzero(eligible & (share > self.threshold))
        if hits.shape[0] == 0:
            return []
        window.compact()
        rows: list[tuple[str, str, int]] = []
        for pid in hits.tolist():
            tenant = self._tenant_list[self._pair_tenant[pid]]
            app = self._app_list[self._pair_app[pid]]
            rows.append(
                ("" if tenant is None else str(tenant), "" if app is None else str(app), pid)
            )
        rows.sort()
        lag_pairs = window.lag_keys // N_BINS
        alerts = []
        for tenant, app, pid in rows:
            details: dict[str, Any] = {
                self.numerator_name: int(num[pid]),
                self.denominator_name: int(den[pid]),
                "window_ms": self.window_ms,
            }
            if self.lag_quantiles:
                lo, hi = np.searchsorted(lag_pairs, [pid, pid + 1])
                hist = np.zeros(N_BINS, dtype=np.uint64)
                hist[window.lag_keys[lo:hi] % N_BINS] = window.lag_counts[lo:hi]
                total = int(hist.sum())
                details["lag_count"] = total
                for name, q in (("lag_p50_ms", 0.5), ("lag_p90_ms", 0.9), ("lag_p99_ms", 0.99)):
                    details[name] = quantile(hist, q) if total else None
            alerts.append(
                make_alert(
                    type=self.alert_type,
                    severity=self.severity,
                    tenant_id=tenant,
                    app=app,
                    metric=self.metric,
                    value=float(share[pid]),
                    threshold=self.threshold,
                    window_start_ms=start,
                    window_end_ms=start + self.window_ms,
                    id_parts=(self.metric, tenant, app, start),
                    details=details,
                )
            )
        return alerts

    # ------------------------------------------------------------------ state

    def snapshot(self) -> bytes:
        """Serialise the whole state (parameters included) to bytes (msgpack)."""
        windows = []
        for start in sorted(self._windows):
            window = self._windows[start]
            window.compact()
            windows.append(
                [
                    start,
                    window.num.astype("<i8").tobytes(),
                    window.den.astype("<i8").tobytes(),
                    window.lag_keys.astype("<i8").tobytes(),
                    window.lag_counts.astype("<i8").tobytes(),
                ]
            )
        state = {
            "version": _SNAPSHOT_VERSION,
            "params": self._params(),
            "late_events": self.late_events,
            "tenants": self._tenant_list,
            "apps": self._app_list,
            "pair_tenant": self._pair_tenant,
            "pair_app": self._pair_app,
            "windows": windows,
            "watermark": self._watermark,
            "closed_end": self._closed_end,
        }
        return msgspec.msgpack.encode(state)

    def _params(self) -> dict[str, Any]:
        return {
            "alert_type": self.alert_type,
            "metric": self.metric,
            "window_ms": self.window_ms,
            "threshold": self.threshold,
            "min_count": self.min_count,
            "lateness_ms": self.lateness_ms,
            "severity": self.severity,
            "numerator_name": self.numerator_name,
            "denominator_name": self.denominator_name,
            "lag_quantiles": self.lag_quantiles,
        }

    @classmethod
    def restore(cls, data: bytes, **overrides: Any) -> ShareWindows:
        """Rebuild from :meth:`snapshot` bytes.

        ``overrides`` may change ``threshold``, ``min_count``, ``lateness_ms`` and
        ``severity`` (e.g. a changed configuration at restart); the shape of the state
        (type, metric, window length) cannot change.
        """
        allowed = {"threshold", "min_count", "lateness_ms", "severity"}
        if set(overrides) - allowed:
            raise ValueError(f"only {sorted(allowed)} can be overridden on restore")
        state = msgspec.msgpack.decode(data)
        if not isinstance(state, dict) or state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError("not a ShareWindows snapshot of a supported version")
        params = dict(state["params"])
        params.update(overrides)
        self = cls(**params)
        self.late_events = int(state["late_events"])
        self._tenant_list = list(state["tenants"])
        self._tenants = {t: i for i, t in enumerate(self._tenant_list)}
        self._app_list = list(state["apps"])
        self._apps = {a: i for i, a in enumerate(self._app_list)}
        self._pair_tenant = [int(t) for t in state["pair_tenant"]]
        self._pair_app = [int(a) for a in state["pair_app"]]
        self._pairs = {
            (t << 32) | a: i
            for i, (t, a) in enumerate(zip(self._pair_tenant, self._pair_app, strict=True))
        }
        for start, num, den, lag_keys, lag_counts in state["windows"]:
            self._windows[int(start)] = _Window(
                num=np.frombuffer(num, dtype="<i8").astype(np.int64),
                den=np.frombuffer(den, dtype="<i8").astype(np.int64),
                lag_keys=np.frombuffer(lag_keys, dtype="<i8").astype(np.int64),
                lag_counts=np.frombuffer(lag_counts, dtype="<i8").astype(np.int64),
            )
        self._watermark = None if state["watermark"] is None else int(state["watermark"])
        self._closed_end = int(state["closed_end"])
        return self
