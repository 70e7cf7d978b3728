"""Records reach a partition's run only if that run owned the partition when they were fetched.

aiokafka runs ``on_assigned`` concurrently with the consume loop: a fetch can hold records
read before a new run's ``seek``. Handing them to the new run would skip every offset between
its start and theirs (and commit past them). These tests drive the worker's dispatch with real
engines and no broker, simulating the rebalance at the moment it happens in production: while
an earlier partition of the same fetch is being handled.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.synth import SynthConfig, generate_events
from llmops_stream.stream.kafka.worker import PartitionRun, Worker
from llmops_stream.stream.runtime.settings import Settings

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


@dataclass
class Rec:
    offset: int
    value: bytes


def recs(start: int, n: int, seed: int = 1) -> list[Rec]:
    events = generate_events(SynthConfig(n_events=start + n, seed=seed, embedding_share=0.0))
    return [Rec(o, v) for o, v in enumerate(itertools.islice(events, start + n)) if o >= start]


@pytest.fixture
def worker() -> Worker:
    config = EngineConfig(prices=PriceTable())
    return Worker(Settings(), lambda: config, None)


def new_run(worker: Worker, tp: TopicPartition, start: int = 0) -> PartitionRun:
    run = PartitionRun(
        tp=tp,
        engine=Engine(worker.engine_config()),
        committed=start,
        seg_start=start,
        next_offset=start,
        forced_end=None,
        sink=ClickHouseSink(None, "db"),
    )
    worker.runs[tp] = run
    return run


def with_rebalance_during(worker: Worker, tp: TopicPartition, rebalance: Any) -> None:
    """Make the handling of ``tp`` run ``rebalance`` first (the concurrent callback)."""
    handle = worker._handle

    async def patched(run: PartitionRun, records: list[Any]) -> None:
        if run.tp == tp:
            rebalance()
        await handle(run, records)

    worker._handle = patched


def test_records_of_the_owning_run_are_processed(worker: Worker) -> None:
    run = new_run(worker, P0)
    batch = {P0: recs(0, 50)}
    asyncio.run(worker._dispatch(batch, {tp: worker.runs.get(tp) for tp in batch}))
    assert run.next_offset == 50
    assert run.sink.rows_buffered > 0


def test_records_fetched_before_the_run_existed_are_dropped(worker: Worker) -> None:
    # the fetch returned P0's records from offset 300 (read before on_assigned's seek);
    # the run created meanwhile starts at 0
    new_run(worker, P1)
    batch = {P1: recs(0, 20), P0: recs(300, 40)}
    fetched_for = {tp: worker.runs.get(tp) for tp in batch}
    created: list[PartitionRun] = []
    with_rebalance_during(worker, P1, lambda: created.append(new_run(worker, P0, start=0)))
    asyncio.run(worker._dispatch(batch, fetched_for))
    (p0,) = created
    assert p0.next_offset == 0, "offsets 0..299 would have been skipped"
    assert not p0.pending and p0.sink.rows_buffered == 0
    assert worker.runs[P1].next_offset == 20


def test_records_of_a_replaced_run_are_dropped(worker: Worker) -> None:
    new_run(worker, P1)
    old = new_run(worker, P0, start=100)
    batch = {P1: recs(0, 20), P0: recs(100, 40)}
    fetched_for = {tp: worker.runs.get(tp) for tp in batch}
    replaced: list[PartitionRun] = []
    with_rebalance_during(worker, P1, lambda: replaced.append(new_run(worker, P0, start=60)))
    asyncio.run(worker._dispatch(batch, fetched_for))
    assert old.next_offset == 100 and replaced[0].next_offset == 60
    assert replaced[0].sink.rows_buffered == 0


def test_records_of_a_revoked_partition_are_dropped(worker: Worker) -> None:
    new_run(worker, P1)
    old = new_run(worker, P0)
    batch = {P1: recs(0, 20), P0: recs(0, 40)}
    fetched_for = {tp: worker.runs.get(tp) for tp in batch}
    with_rebalance_during(worker, P1, lambda: worker.runs.pop(P0))
    asyncio.run(worker._dispatch(batch, fetched_for))
    assert old.next_offset == 0
