"""The engine: one micro-batch of raw call events in, every result out, no I/O.

``Engine.process`` decodes, rejects bad events (with a reason; ``ts_in_future`` for events
too far ahead of the wall clock), advances the stream clock (:mod:`.clock`), drops retries,
prices, updates budgets, scores embeddings against the eval set, flags stale retrieval,
feeds the drift/freshness windows and aggregates per minute. ``Engine.tick`` lets the wall
clock move an idle stream: sliding spend expires, calendar periods and share windows close.
Both return plain columns and alert objects; sources and sinks (files, Kafka, ClickHouse)
only move bytes around it. One engine serves one stream (a Kafka partition, or a replay).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from .aggregate import USAGE_KEYS, usage_rows
from .alerts import Alert
from .budgets import BudgetConfig, BudgetTracker
from .clock import NO_TIME, StreamClock, WallClock
from .decode import (
    STATUS_CACHE_HIT,
    STATUS_ERROR,
    STATUS_RATE_LIMITED,
    STATUS_TIMEOUT,
    STATUSES,
    CallBatch,
    Rejected,
    decode_batch,
)
from .dedup import Deduper
from .drift import DriftScorer
from .evalset import EvalSet
from .freshness import FreshnessConfig, chunk_staleness, max_age_for
from .interning import INTERNED, Coded, Interners
from .model_changes import ServedModels
from .pricing import PriceTable, TokenColumns
from .scoring import score_batch
from .timeutil import MS_PER_MINUTE, ms_to_iso, now_ms
from .windows import ShareWindows

_STATUS_NAMES = np.array(STATUSES, dtype=object)


@dataclass
class EngineConfig:
    """Everything the engine needs; built by the CLI/worker from settings and files."""

    prices: PriceTable
    budgets: BudgetConfig | None = None
    eval_sets: dict[str, EvalSet] = field(default_factory=dict)
    freshness: FreshnessConfig = field(default_factory=FreshnessConfig)
    drift_threshold: float = 0.15
    drift_min_count: int = 50
    window_ms: int = 15 * MS_PER_MINUTE
    lateness_ms: int = MS_PER_MINUTE
    candidate_share: float = 0.05  # share of uncovered inputs kept as eval-set candidates
    dedup_horizon_ms: int = 3_600_000  # of stream-clock time after an id was first seen
    max_future_skew_ms: int = 900_000  # events further ahead of the wall clock: rejected
    idle_ms: int = 1_000  # wall time without events after which the clock follows the wall
    budget_hysteresis: float = 0.05  # fraction of the limit below a level to resolve it
    alert_max_window_ms: int = 24 * 3_600_000  # longest span a share alert is judged over
    share_hysteresis: float = 0.05  # share points below the threshold to resolve a share alert
    model_min_calls: int = 20  # calls a new served model needs before it can take over
    model_settle_ms: int = 24 * 3_600_000  # stream time after a takeover when it resolves


@dataclass
class BatchOutput:
    """Results of one batch; column dicts are ready for the ClickHouse sink."""

    calls: dict[str, Any]
    usage: dict[str, Any]
    rejected: dict[str, Any]
    candidates: dict[str, Any]
    alerts: list[Alert]
    budget_states: dict[str, np.ndarray]  # columns of BudgetState, changed (tenant, budget)
    stats: Counter[str]
    # the same string columns of ``calls`` / ``usage`` as codes into the engine's interners,
    # by table ("llm_calls", "llm_usage_1m") and column: what the sink builds dictionaries of
    coded: dict[str, dict[str, Coded]] = field(default_factory=dict)


@dataclass
class TickOutput:
    """What time alone changed (:meth:`Engine.tick`): alerts and budget states."""

    alerts: list[Alert]
    budget_states: dict[str, np.ndarray]


class Engine:
    """Stateful stream processor over micro-batches (state: dedup, budgets, windows)."""

    def __init__(self, config: EngineConfig, wall: WallClock = now_ms) -> None:
        self.config = config
        self.clock = StreamClock(
            wall, max_future_skew_ms=config.max_future_skew_ms, idle_ms=config.idle_ms
        )
        self.deduper = Deduper(config.dedup_horizon_ms)
        self.interners = Interners()
        self._next_position = 0
        self.budgets = BudgetTracker(
            config.budgets or BudgetConfig(), hysteresis=config.budget_hysteresis
        )
        self.scorers: dict[str, DriftScorer] = {}
        self.drift_windows = ShareWindows(
            alert_type="drift",
            metric="uncovered_share",
            window_ms=config.window_ms,
            threshold=config.drift_threshold,
            min_count=config.drift_min_count,
            lateness_ms=config.lateness_ms,
            max_window_ms=config.alert_max_window_ms,
            hysteresis=config.share_hysteresis,
        )
        self.fresh_windows = ShareWindows(
            alert_type="freshness",
            metric="stale_query_share",
            window_ms=config.window_ms,
            threshold=config.freshness.stale_share_threshold,
            min_count=config.freshness.min_count,
            lateness_ms=config.lateness_ms,
            max_window_ms=config.alert_max_window_ms,
            hysteresis=config.share_hysteresis,
            lag_quantiles=True,  # alerts carry p50/p90/p99 of ts − source_updated_at
        )
        self.served_models = ServedModels(
            min_calls=config.model_min_calls, settle_ms=config.model_settle_ms
        )
        self.set_eval_sets(config.eval_sets)

    def set_eval_sets(self, eval_sets: dict[str, EvalSet]) -> None:
        """(Re)load the eval sets, keyed by embedding model (hot reload); a scorer whose
        eval set is unchanged is kept (an hnswlib index is costly to build)."""
        self.config.eval_sets = eval_sets
        old = self.scorers
        self.scorers = {
            model: old[model] if model in old and old[model].evalset is es else DriftScorer(es)
            for model, es in eval_sets.items()
        }

    # ------------------------------------------------------------------ processing
    def process(
        self,
        messages: list[bytes],
        *,
        source: str = "",
        partitions: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ) -> BatchOutput:
        """Process one micro-batch of raw messages (in arrival order).

        ``partitions`` int32[n] / ``offsets`` int64[n] give each message's source position
        (Kafka partition/offset, or 0/line number for files); stored with every call row.
        """
        n_in = len(messages)
        part = np.zeros(n_in, np.int32) if partitions is None else np.asarray(partitions, np.int32)
        if offsets is None:  # positions of our own, counted across batches
            offs = self._next_position + np.arange(n_in, dtype=np.int64)
            positions = offs
        else:
            offs = np.asarray(offsets, np.int64)
            positions = _positions(part, offs)
        if n_in:
            self._next_position = int(positions[-1]) + 1
        stats: Counter[str] = Counter(events=n_in)

        batch, rejected = decode_batch(messages, self.interners)
        batch = self._check_embedding_dims(batch, rejected)
        batch = self._reject_future(batch, rejected)
        before, at = self.clock.advance(batch.ts_ms)
        dup = self.deduper.check(batch.tenant_id, batch.event_id, at, positions[batch.src_index])
        stats["duplicates"] = int(dup.sum())
        dups = batch.take(np.flatnonzero(dup)) if dup.any() else None
        if dups is not None:
            keep = np.flatnonzero(~dup)
            batch, before, at = batch.take(keep), before[keep], at[keep]
        b = batch
        stats["valid"] = b.n
        for reason, count in Counter(rejected.reason).items():
            stats[f"rejected:{reason}"] = count
        stats["rejected"] = len(rejected)

        cache_hit = b.status == STATUS_CACHE_HIT
        tokens = TokenColumns(
            b.input_tokens,
            b.output_tokens,
            b.cache_read_tokens,
            b.cache_write_tokens,
            b.cache_write_1h_tokens,
            b.reasoning_tokens,
        )
        cost, unpriced = self.config.prices.costs(b.model, b.provider, b.ts_ms, tokens, cache_hit)
        stats["unpriced"] = int(unpriced.sum())

        late_before = self.budgets.late_events
        alerts = self.budgets.apply(b.tenant_id, b.ts_ms, at, cost, b.app, b.event_id)
        stats["budget_late"] = self.budgets.late_events - late_before
        alerts += self.served_models.add(
            b.tenant_id, b.provider, b.model, b.served_model, b.ts_ms, at
        )
        scored, uncovered, centroid_sim, nn_sim, eval_version, candidates = score_batch(
            b, self.scorers, self.config.eval_sets, self.config.candidate_share
        )
        stats["scored"], stats["uncovered"] = int(scored.sum()), int(uncovered.sum())

        max_age = max_age_for(self.config.freshness, b.index_version)
        st = chunk_staleness(
            b.ts_ms, b.chunk_offsets, b.chunk_embedded_at_ms, b.chunk_source_updated_at_ms, max_age
        )
        stats["retrieval"], stats["stale"] = int(st.retrieval.sum()), int(st.stale_query.sum())

        self.drift_windows.add(b.tenant_id, b.app, b.ts_ms, uncovered, scored, clock_before=before)
        self.fresh_windows.add(
            b.tenant_id, b.app, b.ts_ms, st.stale_query, st.retrieval, clock_before=before,
            lag_ms=st.lag_ms, lag_event=st.lag_event,
        )  # fmt: skip
        alerts += self._advance()

        mismatch = (b.served_model != "") & (b.served_model != b.model)
        src_part, src_off = part[b.src_index], offs[b.src_index]
        calls = {
            "event_id": b.event_id,
            "ts": b.ts_ms,
            "tenant_id": b.tenant_id,
            "app": b.app,
            "provider": b.provider,
            "model": b.model,
            "served_model": b.served_model,
            "model_mismatch": mismatch.astype(np.uint8),
            "prompt_id": b.prompt_id,
            "prompt_version": b.prompt_version,
            "status": _STATUS_NAMES[b.status],
            "route_tier": b.route_tier,
            "route_escalated": b.route_escalated.astype(np.uint8),
            "input_tokens": b.input_tokens,
            "output_tokens": b.output_tokens,
            "cache_read_tokens": b.cache_read_tokens,
            "cache_write_tokens": b.cache_write_tokens,
            "reasoning_tokens": b.reasoning_tokens,
            "cost_usd": cost,
            "unpriced": unpriced.astype(np.uint8),
            "latency_ms": b.latency_ms.astype(np.float32),
            "ttft_ms": b.ttft_ms.astype(np.float32),
            "context_window": b.context_window,
            "embedding_model": b.embedding_model,
            "eval_set_version": eval_version,
            "scored": scored.astype(np.uint8),
            "uncovered": uncovered.astype(np.uint8),
            "centroid_sim": centroid_sim,
            "nn_sim": nn_sim,
            "index_version": b.index_version,
            "retrieval_chunks": st.n_chunks,
            "stale_chunks": st.n_stale,
            "outdated_chunks": st.n_outdated,
            "stale": st.stale_query.astype(np.uint8),
            "source": np.full(b.n, source, dtype=object),
            "kafka_partition": src_part,
            "kafka_offset": src_off,
        }
        status = b.status
        counters: dict[str, Any] = {
            "calls": np.ones(b.n, dtype=np.int64),
            "errors": status == STATUS_ERROR,
            "rate_limited": status == STATUS_RATE_LIMITED,
            "timeouts": status == STATUS_TIMEOUT,
            "cache_hits": cache_hit,
            "unpriced": unpriced,
            "model_mismatch": mismatch,
            "escalated": b.route_escalated,
            "input_tokens": b.input_tokens,
            "output_tokens": b.output_tokens,
            "cache_read_tokens": b.cache_read_tokens,
            "cache_write_tokens": b.cache_write_tokens,
            "reasoning_tokens": b.reasoning_tokens,
            "scored": scored,
            "uncovered": uncovered,
            "retrieval_calls": st.retrieval,
            "stale_calls": st.stale_query,
            "stale_chunks": st.n_stale,
            "outdated_chunks": st.n_outdated,
            "duplicates": np.zeros(b.n, np.int64),
        }
        usage, usage_key_codes = _usage(b, dups, counters, cost, st.lag_ms, st.lag_event)
        coded = self._coded(b, source, eval_version)
        usage_codes: dict[str, Coded] = {}
        for k, codes in usage_key_codes.items():
            interner = self.interners[k]
            usage[k] = interner.values(codes)
            usage_codes[k] = Coded.of(codes, interner)
        return BatchOutput(
            calls=calls,
            usage=usage,
            rejected=_rejected_columns(rejected, messages, part, offs, source),
            candidates=candidates,
            alerts=alerts,
            budget_states=self.budgets.take_changes(),
            stats=stats,
            coded={"llm_calls": coded, "llm_usage_1m": usage_codes},
        )

    def _coded(self, b: CallBatch, source: str, eval_version: np.ndarray) -> dict[str, Coded]:
        """The ``llm_calls`` string columns as codes (see :class:`BatchOutput`)."""
        coded = {name: Coded.of(b.codes[name], self.interners[name]) for name in INTERNED}
        statuses = self.interners["status"]
        if len(statuses) == 1:  # code of STATUSES[i] is i + 1 (0 is "")
            statuses.encode(np.array(STATUSES, dtype=object))
        coded["status"] = Coded.of(b.status.astype(np.int32) + 1, statuses)
        sources = self.interners["source"]
        code = sources.encode(np.array([source], dtype=object))
        coded["source"] = Coded.of(np.full(b.n, code[0], np.int32), sources)
        versions = self.interners["eval_set_version"]
        coded["eval_set_version"] = Coded.of(versions.encode(eval_version), versions)
        return coded

    def dedup_rebuild_range(self, partition: int) -> tuple[int, int] | None:
        """After :meth:`restore`: the source offsets ``[from, to)`` of ``partition`` whose
        stored calls (``llm_calls``) the dedup must read back; None if none."""
        span = self.deduper.rebuild_range()
        base = partition << _POSITION_BITS
        return None if span is None else (span[0] - base, span[1] - base)

    def dedup_rebuild(
        self, partition: int, tenant_ids: np.ndarray, event_ids: np.ndarray, offsets: np.ndarray
    ) -> int:
        """Put back the stored calls of :meth:`dedup_rebuild_range` (object[n], object[n],
        int64[n]); returns how many listed ids are still missing (0: complete)."""
        offs = np.asarray(offsets, np.int64) + (partition << _POSITION_BITS)
        self.deduper.rebuild(tenant_ids, event_ids, offs)
        return self.deduper.rebuild_pending()

    def tick(self) -> TickOutput:
        """Let the wall clock move an idle stream (see :class:`.clock.StreamClock`): what
        time alone changed — resolved budget alerts, closed share windows, budget states."""
        alerts = self._advance() if self.clock.tick() else []
        return TickOutput(alerts=alerts, budget_states=self.budgets.take_changes())

    def _advance(self) -> list[Alert]:
        """Bring budgets, dedup and share windows up to the stream clock."""
        now = self.clock.value
        if now == NO_TIME:
            return []
        self.deduper.expire(now)
        alerts = self.budgets.advance(now)
        alerts += self.drift_windows.close(now)
        alerts += self.fresh_windows.close(now)
        alerts += self.served_models.advance(now)
        return alerts

    def snapshot(self) -> bytes:
        """All stream state (clock, dedup bookkeeping, budgets, drift and freshness windows)
        as bytes. Dedup ids are not in it (see :meth:`.dedup.Deduper.snapshot`): the caller
        reads them back with :meth:`.dedup.Deduper.rebuild` after :meth:`restore`."""
        return msgspec.msgpack.encode(
            {
                "version": 2,
                "clock": self.clock.value,
                "position": self._next_position,
                "dedup": self.deduper.snapshot(),
                "budgets": self.budgets.snapshot(),
                "drift": self.drift_windows.snapshot(),
                "freshness": self.fresh_windows.snapshot(),
                "models": self.served_models.snapshot(),
            }
        )

    @classmethod
    def restore(cls, config: EngineConfig, data: bytes, wall: WallClock = now_ms) -> Engine:
        """An engine continuing from :meth:`snapshot` ``data`` with (possibly new) ``config``."""
        state = msgspec.msgpack.decode(data)
        if not isinstance(state, dict) or state.get("version") != 2:
            raise ValueError("not an engine snapshot of a supported version")
        engine = cls(config, wall)
        engine.clock.restore(int(state["clock"]))
        engine._next_position = int(state["position"])
        engine.deduper = Deduper.restore(state["dedup"])
        engine.budgets = BudgetTracker.restore(
            config.budgets or BudgetConfig(), state["budgets"],
            hysteresis=config.budget_hysteresis,
        )  # fmt: skip
        common = {
            "lateness_ms": config.lateness_ms,
            "max_window_ms": config.alert_max_window_ms,
            "hysteresis": config.share_hysteresis,
        }
        engine.drift_windows = ShareWindows.restore(
            state["drift"], threshold=config.drift_threshold, min_count=config.drift_min_count,
            **common,
        )  # fmt: skip
        engine.fresh_windows = ShareWindows.restore(
            state["freshness"],
            threshold=config.freshness.stale_share_threshold,
            min_count=config.freshness.min_count,
            **common,
        )
        engine.served_models = ServedModels.restore(
            state.get("models", {}),
            min_calls=config.model_min_calls,
            settle_ms=config.model_settle_ms,
        )
        return engine

    def finish(self) -> TickOutput:
        """End of a finite replay: close every open drift/freshness window; the budget
        states not handed out yet."""
        alerts = self.drift_windows.close(None) + self.fresh_windows.close(None)
        return TickOutput(alerts=alerts, budget_states=self.budgets.take_changes())

    # ------------------------------------------------------------------ helpers
    def _reject_future(self, b: CallBatch, rejected: Rejected) -> CallBatch:
        """Reject events dated beyond the wall clock plus the allowed skew."""
        future = self.clock.future_mask(b.ts_ms)
        if not future.any():
            return b
        limit = self.clock.wall() + self.clock.max_future_skew_ms
        for i in np.flatnonzero(future):
            rejected.add(
                int(b.src_index[i]),
                "ts_in_future",
                f"ts {ms_to_iso(int(b.ts_ms[i]))} is after {ms_to_iso(limit)} (the wall clock "
                f"plus the allowed skew of {self.clock.max_future_skew_ms // 1000} s)",
                tenant_id=b.tenant_id[i],
                event_id=b.event_id[i],
            )
        return b.take(np.flatnonzero(~future))

    def _check_embedding_dims(self, b: CallBatch, rejected: Rejected) -> CallBatch:
        """Reject embeddings whose dimension differs from their model's eval set."""
        if not self.scorers or b.n == 0:
            return b
        has = b.embedding_nbytes > 0
        bad = np.zeros(b.n, dtype=bool)
        for model, es in self.config.eval_sets.items():
            bad |= has & (b.embedding_nbytes != 4 * es.dim) & (b.embedding_model == model)
        if not bad.any():
            return b
        for i in np.flatnonzero(bad):
            es = self.config.eval_sets[b.embedding_model[i]]
            rejected.add(
                int(b.src_index[i]),
                "bad_embedding",
                f"dimension {b.embedding_nbytes[i] // 4} != {es.dim} of eval set for "
                f"{es.embedding_model}",
                tenant_id=b.tenant_id[i],
                event_id=b.event_id[i],
            )
        return b.take(np.flatnonzero(~bad))


