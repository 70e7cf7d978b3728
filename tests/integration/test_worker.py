"""The Kafka worker on a real broker: exact totals and exactly-once alerts under kill -9.

Workers run as real processes (``llmops-stream run``) against the session's Apache Kafka
broker and an embedded chDB in the test's folder; ``report --json`` reads the result back
in another process once the workers are gone (chDB serves one process at a time).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from expected import expected_totals

from llmops_stream.stream.budgets import BudgetConfig
from llmops_stream.stream.engine import Engine, EngineConfig
from llmops_stream.stream.kafka_broker import KafkaBroker
from llmops_stream.stream.pricing import PriceTable
from llmops_stream.stream.synth import SynthConfig, generate_bad_events, generate_events

pytestmark = pytest.mark.integration

PARTITIONS = 4
BUDGETS = {
    "default": [
        {"id": "h", "limit_usd": 3.0, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "d", "limit_usd": 20.0, "window": "day", "soft": [0.5], "hard": 1.0},
    ]
}


class Workers:
    """``llmops-stream run`` processes of one test (started and ended by PID)."""

    def __init__(self, broker: KafkaBroker, tmp: Path, topic: str, group: str, prefix: str):
        budgets = tmp / "budgets.json"
        budgets.write_text(json.dumps(BUDGETS))
        self.tmp = tmp
        self.env = {
            **os.environ,
            "LLMOPS_CLICKHOUSE": f"chdb://{tmp / 'ch'}",
            "LLMOPS_CLICKHOUSE_DATABASE": "worker_test",
            "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "LLMOPS_TOPIC": topic,
            "LLMOPS_GROUP": group,
            "LLMOPS_OUTPUT_TOPIC_PREFIX": prefix,
            "LLMOPS_PARTITIONS": str(PARTITIONS),
            "LLMOPS_BUDGETS": str(budgets),
            "LLMOPS_METRICS_PORT": "0",
            "LLMOPS_FLUSH_INTERVAL_MS": "200",
            "LLMOPS_CHECKPOINT_INTERVAL_S": "1",
            "LLMOPS_BATCH_SIZE": "5000",
            "LLMOPS_KAFKA_SESSION_TIMEOUT_MS": "6000",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def start(self, worker_id: str = "w0") -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmops_stream.stream.cli", "run", "--worker-id", worker_id],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def wait_assigned(self, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
        """Block until worker ``proc`` owns partitions (it logs each assignment)."""
        log = self.tmp / f"worker-{self.procs.index(proc)}.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert proc.poll() is None, self.logs()
            if b"assigned " in log.read_bytes():
                return
            time.sleep(0.2)
        raise AssertionError("worker never got partitions:\n" + self.logs())

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        for log in self._logs:
            log.close()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.tmp.glob("worker-*.log")))

    def report(self) -> dict[str, Any]:
        run = subprocess.run([sys.executable, "-m", "llmops_stream.stream.cli", "report",
                              "--json"], env=self.env, capture_output=True, timeout=300,
                             check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout)  # type: ignore[no-any-return]


async def produce(bootstrap: str, topic: str, events: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = []
        for raw in events:
            try:
                key = str(orjson.loads(raw).get("tenant_id", "")).encode()
            except (orjson.JSONDecodeError, AttributeError):
                key = b""
            futures.append(await producer.send(topic, raw, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, partitions: int = PARTITIONS
) -> dict[int, list[Any]]:
    """Every committed record of ``topic`` (the worker creates all with ``partitions``)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=500)
            for tp, recs in batch.items():
                out[tp.partition] += recs
        return out
    finally:
        await consumer.stop()


async def group_caught_up(bootstrap: str, group: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        end = await consumer.end_offsets(tps)
        return all(tp in committed and committed[tp].offset >= end[tp] for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


def wait_caught_up(broker: KafkaBroker, group: str, topic: str, workers: Workers,
                   timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(group_caught_up(broker.bootstrap_servers, group, topic)):
            return
        assert all(p.poll() is None for p in workers.procs if p is workers.procs[-1]), \
            workers.logs()
        time.sleep(1)
    raise AssertionError("workers did not catch up:\n" + workers.logs())


def reference_budget_alerts(by_partition: dict[int, list[Any]]) -> set[str]:
    """Budget alert ids of a fresh engine fed each partition in order, never interrupted."""
    ids: set[str] = set()
    for recs in by_partition.values():
        engine = Engine(EngineConfig(prices=PriceTable(),
                                     budgets=BudgetConfig.model_validate(BUDGETS)))
        for i in range(0, len(recs), 5000):
            out = engine.process([r.value for r in recs[i:i + 5000]])
            ids |= {a.alert_id for a in out.alerts if a.type == "budget"}
    return ids


def test_kill_9_three_times_totals_exact_alerts_once(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    kafka_broker.create_topics({topic: PARTITIONS})
    events = list(generate_events(SynthConfig(n_events=200_000, seed=21, n_tenants=15,
                                              embedding_share=0.0, rate_per_s=20.0)))
    bad = [raw for raw, _ in generate_bad_events(seed=2) if len(raw) < 900_000]
    stream = list(events)
    for i, raw in enumerate(bad):
        stream.insert((i * 3989) % len(stream), raw)
    asyncio.run(produce(kafka_broker.bootstrap_servers, topic, stream))

    workers = Workers(kafka_broker, tmp_path, topic, group, prefix)
    rng = random.Random(7)
    try:
        for _ in range(3):
            proc = workers.start()
            workers.wait_assigned(proc)
            time.sleep(rng.uniform(0.5, 3.0))  # a random moment while it processes
            assert proc.poll() is None, workers.logs()
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        final = workers.start()
        wait_caught_up(kafka_broker, group, topic, workers)
        final.send_signal(signal.SIGTERM)
        assert final.wait(120) == 0, workers.logs()
    finally:
        workers.stop_all()

    report = workers.report()
    expected = expected_totals(events)
    got = report["tenants"]
    for tenant, exp in expected.items():
        for k in ("calls", "input_tokens", "output_tokens", "cache_read_tokens",
                  "cache_write_tokens", "retrieval_calls", "stale_calls"):
            assert got[tenant][k] == exp[k], (tenant, k, got[tenant][k], exp[k])
        assert got[tenant]["cost_usd"] == pytest.approx(exp["cost_usd"], rel=1e-9, abs=1e-12)
    assert sum(t["rejected"] for t in got.values()) == len(bad)

    bootstrap = kafka_broker.bootstrap_servers
    inputs = asyncio.run(read_all(bootstrap, topic))
    expected_alerts = reference_budget_alerts(inputs)
    assert expected_alerts, "budgets are sized to be crossed"
    published = asyncio.run(read_all(bootstrap, prefix + "llm.alerts.budget"))
    ids = [json.loads(r.value)["alert_id"] for recs in published.values() for r in recs]
    assert len(ids) == len(set(ids)), "an alert was published twice"
    assert set(ids) == expected_alerts, "an alert was lost or invented"
    stored = {a["alert_id"] for a in report["alerts"] if a["type"] == "budget"}
    assert stored == expected_alerts
    dlq = asyncio.run(read_all(bootstrap, prefix + "llm.calls.dlq"))
    dlq_records = [r for recs in dlq.values() for r in recs]
    assert len(dlq_records) == len(bad)
    assert sorted(r.value for r in dlq_records) == sorted(bad)
    assert all(dict(r.headers).get("reason") for r in dlq_records)
