"""The engine: one micro-batch of raw call events in, every result out, no I/O.

``Engine.process`` decodes, rejects bad events (with a reason), drops retries, prices,
updates budgets, scores embeddings against the eval set, flags stale retrieval, feeds the
drift/freshness windows and aggregates per minute. It returns plain columns and alert
objects; sources and sinks (files, Kafka, ClickHouse) only move bytes around it.
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
from .dedup import Deduper, stable_hashes
from .drift import DriftScorer
from .evalset import EvalSet
from .freshness import FreshnessConfig, chunk_staleness, max_age_for
from .pricing import PriceTable
from .timeutil import MS_PER_MINUTE
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
    dedup_horizon_ms: int = 24 * 3_600_000


@dataclass
class BatchOutput:
    """Results of one batch; column dicts are ready for the ClickHouse sink."""

    calls: dict[str, Any]
    usage: dict[str, Any]
    rejected: dict[str, Any]
    candidates: dict[str, Any]
    alerts: list[Alert]
    budget_states: dict[str, np.ndarray]  # columns of BudgetState, touched (tenant, budget)
    stats: Counter[str]


class Engine:
    """Stateful stream processor over micro-batches (state: dedup, budgets, windows)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.deduper = Deduper(config.dedup_horizon_ms)
        self.budgets = BudgetTracker(config.budgets or BudgetConfig())
        self.scorers: dict[str, DriftScorer] = {}
        self.drift_windows = ShareWindows(
            alert_type="drift",
            metric="uncovered_share",
            window_ms=config.window_ms,
            threshold=config.drift_threshold,
            min_count=config.drift_min_count,
            lateness_ms=config.lateness_ms,
        )
        self.fresh_windows = ShareWindows(
            alert_type="freshness",
            metric="stale_query_share",
            window_ms=config.window_ms,
            threshold=config.freshness.stale_share_threshold,
            min_count=config.freshness.min_count,
            lateness_ms=config.lateness_ms,
            lag_quantiles=True,  # alerts carry p50/p90/p99 of ts − source_updated_at
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
        offs = np.arange(n_in, dtype=np.int64) if offsets is None else np.asarray(offsets, np.int64)
        stats: Counter[str] = Counter(events=n_in)

        batch, rejected = decode_batch(messages)
        batch = self._check_embedding_dims(batch, rejected)
        dup = self.deduper.check(batch.tenant_id, batch.event_id, batch.ts_ms)
        stats["duplicates"] = int(dup.sum())
        if dup.any():
            batch = batch.take(np.flatnonzero(~dup))
        b = batch
        stats["valid"] = b.n
        for reason, count in Counter(rejected.reason).items():
            stats[f"rejected:{reason}"] = count
        stats["rejected"] = len(rejected)

        cache_hit = b.status == STATUS_CACHE_HIT
        cost, unpriced = self.config.prices.costs(
            b.model,
            b.provider,
            b.input_tokens,
            b.output_tokens,
            b.cache_read_tokens,
            b.cache_write_tokens,
            cache_hit,
        )
        stats["unpriced"] = int(unpriced.sum())

        budget = self.budgets.apply(b.tenant_id, b.ts_ms, cost, b.app, b.event_id)
        scored, uncovered, centroid_sim, nn_sim, eval_version, candidates = self._drift(b)
        stats["scored"], stats["uncovered"] = int(scored.sum()), int(uncovered.sum())

        max_age = max_age_for(self.config.freshness, b.index_version)
        st = chunk_staleness(
            b.ts_ms, b.chunk_offsets, b.chunk_embedded_at_ms, b.chunk_source_updated_at_ms, max_age
        )
        stats["retrieval"], stats["stale"] = int(st.retrieval.sum()), int(st.stale_query.sum())

        self.drift_windows.add(b.tenant_id, b.app, b.ts_ms, uncovered, scored)
        self.fresh_windows.add(
            b.tenant_id,
            b.app,
            b.ts_ms,
            st.stale_query,
            st.retrieval,
            lag_ms=st.lag_ms,
            lag_event=st.lag_event,
        )
        alerts = list(budget.alerts)
        alerts += self.drift_windows.close(self.drift_windows.watermark)
        alerts += self.fresh_windows.close(self.fresh_windows.watermark)

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
        usage = usage_rows(
            b.ts_ms - b.ts_ms % MS_PER_MINUTE,
            keys={k: calls[k] for k in USAGE_KEYS},
            counters={
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
            },
            cost_usd=cost,
            latency_ms=b.latency_ms,
            lag_ms=st.lag_ms,
            lag_event=st.lag_event,
        )
        return BatchOutput(
            calls=calls,
            usage=usage,
            rejected=_rejected_columns(rejected, messages, part, offs, source),
            candidates=candidates,
            alerts=alerts,
            budget_states=budget.state_columns(),
            stats=stats,
        )

    def snapshot(self) -> bytes:
        """All stream state (dedup, budgets, drift and freshness windows) as bytes."""
        return msgspec.msgpack.encode(
            {
                "version": 1,
                "dedup": self.deduper.snapshot(),
                "budgets": self.budgets.snapshot(),
                "drift": self.drift_windows.snapshot(),
                "freshness": self.fresh_windows.snapshot(),
            }
        )

    @classmethod
    def restore(cls, config: EngineConfig, data: bytes) -> Engine:
        """An engine continuing from :meth:`snapshot` ``data`` with (possibly new) ``config``."""
        state = msgspec.msgpack.decode(data)
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("not an engine snapshot of a supported version")
        engine = cls(config)
        engine.deduper = Deduper.restore(state["dedup"])
        engine.budgets = BudgetTracker.restore(config.budgets or BudgetConfig(), state["budgets"])
        engine.drift_windows = ShareWindows.restore(
            state["drift"], threshold=config.drift_threshold, min_count=config.drift_min_count
        )
        engine.fresh_windows = ShareWindows.restore(
            state["freshness"],
            threshold=config.freshness.stale_share_threshold,
            min_count=config.freshness.min_count,
        )
        return engine

    def finish(self) -> list[Alert]:
        """Close every open drift/freshness window (end of a finite replay)."""
        return self.drift_windows.close(None) + self.fresh_windows.close(None)

    # ------------------------------------------------------------------ helpers
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

    def _drift(
        self, b: CallBatch
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Score embeddings per embedding model; returns per-event columns and candidates."""
        n = b.n
        scored = np.zeros(n, dtype=bool)
        uncovered = np.zeros(n, dtype=bool)
        centroid = np.full(n, np.nan, dtype=np.float32)
        nn = np.full(n, np.nan, dtype=np.float32)
        version = np.full(n, "", dtype=object)
        parts: list[dict[str, Any]] = []
        has = b.embedding_nbytes > 0
        for model, scorer in self.scorers.items() if has.any() else ():
            rows = np.flatnonzero(has & (b.embedding_model == model))
            if not rows.size:
                continue
            es = self.config.eval_sets[model]
            mat = np.frombuffer(b"".join([b.embedding[i] for i in rows]), dtype="<f4")  # type: ignore[misc]
            mat = mat.reshape(len(rows), es.dim)
            s = scorer.score(mat)
            scored[rows], uncovered[rows] = s.scored, s.uncovered
            centroid[rows], nn[rows] = s.centroid_sim, s.nn_sim
            version[rows] = es.version
            pick = np.flatnonzero(s.uncovered)
            if pick.size and self.config.candidate_share > 0:
                # deterministic sample: the same events are picked after a replay
                h = stable_hashes(b.tenant_id[rows[pick]], b.event_id[rows[pick]])
                pick = pick[(h % np.uint64(10_000)) < int(self.config.candidate_share * 10_000)]
            if pick.size:
                sel = rows[pick]
                ids = np.asarray(es.ids, dtype=object)
                parts.append(
                    {
                        "event_id": b.event_id[sel],
                        "ts": b.ts_ms[sel],
                        "tenant_id": b.tenant_id[sel],
                        "app": b.app[sel],
                        "embedding_model": np.full(sel.size, model, dtype=object),
                        "eval_set_version": np.full(sel.size, es.version, dtype=object),
                        "nn_sim": s.nn_sim[pick].astype(np.float32),
                        "centroid_sim": s.centroid_sim[pick].astype(np.float32),
                        "nearest_eval_id": ids[np.maximum(s.nn_index[pick], 0)],
                        "embedding": [row.tolist() for row in mat[pick]],
                    }
                )
        empty = {"ts": np.int64, "nn_sim": np.float32, "centroid_sim": np.float32}
        columns: dict[str, Any] = {
            k: (
                [x for p in parts for x in p[k]]
                if k == "embedding"
                else np.concatenate([p[k] for p in parts])
                if parts
                else np.zeros(0, dtype=empty.get(k, object))
            )
            for k in _CANDIDATE_COLUMNS
        }
        return scored, uncovered, centroid, nn, version, columns


_CANDIDATE_COLUMNS = (
    "event_id",
    "ts",
    "tenant_id",
    "app",
    "embedding_model",
    "eval_set_version",
    "nn_sim",
    "centroid_sim",
    "nearest_eval_id",
    "embedding",
)


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
