"""``llmops-stream demo``: realistic synthetic traffic through the whole engine.

Writes an eval set and a budget file into a scratch folder, generates the traffic in memory
(no Kafka), runs it through the same path as ``replay`` into ClickHouse, and returns the
run's counters for the summary. Event times end at the last UTC midnight: recent enough
for dashboards, and fixed for the day, so running the demo twice in a day stores it once
(the insert tokens repeat).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from rich.progress import Progress

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.timeutil import MS_PER_DAY, now_ms
from llmops_stream.stream.dev.synth import (
    SynthConfig,
    generate_bad_events,
    generate_eval_set,
    generate_events,
    write_jsonl,
)
from llmops_stream.stream.files.flushing import BackgroundFlusher
from llmops_stream.stream.files.replay import ReplayStats, build_engine, feed, finish
from llmops_stream.stream.runtime.settings import Settings

DEMO_RATE_PER_S = 2.5  # event-time rate: 200k events span ~22 h, so hourly budgets roll over
BAD_EVERY = 997  # one malformed event among this many, to show the DLQ path
EMBEDDING_MODEL = "text-embedding-3-small"


def demo_budgets() -> dict[str, Any]:
    """Budgets that make the synthetic traffic cross soft and hard thresholds."""
    return {
        "default": [
            {"id": "daily", "limit_usd": 100.0, "window": "24h", "soft": [0.5, 0.8], "hard": 1.0},
            {"id": "hourly", "limit_usd": 10.0, "window": "1h", "soft": [0.8], "hard": 1.0},
            {"id": "monthly", "limit_usd": 1000.0, "window": "month", "soft": [0.5], "hard": 1.0},
        ],
        "tenants": {
            "tenant-000": [
                {"id": "daily", "limit_usd": 600.0, "window": "day", "soft": [0.5, 0.8]},
            ]
        },
    }


def _with_bad_events(events: Iterator[bytes], bad: list[bytes]) -> Iterator[bytes]:
    """Interleave ``bad`` events (one of each reject reason) with the traffic."""
    bad = list(bad)
    for i, raw in enumerate(events):
        yield raw
        if i % BAD_EVERY == BAD_EVERY - 1 and bad:
            yield bad.pop()


def _batches(
    events: Iterator[bytes], size: int, result: ReplayStats
) -> Iterator[tuple[list[bytes], int]]:
    """Batches of ``size`` events; the time spent generating them is added to
    ``result.generate_seconds``, so the summary can show the engine's own rate."""
    while True:
        started = time.perf_counter()
        batch = list(itertools.islice(events, size))
        result.generate_seconds += time.perf_counter() - started
        if not batch:
            return
        yield batch, len(batch)


def run_demo(
    settings: Settings,
    workdir: Path,
    *,
    n_events: int,
    n_tenants: int,
    seed: int,
    progress: Progress,
    connect: Callable[[Settings], Any],
) -> ReplayStats:
    """Run the demo; ``connect(settings)`` returns the ClickHouse client."""
    eval_path = workdir / "eval_set.jsonl"
    budgets_path = workdir / "budgets.json"
    write_jsonl(
        eval_path,
        generate_eval_set(n=2000, dim=384, seed=seed, embedding_model=EMBEDDING_MODEL),
    )
    budgets_path.write_bytes(orjson.dumps(demo_budgets()))
    settings = settings.model_copy(update={"eval_set": eval_path, "budgets": budgets_path})
    engine = build_engine(settings)
    client = connect(settings)
    db = settings.clickhouse_database
    span_ms = int(n_events / DEMO_RATE_PER_S * 1000)
    start = now_ms() // MS_PER_DAY * MS_PER_DAY - span_ms
    cfg = SynthConfig(
        n_events=n_events,
        seed=seed,
        start_ms=start,
        rate_per_s=DEMO_RATE_PER_S,
        n_tenants=n_tenants,
        embedding_model=EMBEDDING_MODEL,
    )
    bad = [raw for raw, _ in generate_bad_events(seed) if raw.strip()]
    bad = bad[: n_events // BAD_EVERY]
    result = ReplayStats()
    started = time.perf_counter()
    with (
        progress,
        # the inserts run on their own thread while the engine goes on
        BackgroundFlusher(ClickHouseSink(client, db), ClickHouseSink(client, db)) as sink,
    ):
        task = progress.add_task("demo", total=n_events + len(bad), rate="")

        def on_progress(_consumed: int, n: int) -> None:
            done = progress.tasks[0].completed + n
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=n, rate=f"{rate:,.0f} events/s")

        feed(
            f"demo-{seed}-{n_events}-{n_tenants}-{start}",
            0,
            _batches(_with_bad_events(generate_events(cfg), bad), settings.batch_size, result),
            engine,
            sink,
            result,
            flush_rows=settings.flush_rows,
            on_progress=on_progress,
        )
        finish(engine, sink, result, token=f"demo:final:{seed}:{start}")
    result.seconds = time.perf_counter() - started
    return result
