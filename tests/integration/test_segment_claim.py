"""A segment's start belongs to its first writer: a second worker that cut the same start at
another end (an incarnation already replaced in the group but still running, or its
successor) writes no row for it and takes the partition up again, following the claim.

Two :class:`Worker` objects share one ClickHouse (the test-only HTTP front over chDB) and a
real broker; the flush is driven directly, so the interleaving is exact rather than timed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from chdb_front import FrontProcess
from workers import produce, read_all, traffic

from llmops_stream.stream.clickhouse.sink import ClickHouseSink, apply_schema, connect
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.kafka.worker import PartitionRun, Worker, _Part
from llmops_stream.stream.runtime.settings import Settings

pytestmark = pytest.mark.integration

DB = "claims"


def segment(worker: Worker, tp: TopicPartition, records: list[Any], end: int) -> _Part:
    """A fresh run of ``worker`` that processed ``records[:end]`` from offset 0, cut there."""
    run = PartitionRun(
        tp=tp,
        engine=Engine(worker.engine_config()),
        committed=0,
        seg_start=0,
        next_offset=0,
        forced_end=None,
        sink=ClickHouseSink(worker.client, DB),
    )
    worker.runs[tp] = run
    worker._process(run, [r.value for r in records[:end]], [r.offset for r in records[:end]])
    return _Part(
        run=run, start=0, end=end, sink=run.sink, records=[], alert_types=[], snapshot=None
    )


def calls_by_offset(client: Any) -> list[int]:
    return [
        int(r[0])
        for r in client.query(
            f"SELECT kafka_offset FROM {DB}.llm_calls ORDER BY kafka_offset"  # noqa: S608
        ).result_rows
    ]


def test_second_claim_of_a_start_writes_nothing_and_retakes_the_partition(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    topic, group = unique_name("calls"), unique_name("g")
    kafka_broker.create_topics({topic: 1})
    events, _, _ = traffic(
        300, seed=3, n_tenants=4, rate_per_s=20.0, bad_seed=0, max_bad_bytes=0, spacing=1
    )
    asyncio.run(produce(kafka_broker.bootstrap_servers, topic, events))
    records = asyncio.run(read_all(kafka_broker.bootstrap_servers, topic, partitions=1))[0]
    tp = TopicPartition(topic, 0)

    with FrontProcess(tmp_path / "ch", tmp_path / "front.log") as front:
        client = connect(front.url, DB)
        apply_schema(client, DB)
        config = EngineConfig(prices=PriceTable())
        settings = Settings(
            group=group,
            topic=topic,
            clickhouse_database=DB,
            kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        )
        first = Worker(settings, lambda: config, client)
        second = Worker(settings, lambda: config, connect(front.url, DB))

        # the first incarnation claims [0, 100) and writes its rows
        assert first._write_segment(segment(first, tp, records, 100)) is True
        stored = calls_by_offset(client)
        assert len(stored) > 90 and max(stored) == 99  # duplicates of the traffic aside

        # the second cut the same start at 150: nothing of it is written; it takes the
        # partition up again from the committed offset (0), bound to end at the claim
        async def second_flush() -> PartitionRun:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=kafka_broker.bootstrap_servers,
                group_id=group,
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                consumer.assign([tp])
                second.consumer = consumer
                lost = segment(second, tp, records, 150)
                # (had it claimed the start, it would go on to a Kafka commit it has no
                # producer for, retrying: bounded here so that shows as a failure)
                await asyncio.wait_for(second._write([lost]), 30)
                assert second.runs[tp] is not lost.run
                assert await consumer.position(tp) == 0
                return second.runs[tp]
            finally:
                await consumer.stop()
                await second.producers.close_all()  # taking tp up again started one

        retaken = asyncio.run(second_flush())
        assert calls_by_offset(client) == stored, "rows of a lost claim were written"
        assert (retaken.committed, retaken.seg_start, retaken.next_offset, retaken.forced_end) == (
            0,
            0,
            0,
            100,
        )
        assert second.metrics.segments_lost._value.get() == 1

        # following the claim, its redo of [0, 100) is accepted and stores nothing twice
        assert second._write_segment(segment(second, tp, records, 100)) is True
        assert calls_by_offset(client) == stored
