"""Budget states on a real broker: on ``llm.budget.state`` before the segment's Kafka
transaction commits, and after a restart mid-segment (kill -9) the alerts still once.

Worker A flushes only every two minutes (and has a long session, so that no rebalance
flushes for it), so everything it processes stays in its open segment: nothing written to
ClickHouse, no alert published, no offset committed. Its budget
states must be on the topic all the same (read ``read_uncommitted``, as the agents read it),
at the values an uninterrupted engine reaches. A is then killed; B redoes everything from
the committed offset (none) and publishes the same states again, and every budget alert
exactly once (``read_committed``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from workers import (
    BUDGETS,
    PARTITIONS,
    Workers,
    assert_budget_alerts_once,
    assert_totals_exact,
    committed_offsets,
    drain_and_stop,
    end_offsets,
    produce,
    read_all,
)

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.core.timeutil import now_ms
from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.dev.synth import SynthConfig, generate_events

pytestmark = pytest.mark.integration

Budgets = dict[tuple[str, str], tuple[str, float, float]]


def budgets_of(value: dict[str, Any]) -> Budgets:
    """(tenant, budget) → (status, spend, remaining) of one state record's value."""
    tenant = value["tenant_id"]
    return {
        (tenant, b["budget_id"]): (b["status"], b["spend_usd"], b["remaining_usd"])
        for b in value["budgets"]
    }


def reference_states(by_partition: dict[int, list[Any]]) -> Budgets:
    """The final state of every (tenant, budget): a fresh engine per partition, fed its
    records in order, never interrupted."""
    config = BudgetConfig.model_validate(BUDGETS)
    out: Budgets = {}
    for recs in by_partition.values():
        engine = Engine(EngineConfig(prices=PriceTable(), budgets=config))
        for i in range(0, len(recs), 5000):
            engine.process([r.value for r in recs[i : i + 5000]])
        for s in engine.budgets.states():
            out[(s.tenant_id, s.budget_id)] = (s.status, s.spend_usd, s.remaining_usd)
    return out


async def state_records(bootstrap: str, topic: str) -> dict[int, list[dict[str, Any]]]:
    """Every record value of the state topic so far by partition, ``read_uncommitted``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        values: dict[int, list[dict[str, Any]]] = {tp.partition: [] for tp in tps}
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for tp, recs in (await consumer.getmany(timeout_ms=500)).items():
                values[tp.partition] += [orjson.loads(r.value) for r in recs]
        return values
    finally:
        await consumer.stop()


def latest(by_partition: dict[int, list[dict[str, Any]]]) -> Budgets:
    """The latest (status, spend, remaining) per (tenant, budget): a tenant's records share
    one partition, in order."""
    out: Budgets = {}
    for values in by_partition.values():
        for v in values:
            out.update(budgets_of(v))
    return out


def test_states_before_the_commit_and_alerts_once_after_a_restart(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    state_topic, alert_topic = prefix + "llm.budget.state", prefix + "llm.alerts.budget"
    kafka_broker.create_topics({topic: PARTITIONS})
    # dated ahead of the wall clock: an idle partition's clock never moves, so the states
    # depend on the events alone, whatever the pauses of the test
    config = SynthConfig(n_events=20_000, seed=3, n_tenants=10, embedding_share=0.0,
                         start_ms=now_ms() + 60_000, rate_per_s=20_000 / 540)  # fmt: skip
    events = [bytes(e) for e in generate_events(config)]

    workers = Workers(kafka_broker, tmp_path, topic, group, prefix)
    env = workers.env
    # a long session too: a member the group expels on a loaded machine (a slow partition
    # take-over) gives its partitions up with a flush, and that commits the segment
    workers.env = {
        **env,
        "LLMOPS_FLUSH_INTERVAL_MS": "120000",
        "LLMOPS_KAFKA_SESSION_TIMEOUT_MS": "20000",
    }
    a = workers.start("a")
    workers.env = env
    try:
        workers.wait_assigned(a)
        started = time.monotonic()
        asyncio.run(produce(bootstrap, topic, events))
        expected = reference_states(asyncio.run(read_all(bootstrap, topic)))
        assert any(s == "exceeded" for s, _, _ in expected.values()), "a cap must be crossed"

        # A's states reach their final values while its segment is still open
        deadline = time.monotonic() + 60
        while True:
            before_kill = asyncio.run(state_records(bootstrap, state_topic))
            seen = latest(before_kill)
            if seen.keys() == expected.keys() and all(
                seen[k][0] == expected[k][0] and seen[k][1:] == pytest.approx(expected[k][1:])
                for k in expected
            ):
                break
            assert time.monotonic() < deadline, (len(seen), len(expected), workers.logs())
            assert a.poll() is None, workers.logs()
            time.sleep(0.5)
        assert time.monotonic() - started < 100, "A may have flushed its segment meanwhile"
        assert asyncio.run(committed_offsets(bootstrap, group, topic)) == {}
        for isolation in ("read_committed", "read_uncommitted"):
            alerts = asyncio.run(end_offsets(bootstrap, alert_topic, isolation_level=isolation))
            assert sum(alerts.values()) == 0, "alerts wait for the segment's transaction"

        a.send_signal(signal.SIGKILL)  # mid-segment: processed, published states, no commit
        a.wait(30)
        b = workers.start("b")
        workers.wait_assigned(b)
        drain_and_stop(kafka_broker, group, topic, workers, b)
    finally:
        workers.stop_all()

    report = workers.report()
    assert_totals_exact(report, events, [])
    assert_budget_alerts_once(bootstrap, topic, prefix, report)
    # B re-published every tenant's state, ending at the values A had published early
    everything = asyncio.run(state_records(bootstrap, state_topic))
    after_kill = {p: values[len(before_kill[p]) :] for p, values in everything.items()}
    assert {v["tenant_id"] for vs in after_kill.values() for v in vs} == {t for t, _ in expected}
    final = latest(everything)
    assert final.keys() == expected.keys()
    for k, (status, *money) in expected.items():
        assert final[k][0] == status and final[k][1:] == pytest.approx(money), k
        assert final[k] == seen[k], "the redo reached another state than the one published"
