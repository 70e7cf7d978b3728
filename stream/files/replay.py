"""File replay: JSONL events through the engine into a sink, in micro-batches.

Used by ``replay`` and ``demo``. Positions are (file number, line number); every
ClickHouse flush is tagged with the line range and a checksum of its bytes, so replaying the
same file again stores nothing twice.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.budgets import BudgetConfig, load_budgets
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.evalset import EvalSet, load_eval_sets
from llmops_stream.stream.core.freshness import FreshnessConfig
from llmops_stream.stream.core.pricing import PriceTable, load_price_overrides
from llmops_stream.stream.runtime.settings import Settings


def build_engine(settings: Settings) -> Engine:
    """An :class:`Engine` configured from settings (files loaded and validated here)."""
    return Engine(build_engine_config(settings))


def build_engine_config(
    settings: Settings, eval_sets: dict[str, EvalSet] | None = None
) -> EngineConfig:
    """The :class:`EngineConfig` for settings (price, budget and eval-set files loaded;
    ``eval_sets`` given: already loaded, e.g. by an :class:`EvalSetWatcher`)."""
    overrides = load_price_overrides(settings.prices) if settings.prices else None
    budgets = load_budgets(settings.budgets) if settings.budgets else BudgetConfig()
    if eval_sets is None:
        eval_sets = (
            load_eval_sets(settings.eval_set, threshold=settings.eval_threshold)
            if settings.eval_set
            else {}
        )
    return EngineConfig(
        prices=PriceTable(overrides),
        budgets=budgets,
        eval_sets=eval_sets,
        freshness=FreshnessConfig(
            default_max_age_days=settings.freshness_max_age_days,
            stale_share_threshold=settings.freshness_threshold,
            min_count=settings.freshness_min_count,
        ),
        drift_threshold=settings.drift_threshold,
        drift_min_count=settings.drift_min_count,
        window_ms=settings.window_minutes * 60_000,
        candidate_share=settings.candidate_share,
        dedup_horizon_ms=int(settings.dedup_horizon_s * 1000),
        max_future_skew_ms=int(settings.max_future_skew_s * 1000),
        budget_hysteresis=settings.budget_hysteresis,
        alert_max_window_ms=int(settings.alert_max_window_h * 3_600_000),
        share_hysteresis=settings.share_hysteresis,
    )


@dataclass
class ReplayStats:
    """Counters of a replay: engine stats summed over batches, plus alerts fired by type
    and alert messages by status."""

    stats: Counter[str] = field(default_factory=Counter)
    alerts: Counter[str] = field(default_factory=Counter)
    alert_statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def read_batches(stream: BinaryIO, batch_size: int) -> Iterator[tuple[list[bytes], int]]:
    """Yield (non-blank lines without newline, bytes consumed) batches from a JSONL stream.

    A line is one event; blank lines are skipped. Line numbers are the caller's to count
    from the batch sizes (blank lines count as lines).
    """
    lines: list[bytes] = []
    consumed = 0
    for raw in stream:
        consumed += len(raw)
        lines.append(raw.rstrip(b"\r\n"))
        if len(lines) >= batch_size:
            yield lines, consumed
            lines, consumed = [], 0
    if lines:
        yield lines, consumed


def replay(
    sources: list[str],
    engine: Engine,
    sink: ClickHouseSink | None,
    *,
    batch_size: int,
    flush_rows: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplayStats:
    """Replay JSONL ``sources`` (paths, ``-`` = stdin) through ``engine`` into ``sink``.

    ``on_progress(bytes_consumed, events)`` is called after every batch.
    """
    result = ReplayStats()
    started = time.perf_counter()
    for file_no, src in enumerate(sources):
        name = "stdin" if src == "-" else Path(src).name
        stream = sys.stdin.buffer if src == "-" else open(src, "rb")  # noqa: SIM115
        try:
            feed(
                name,
                file_no,
                read_batches(stream, batch_size),
                engine,
                sink,
                result,
                flush_rows=flush_rows,
                on_progress=on_progress,
            )
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    finish(engine, sink, result, token="replay:final:" + ",".join(sources))
    result.seconds = time.perf_counter() - started
    return result


def feed(  # noqa: PLR0917 - a source's name, number and batches, then where they go
    name: str,
    file_no: int,
    batches: Iterable[tuple[list[bytes], int]],
    engine: Engine,
    sink: ClickHouseSink | None,
    result: ReplayStats,
    *,
    flush_rows: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Process ``(lines, bytes)`` batches of one source; flush to ``sink`` every ``flush_rows``.

    Line numbers (blank lines included) are the offsets stored with each call.
    """
    line_no = 0
    pending_from = 0
    crc = 0
    for lines, consumed in batches:
        keep = [i for i, line in enumerate(lines) if line.strip()]
        messages = [lines[i] for i in keep] if len(keep) != len(lines) else lines
        out = engine.process(
            messages,
            source=f"replay:{name}",
            partitions=np.full(len(messages), file_no, np.int32),
            offsets=line_no + np.asarray(keep, dtype=np.int64),
        )
        line_no += len(lines)
        result.stats.update(out.stats)
        result.alerts.update(a.type for a in out.alerts if a.status == "firing")
        result.alert_statuses.update(a.status for a in out.alerts)
        if sink is not None:
            crc = zlib.crc32(b"\n".join(messages), crc)
            sink.add(out)
            if sink.rows_buffered >= flush_rows:
                sink.flush(f"replay:{name}:{pending_from}-{line_no}:{crc:08x}")
                pending_from, crc = line_no, 0
        if on_progress is not None:
            on_progress(consumed, len(messages))
    if sink is not None:
        sink.flush(f"replay:{name}:{pending_from}-{line_no}:{crc:08x}")


def finish(engine: Engine, sink: ClickHouseSink | None, result: ReplayStats, token: str) -> None:
    """Close open windows and write the final alerts and budget states."""
    final = engine.finish()
    result.alerts.update(a.type for a in final.alerts if a.status == "firing")
    result.alert_statuses.update(a.status for a in final.alerts)
    if sink is not None:
        sink.add_alerts(final.alerts)
        sink.add_states(final.budget_states)
        sink.flush(token)
