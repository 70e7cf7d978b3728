"""Per-tenant spend budgets on the stream's clock, with alerts that fire and resolve.

A budget file (:mod:`.budget_config`) lists rules (``limit_usd``, ``window``, ``soft``
fractions, ``hard`` fraction) for every tenant or for named ones. :class:`BudgetTracker`
takes priced events in stream order, each with the stream clock after it, and keeps per
(tenant, budget):

* the spend in the window, exact: money is int64 units of 1e-10 USD, so adding and
  expiring never drifts and the result does not depend on how the stream is cut into
  batches. Sliding windows (``1h``/``24h`` at one-minute, ``7d``/``30d`` at one-hour
  resolution) hold the buckets in ``(clock_bucket - nbuckets, clock_bucket]``: spend
  leaves as **the stream clock** moves on, whether or not the tenant sends anything (a
  tenant refused at its hard cap returns to ``ok`` once its window slid below the levels).
  Calendar windows (``day``/``month``, UTC) end at their boundary; a late event of the
  previous period still counts in that period. An event older than its window (or than the
  previous period) is in the totals, not in the budget (``late`` counter).
* the alert lifecycle: a level the spend reaches **fires** once; it **resolves** when the
  spend falls below the level minus the hysteresis (default 5 % of the limit) or its
  calendar period ends; it cannot fire again before. ``alert_id`` names (tenant, budget,
  level, calendar period, episode start = the stream clock when it fired), so a redo after
  a crash gives the same ids.

Per-event work runs in the kernels of :mod:`.budget_kernels` over the record tables of
:mod:`.budget_layout`; Python interns tenant names per batch and builds the (rare) alerts.
Only non-empty buckets are stored, so memory follows the traffic, not
``tenants x buckets per window``. One event counts at most ``2**62`` units (~461 million
USD), and so does one bucket; window sums are two words and never overflow.
"""

import io
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from . import budget_kernels as kern
from .alerts import RESOLVED, Alert, make_alert
from .budget_config import (
    CAP_UNITS,
    UNITS_PER_USD,
    BudgetConfig,
    BudgetRule,
    flat_rules,
    load_budgets,
    parse_budgets,
)
from .budget_layout import (
    ALERT,
    FIRE,
    KIND_SLIDING,
    META_LATE,
    META_NA,
    META_NSLOTS,
    META_SIZE,
    META_USED,
    MIN_POOL,
    QUEUE_FIELDS,
    REASON_BELOW,
    REASON_PERIOD_END,
    RULE,
    SLOT,
    RuleInfo,
    rule_info,
)
from .budget_state import BudgetState, StateBuilder, concat_states, state_objects, status_of
from .timeutil import MS_PER_MINUTE, ms_to_iso

__all__ = [
    "UNITS_PER_USD",
    "BudgetConfig",
    "BudgetRule",
    "BudgetState",
    "BudgetTracker",
    "load_budgets",
    "parse_budgets",
]

_SNAPSHOT_VERSION = 2
_REASONS = {REASON_BELOW: "below_level", REASON_PERIOD_END: "period_end"}
# Fields carried across snapshot/restore when the config changed (matched budgets).
_KEEP = [f for f in SLOT.names or () if f not in ("tenant", "rule", *QUEUE_FIELDS)]