_POSITION_BITS = 40  # a source position is partition * 2**40 + offset (offsets < ~1.1e12)


def _positions(partitions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int64[n] positions that never go back along a stream: Kafka offsets of one partition,
    or (file number, line number) of a replay of several files."""
    return (partitions.astype(np.int64) << _POSITION_BITS) + offsets


def _usage(  # noqa: PLR0917 - the batch, its repeats, and the per-call columns
    b: CallBatch,
    dups: CallBatch | None,
    counters: dict[str, Any],
    cost: np.ndarray,
    lag_ms: np.ndarray,
    lag_event: np.ndarray,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``llm_usage_1m`` rows of the batch; repeats (``dups``) count only as ``duplicates``.

    Rows are grouped on the interned codes of the key columns; returns the rows (key
    columns still to be filled in from the codes) and those key codes (int32[g] by name).
    """
    ts, latency = b.ts_ms, b.latency_ms
    keys = {k: b.codes[k] for k in USAGE_KEYS}
    if dups is not None and dups.n:
        d = dups.n
        ts = np.concatenate([ts, dups.ts_ms])
        latency = np.concatenate([latency, np.full(d, np.nan)])
        keys = {k: np.concatenate([v, dups.codes[k]]) for k, v in keys.items()}
        counters = {
            k: np.concatenate([np.asarray(v, np.int64), np.full(d, k == "duplicates", np.int64)])
            for k, v in counters.items()
        }
        cost = np.concatenate([cost, np.zeros(d)])
    rows = usage_rows(
        ts - ts % MS_PER_MINUTE,
        keys=keys,
        counters=counters,
        cost_usd=cost,
        latency_ms=latency,
        lag_ms=lag_ms,
        lag_event=lag_event,
    )
    return rows, {k: rows[k] for k in USAGE_KEYS}


def _rejected_columns(
    rej: Rejected, messages: list[bytes], part: np.ndarray, offs: np.ndarray, source: str
) -> dict[str, Any]:
    idx = np.asarray(rej.index, dtype=np.int64)
    return {
        "reason": list(rej.reason),
        "detail": list(rej.detail),
        "tenant_id": list(rej.tenant_id),
        "event_id": list(rej.event_id),
        "source": [source] * len(idx),
        "kafka_partition": part[idx] if len(idx) else np.zeros(0, np.int32),
        "kafka_offset": offs[idx] if len(idx) else np.zeros(0, np.int64),
        "raw": [messages[i] for i in rej.index],
    }