def _records(n: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``n`` zeroed records of ``dtype``, as a recarray: its rows have attribute access in
    plain Python too (the kernels' pure-Python runs), and numba compiles it the same."""
    return np.zeros(n, dtype).view(np.recarray)


def _grown(arr: npt.NDArray[Any], need: int) -> npt.NDArray[Any]:
    """``arr`` with at least ``need`` rows (capacity doubles; new rows are zero)."""
    if arr.shape[0] >= need:
        return arr
    cap = max(need, 2 * arr.shape[0], 64)
    out = np.zeros((cap, *arr.shape[1:]), arr.dtype)
    if isinstance(arr, np.recarray):
        out = out.view(np.recarray)
    out[: arr.shape[0]] = arr
    return out


def _cost_units(cost_usd: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """USD -> int64 1e-10 USD units, ``min(round(cost * 1e10), 2**62)`` (half to even)."""
    # clip first: a cost near float64's range would overflow the multiplication
    f = np.minimum(cost_usd, float(CAP_UNITS) / UNITS_PER_USD) * float(UNITS_PER_USD)
    return np.where(f >= float(CAP_UNITS), float(CAP_UNITS), np.rint(f)).astype(np.int64)


class BudgetTracker:
    """Budget state of every tenant of one stream (partition); see the module doc.

    ``hysteresis``: fraction of the limit a level's spend must fall below it to resolve.
    """

    def __init__(self, config: BudgetConfig, *, hysteresis: float = 0.05) -> None:
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        self._config = config
        self.hysteresis = float(hysteresis)
        self._default_set = np.arange(len(config.default), dtype=np.int64)
        self._tenant_sets: dict[str, npt.NDArray[np.int64]] = {}
        first = len(config.default)
        for name, trules in config.tenants.items():
            self._tenant_sets[name] = np.arange(first, first + len(trules), dtype=np.int64)
            first += len(trules)
        self._infos = [rule_info(r, hysteresis) for r in flat_rules(config)]
        self._rules = _records(len(self._infos), RULE)
        for r, info in enumerate(self._infos):
            self._rules[r] = (info.kind, info.res_ms, info.nbuckets, 0, len(info.thresholds))
        if self._infos:
            self._rules["lev0"][1:] = np.cumsum(self._rules["nlev"])[:-1]
        self._lev_thr = np.array([t for i in self._infos for t in i.thresholds], np.int64)
        self._lev_res = np.array([t for i in self._infos for t in i.resolve_below], np.int64)
        self._maxlev = max((len(i.thresholds) for i in self._infos), default=1)
        # Worst case of one event: a queue relocation per sliding budget of its tenant (pool
        # rows), and per budget a resolve, a fire and a late fire+resolve per level.
        sets = [self._default_set, *self._tenant_sets.values()]
        self._headroom = max(
            sum(
                2 << (self._infos[r].nbuckets - 1).bit_length()
                for r in rs.tolist()
                if self._infos[r].kind == KIND_SLIDING
            )
            for rs in sets
        )
        self._alert_room = 3 * max(int(self._rules["nlev"][rs].sum()) for rs in sets) + 1
        self._alerts = _records(max(64, 4 * self._alert_room), ALERT)

        self._tindex: dict[str, int] = {}
        self._names: list[str] = []
        self._slot0 = np.zeros(0, np.int64)  # per tenant: first slot
        self._nslot = np.zeros(0, np.int64)  # per tenant: number of slots
        self._slots = _records(0, SLOT)
        self._episodes = np.zeros((0, self._maxlev), np.int64)
        self._prev_episodes = np.zeros((0, self._maxlev), np.int64)
        self._nslots = 0
        self._meta = np.zeros(META_SIZE, np.int64)
        self._pool = np.zeros((MIN_POOL + self._headroom, 2), np.int64)
        self._builder = StateBuilder(self._names, self._infos)
        self._swept_minute = np.iinfo(np.int64).min

    # ---- tenants

    def _register(self, names: list[str]) -> None:
        """Give each new tenant an index and one slot per rule that applies to it."""
        nt = len(names)
        t0 = len(self._names)
        sets = [self._tenant_sets.get(nm, self._default_set) for nm in names]
        counts = np.fromiter((len(x) for x in sets), np.int64, nt)
        total = int(counts.sum())
        s0 = self._nslots
        self._slot0 = _grown(self._slot0, t0 + nt)
        self._nslot = _grown(self._nslot, t0 + nt)
        self._slot0[t0 : t0 + nt] = s0 + np.cumsum(counts) - counts
        self._nslot[t0 : t0 + nt] = counts
        if total:
            self._slots = _grown(self._slots, s0 + total)
            self._episodes = _grown(self._episodes, s0 + total)
            self._prev_episodes = _grown(self._prev_episodes, s0 + total)
            rows = self._slots[s0 : s0 + total]
            rows[:] = 0
            rows["rule"] = np.concatenate(sets)
            rows["tenant"] = np.repeat(np.arange(t0, t0 + nt, dtype=np.int64), counts)
            self._nslots = s0 + total
            self._meta[META_NSLOTS] = self._nslots
        for k, nm in enumerate(names):
            self._tindex[nm] = t0 + k
        self._names.extend(names)

    def _intern(self, tenant_ids: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Tenant index of every event (registering tenants seen for the first time)."""
        # hashing in C first: one dict lookup per distinct tenant of the batch, not per event
        local, uniques = pd.factorize(tenant_ids, sort=False, use_na_sentinel=False)
        fresh = [str(t) for t in uniques.tolist() if t not in self._tindex]
        if fresh:
            self._register(fresh)
        index = self._tindex
        return np.fromiter((index[t] for t in uniques.tolist()), np.int64, len(uniques))[local]

    # ---- public API

    @property
    def late_events(self) -> int:
        """(event, budget) pairs that were too old for their window or period so far."""
        return int(self._meta[META_LATE])

    def apply(  # noqa: PLR0917 - one column per event field, as the engine holds them
        self,
        tenant_ids: npt.NDArray[Any],
        ts_ms: npt.NDArray[np.int64],
        clock_ms: npt.NDArray[np.int64],
        cost_usd: npt.NDArray[np.float64],
        apps: npt.NDArray[Any],
        event_ids: npt.NDArray[Any],
    ) -> list[Alert]:
        """Count one batch of priced events (in stream order) against every budget.

        ``tenant_ids``, ``apps``, ``event_ids``: object[n] of str; ``ts_ms``: int64[n] event
        time; ``clock_ms``: int64[n] the stream clock after each event (non-decreasing,
        >= ts); ``cost_usd``: float64[n], finite and >= 0. Returns the alerts (firing and
        resolved) in stream order; the changed states wait in :meth:`take_changes`.
        """
        n = len(tenant_ids)
        if not (len(ts_ms) == len(clock_ms) == len(cost_usd) == len(apps) == len(event_ids) == n):
            raise ValueError("apply: all arrays must have the same length")
        cost = np.asarray(cost_usd, dtype=np.float64)
        if n and not (np.isfinite(cost).all() and (cost >= 0).all()):
            raise ValueError("apply: cost_usd must be finite and >= 0")
        ts = np.ascontiguousarray(ts_ms, dtype=np.int64)
        at = np.ascontiguousarray(clock_ms, dtype=np.int64)
        if n and (np.any(at < ts) or np.any(np.diff(at) < 0)):
            raise ValueError("apply: clock_ms must be non-decreasing and >= ts_ms")
        if n == 0 or not self._infos:
            return []
        codes = self._intern(np.asarray(tenant_ids, dtype=object))
        units = _cost_units(cost)
        self._meta[META_NA] = 0
        alerts: list[Alert] = []
        i = 0
        while True:
            i = kern.apply_events(
                codes, ts, at, units, i, self._slot0, self._nslot, self._slots, self._rules,
                self._pool, self._meta, self._lev_thr, self._lev_res, self._episodes,
                self._prev_episodes, self._alerts, self._headroom, self._alert_room,
            )  # fmt: skip
            alerts += self._take_alerts(apps, event_ids)
            if i >= n:
                return alerts
            # The kernel stopped before event i for lack of pool room: repack, go on.
            if self._pool.shape[0] - self._meta[META_USED] < self._headroom:
                self._pool = kern.repack(self._slots, self._pool, self._meta, self._headroom)

    def advance(self, clock_ms: int) -> list[Alert]:
        """Bring every budget up to stream clock ``clock_ms``: sliding spend expires,
        calendar periods end, and the levels that time ended resolve. Cheap when the clock
        stayed within the same minute since the last call."""
        minute = int(clock_ms) // MS_PER_MINUTE
        if minute <= self._swept_minute:
            return []
        self._swept_minute = minute
        self._meta[META_NA] = 0
        alerts: list[Alert] = []
        s = 0
        while s < self._nslots:
            s = kern.advance_all(
                int(clock_ms), s, self._slots, self._rules, self._pool, self._meta,
                self._lev_res, self._episodes, self._alerts, self._alert_room,
            )  # fmt: skip
            alerts += self._take_alerts(None, None)
        return alerts

    def take_changes(self) -> dict[str, Any]:
        """State columns of every budget whose state changed since the last call (its
        tenant had an event, spend expired, a period ended), then forgets the changes.
        Rows of previous calendar periods changed by late events come with
        ``current=False``."""
        live = self._slots[: self._nslots]
        cur = np.flatnonzero(live["dirty"])
        prev = np.flatnonzero(live["prev_dirty"])
        live["dirty"][cur] = 0
        live["prev_dirty"][prev] = 0
        return concat_states([
            self._builder.columns(live[prev], previous=True),
            self._builder.columns(live[cur]),
        ])  # fmt: skip

    def state_columns(self) -> dict[str, Any]:
        """Current state of every budget that has state, as columns."""
        return self._builder.columns(self._slots[: self._nslots])

    def states(self) -> list[BudgetState]:
        """:meth:`state_columns` as objects (tests, small outputs)."""
        return state_objects(self.state_columns())

    def _take_alerts(
        self, apps: npt.NDArray[Any] | None, event_ids: npt.NDArray[Any] | None
    ) -> list[Alert]:
        na = int(self._meta[META_NA])
        self._meta[META_NA] = 0
        out: list[Alert] = []
        for rec in self._alerts[:na].tolist():
            event, s, k, status, reason, hi, lo, episode, pstart, pend, clock = rec
            tenant = self._names[int(self._slots[s]["tenant"])]
            info = self._infos[int(self._slots[s]["rule"])]
            spend = (hi << 62) + lo
            kind = "hard" if k == info.nsoft else "soft"
            sliding = info.kind == KIND_SLIDING
            details: dict[str, Any] = {
                "budget_id": info.budget_id,
                "window": info.window,
                "limit_usd": info.limit_usd,
                "level": info.levels[k],
                "kind": kind,
                "status": status_of(spend, info),
                "episode_start": ms_to_iso(episode),
            }
            if status == FIRE and event >= 0 and event_ids is not None:
                details["event_id"] = str(event_ids[event])
            if status != FIRE:
                details["reason"] = _REASONS[reason]
                details["resolve_below_usd"] = info.resolve_below[k] / UNITS_PER_USD
            # a crossing belongs to the app of its event; a resolution to no app
            app = apps[event] if apps is not None and event >= 0 and status == FIRE else ""
            out.append(
                make_alert(
                    type="budget",
                    severity="critical" if kind == "hard" else "warning",
                    tenant_id=tenant,
                    app=app if isinstance(app, str) else "",
                    metric="spend_usd",
                    value=spend / UNITS_PER_USD,
                    threshold=info.levels[k] * info.limit_usd,
                    window_start_ms=clock - info.window_ms if sliding else pstart,
                    window_end_ms=clock if sliding else pend,
                    id_parts=(tenant, info.budget_id, info.levels[k], pstart, episode),
                    details=details,
                    status=RESOLVED if status != FIRE else "firing",
                    emitted_at_ms=clock,
                )
            )
        return out

    # ---- checkpoints

    def snapshot(self) -> bytes:
        """The full state as bytes (an ``.npz`` archive, no pickles) for :meth:`restore`:
        the config, tenant names, slot records, episodes and stored buckets (about
        ``200 B x budgets + 16 B x non-empty buckets``). Equal states give equal bytes."""
        encoded = [nm.encode("utf-8") for nm in self._names]
        slots = np.array(self._slots[: self._nslots], dtype=SLOT)
        for f in QUEUE_FIELDS:
            slots[f] = 0  # the pool layout is rebuilt on restore
        buf = io.BytesIO()
        np.savez(
            buf,
            version=np.array([_SNAPSHOT_VERSION], np.int64),
            config=np.frombuffer(self._config.model_dump_json().encode("utf-8"), np.uint8),
            hysteresis=np.array([self.hysteresis]),
            meta=np.array([self._meta[META_LATE], self._swept_minute], np.int64),
            name_lengths=np.array([len(e) for e in encoded], np.int64),
            names=np.frombuffer(b"".join(encoded), np.uint8),
            slots=slots,
            episodes=self._episodes[: self._nslots],
            prev_episodes=self._prev_episodes[: self._nslots],
            buckets=kern.gather_buckets(self._slots, self._nslots, self._pool),
        )
        return buf.getvalue()

    @classmethod
    def restore(
        cls, config: BudgetConfig, data: bytes, *, hysteresis: float | None = None
    ) -> "BudgetTracker":
        """A tracker that continues from ``data`` (see :meth:`snapshot`) exactly as if never
        stopped. With another ``config``, budgets are matched by tenant, budget id and
        window: matched ones keep their state (with changed levels, those the spend already
        reached count as firing, so an edited file does not re-alert on old spend), new ones
        start empty, dropped ones are gone."""
        try:
            z = np.load(io.BytesIO(data), allow_pickle=False)
            version = int(z["version"][0])
            old_json = z["config"].tobytes().decode("utf-8")
            old_hyst = float(z["hysteresis"][0])
            late, swept = (int(x) for x in z["meta"])
            lengths = z["name_lengths"].tolist()
            blob = z["names"].tobytes()
            old_slots = np.asarray(z["slots"])
            episodes = np.asarray(z["episodes"], np.int64)
            prev_episodes = np.asarray(z["prev_episodes"], np.int64)
            buckets = np.ascontiguousarray(z["buckets"], np.int64).reshape(-1, 2)
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
            raise ValueError(f"not a budget snapshot: {err}") from None
        if version != _SNAPSHOT_VERSION or old_slots.dtype.descr != SLOT.descr:
            raise ValueError(f"budget snapshot version {version} is not supported")
        ends = np.cumsum(lengths).tolist()
        try:
            names = [blob[e - n : e].decode("utf-8") for n, e in zip(lengths, ends, strict=True)]
        except UnicodeDecodeError as err:
            raise ValueError(f"not a budget snapshot: {err}") from None
        tr = cls(config, hysteresis=old_hyst if hysteresis is None else hysteresis)
        tr._meta[META_LATE] = late
        tr._swept_minute = swept
        if names:
            tr._register(names)
        src_start = np.cumsum(old_slots["q_cnt"]) - old_slots["q_cnt"]
        new = tr._slots[: tr._nslots]
        if old_json == config.model_dump_json():
            for f in _KEEP:  # same config, same tenant order: the same slot layout
                new[f] = old_slots[f]
            tr._episodes[: tr._nslots, : episodes.shape[1]] = episodes
            tr._prev_episodes[: tr._nslots, : prev_episodes.shape[1]] = prev_episodes
            starts = src_start
        else:
            old_infos = [
                rule_info(r, old_hyst)
                for r in flat_rules(BudgetConfig.model_validate_json(old_json))
            ]
            starts = tr._remap(old_infos, old_slots, src_start, episodes, prev_episodes)
        tr._pool = kern.scatter_buckets(tr._slots, starts, buckets, tr._meta, tr._headroom)
        return tr

    def _remap(
        self,
        old_infos: list[RuleInfo],
        old_slots: npt.NDArray[np.void],
        old_start: npt.NDArray[np.int64],
        episodes: npt.NDArray[np.int64],
        prev_episodes: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.int64]:
        """Carry matched budgets over from a snapshot made with another config; returns,
        per new slot, where its buckets start in the snapshot's bucket array."""
        where: dict[tuple[int, str, str], int] = {}
        for s, (t, r) in enumerate(
            zip(old_slots["tenant"].tolist(), old_slots["rule"].tolist(), strict=True)
        ):
            where[(t, old_infos[r].budget_id, old_infos[r].window)] = s
        starts = np.zeros(self._nslots, np.int64)
        for s in range(self._nslots):
            t, r = int(self._slots[s]["tenant"]), int(self._slots[s]["rule"])
            info = self._infos[r]
            o = where.get((t, info.budget_id, info.window))
            if o is None:
                continue
            for f in _KEEP:
                self._slots[s][f] = old_slots[o][f]
            starts[s] = old_start[o]
            nl = min(episodes.shape[1], self._maxlev)
            self._episodes[s, :nl] = episodes[o, :nl]
            self._prev_episodes[s, :nl] = prev_episodes[o, :nl]
            if old_infos[int(old_slots[o]["rule"])].thresholds != info.thresholds:
                rec = self._slots[s]
                spend = (int(rec["hi"]) << 62) + int(rec["lo"])
                prev = (int(rec["prev_hi"]) << 62) + int(rec["prev_lo"])
                rec["fired"] = sum(1 << k for k, thr in enumerate(info.thresholds) if spend >= thr)
                rec["prev_fired"] = sum(
                    1 << k for k, thr in enumerate(info.thresholds) if prev >= thr
                )
                self._episodes[s, :] = rec["clock"]
        return starts

    # ---- introspection (tests, metrics)

    def memory_bytes(self) -> int:
        """Bytes held by the tracker's arrays (not counting the tenant-name dict)."""
        return int(
            self._slots.nbytes + self._pool.nbytes + self._slot0.nbytes + self._nslot.nbytes
            + self._episodes.nbytes + self._prev_episodes.nbytes + self._alerts.nbytes
        )  # fmt: skip
