"""Shared helpers of the worker tests: worker processes, producing, reading topics back.

Workers run as real processes (``llmops-stream run``) against the session's Apache Kafka
broker; ClickHouse is an embedded chDB in the test's folder (one worker at a time) or the
test-only HTTP front of ``chdb_front.py`` (several workers). Everything is read back the
way users do: ``report --json`` in a process of its own, topics with a ``read_committed``
consumer, the group's committed offsets with the admin client.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from expected import expected_totals

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.dev.synth import SynthConfig, generate_bad_events, generate_events

PARTITIONS = 4
BUDGETS: dict[str, Any] = {
    "default": [
        {"id": "h", "limit_usd": 3.0, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "d", "limit_usd": 20.0, "window": "day", "soft": [0.5], "hard": 1.0},
    ]
}
# One line per partition the worker takes over (worker.on_assigned).
ASSIGNED = re.compile(
    r"assigned (?P<topic>\S+)\[(?P<partition>\d+)\]: committed (?P<committed>\d+), "
    r"replay from (?P<replay>\d+), forced end (?P<forced>\S+)"
)


class Workers:
    """``llmops-stream run`` processes of one test (started and ended by PID)."""

    def __init__(
        self,
        broker: KafkaBroker,
        tmp: Path,
        topic: str,
        group: str,
        prefix: str,
        *,
        clickhouse: str | None = None,
        database: str = "worker_test",
        budgets: dict[str, Any] | None = None,
    ) -> None:
        budgets_file = tmp / "budgets.json"
        budgets_file.write_text(json.dumps(BUDGETS if budgets is None else budgets))
        self.tmp = tmp
        self.topic, self.group = topic, group
        self.env = {
            **os.environ,
            "LLMOPS_CLICKHOUSE": clickhouse or f"chdb://{tmp / 'ch'}",
            "LLMOPS_CLICKHOUSE_DATABASE": database,
            "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "LLMOPS_TOPIC": topic,
            "LLMOPS_GROUP": group,
            "LLMOPS_OUTPUT_TOPIC_PREFIX": prefix,
            "LLMOPS_PARTITIONS": str(PARTITIONS),
            "LLMOPS_BUDGETS": str(budgets_file),
            "LLMOPS_METRICS_PORT": "0",
            "LLMOPS_FLUSH_INTERVAL_MS": "200",
            "LLMOPS_CHECKPOINT_INTERVAL_S": "1",
            "LLMOPS_BATCH_SIZE": "5000",
            "LLMOPS_KAFKA_SESSION_TIMEOUT_MS": "6000",
            # The traffic is dated weeks back; a producer that stalls for a second on a
            # loaded machine would let an idle partition's clock jump to today and make
            # later events late, unlike the reference the tests compare with. Tests of
            # the idle clock set their own value.
            "LLMOPS_CLOCK_IDLE_MS": "30000",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker_ids: list[str] = []
        self._logs: list[Any] = []

    def start(self, worker_id: str = "w0") -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmops_stream.stream.cli",
                "run",
                "--worker-id",
                worker_id,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        self.worker_ids.append(worker_id)
        return proc

    def log_path(self, proc: subprocess.Popen[bytes]) -> Path:
        return self.tmp / f"worker-{self.procs.index(proc)}.log"

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.log_path(proc).read_text(errors="replace")

    def wait_assigned(self, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
        """Block until worker ``proc`` owns partitions (it logs each assignment)."""
        log = self.log_path(proc)
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
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker-*.log"))
        )

    def report(self) -> dict[str, Any]:
        run = subprocess.run(
            [sys.executable, "-m", "llmops_stream.stream.cli", "report", "--json"],
            env=self.env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout)


def assignments(log_text: str) -> list[dict[str, Any]]:
    """The partitions a worker took over, in order, as logged (one dict per line)."""
    return [
        {
            "partition": int(m["partition"]),
            "committed": int(m["committed"]),
            "replay": int(m["replay"]),
            "forced": m["forced"],
        }
        for m in ASSIGNED.finditer(log_text)
    ]


def tenant_key(raw: bytes) -> bytes:
    """The record key of a call event (its tenant), empty for unreadable bytes."""
    try:
        return str(orjson.loads(raw).get("tenant_id", "")).encode()
    except (orjson.JSONDecodeError, AttributeError):
        return b""


def traffic(
    n_events: int,
    *,
    seed: int,
    n_tenants: int,
    rate_per_s: float,
    bad_seed: int,
    max_bad_bytes: int,
    spacing: int,
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Synthetic events (no embeddings), the bad events, and both interleaved (every
    ``spacing``-th position modulo the length) as they are produced."""
    events = list(
        generate_events(
            SynthConfig(
                n_events=n_events,
                seed=seed,
                n_tenants=n_tenants,
                embedding_share=0.0,
                rate_per_s=rate_per_s,
            )
        )
    )
    bad = [raw for raw, _ in generate_bad_events(seed=bad_seed) if len(raw) < max_bad_bytes]
    stream = list(events)
    for i, raw in enumerate(bad):
        stream.insert((i * spacing) % len(stream), raw)
    return events, bad, stream


async def produce(bootstrap: str, topic: str, events: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, raw, key=tenant_key(raw)) for raw in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_paced(
    bootstrap: str,
    topic: str,
    events: Sequence[bytes],
    *,
    chunk: int,
    pause_s: float,
    on_sent: Callable[[int], None] | None = None,
) -> None:
    """Produce ``events`` in chunks of ``chunk``, ``pause_s`` apart (a live stream);
    ``on_sent(n)`` after each chunk with the number acknowledged so far."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        for i in range(0, len(events), chunk):
            part = events[i : i + chunk]
            futures = [await producer.send(topic, raw, key=tenant_key(raw)) for raw in part]
            await asyncio.gather(*futures)
            if on_sent is not None:
                on_sent(i + len(part))
            await asyncio.sleep(pause_s)
    finally:
        await producer.stop()


class Stream(threading.Thread):
    """:func:`produce_paced` in a background thread; ``sent`` counts acknowledged events,
    ``join()`` re-raises the producer's error."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: Sequence[bytes],
        *,
        chunk: int = 1000,
        pause_s: float = 0.2,
    ) -> None:
        super().__init__(name="producer", daemon=True)
        self.args = (bootstrap, topic, events)
        self.chunk, self.pause_s = chunk, pause_s
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(
                produce_paced(
                    *self.args, chunk=self.chunk, pause_s=self.pause_s, on_sent=self._count
                )
            )
        except BaseException as exc:  # handed to the test thread by join()
            self.error = exc

    def _count(self, n: int) -> None:
        self.sent = n

    def wait_sent(self, n: int, timeout_s: float = 120) -> None:
        """Block until at least ``n`` events were acknowledged."""
        deadline = time.monotonic() + timeout_s
        while self.sent < n and time.monotonic() < deadline:
            assert self.error is None, self.error
            time.sleep(0.05)
        assert self.sent >= n, f"only {self.sent} of {n} events were sent"

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


async def read_all(
    bootstrap: str, topic: str, partitions: int = PARTITIONS
) -> dict[int, list[Any]]:
    """Every committed record of ``topic`` (the worker creates all with ``partitions``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
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


async def end_offsets(
    bootstrap: str,
    topic: str,
    partitions: int = PARTITIONS,
    isolation_level: str = "read_uncommitted",
) -> dict[int, int]:
    """End offsets per partition: the high watermark, or with ``read_committed`` the last
    stable offset (held back by a transaction still open)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation_level)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (absent: nothing committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        return {
            tp.partition: meta.offset
            for tp, meta in committed.items()
            if tp.topic == topic and meta.offset >= 0
        }
    finally:
        await admin.close()


async def group_members(bootstrap: str, group: str) -> tuple[str, int]:
    """The group's state (``Stable``, ``PreparingRebalance``, …) and number of members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        (described,) = response.to_object()["groups"]
        return described["state"], len(described["members"])
    finally:
        await admin.close()


def wait_members(bootstrap: str, group: str, n: int, timeout_s: float = 60) -> None:
    """Block until the group is stable with ``n`` members (a rebalance has completed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(group_members(bootstrap, group)) == ("Stable", n):
            return
        time.sleep(0.3)
    raise AssertionError(f"group {group} never became stable with {n} members")


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


def wait_caught_up(
    broker: KafkaBroker,
    group: str,
    topic: str,
    workers: Workers,
    timeout_s: float = 300,
    alive: Sequence[subprocess.Popen[bytes]] | None = None,
) -> None:
    """Block until the group committed every partition's end offset; the workers in
    ``alive`` (default: the last one started) must stay up meanwhile."""
    must_live = workers.procs[-1:] if alive is None else alive
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(group_caught_up(broker.bootstrap_servers, group, topic)):
            return
        assert all(p.poll() is None for p in must_live), workers.logs()
        time.sleep(1)
    raise AssertionError("workers did not catch up:\n" + workers.logs())


def drain_and_stop(
    broker: KafkaBroker,
    group: str,
    topic: str,
    workers: Workers,
    proc: subprocess.Popen[bytes],
    timeout_s: float = 300,
) -> None:
    """Wait until the group committed everything with ``proc`` alive, then SIGTERM it and
    require a clean exit (last flush and checkpoint done)."""
    wait_caught_up(broker, group, topic, workers, timeout_s, alive=[proc])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, workers.logs()


async def fence(bootstrap: str, transactional_id: str) -> None:
    """Do what a restarted worker slot does first: take over its transactional id, which
    aborts the transaction a killed incarnation left open (read_committed readers of the
    output topics wait for that otherwise, until the transaction times out)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=transactional_id, enable_idempotence=True
    )
    await producer.start()
    await producer.stop()


def wait_stable(bootstrap: str, topics: Sequence[str], timeout_s: float = 30) -> None:
    """Block until no transaction is open on ``topics`` (last stable offset = high watermark)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(
            asyncio.run(end_offsets(bootstrap, t, isolation_level="read_committed"))
            == asyncio.run(end_offsets(bootstrap, t))
            for t in topics
        ):
            return
        time.sleep(0.5)
    raise AssertionError(f"a transaction stays open on {topics}")


def reference_budget_alerts(
    by_partition: dict[int, list[Any]], budgets: dict[str, Any] | None = None
) -> set[str]:
    """Ids of the budget alerts that fire in a fresh engine fed each partition in order,
    never interrupted (firing is driven by events alone; resolutions also by the wall clock
    on idle partitions, so they are checked apart)."""
    config = BudgetConfig.model_validate(BUDGETS if budgets is None else budgets)
    ids: set[str] = set()
    for recs in by_partition.values():
        engine = Engine(EngineConfig(prices=PriceTable(), budgets=config))
        for i in range(0, len(recs), 5000):
            out = engine.process([r.value for r in recs[i : i + 5000]])
            ids |= {a.alert_id for a in out.alerts if a.type == "budget" and a.status == "firing"}
    return ids


def published_alert_ids(bootstrap: str, prefix: str) -> list[tuple[str, str]]:
    """(alert_id, status) of every committed record on the budget alert topic (repeats
    kept): one message each."""
    published = asyncio.run(read_all(bootstrap, prefix + "llm.alerts.budget"))
    values = [json.loads(r.value) for recs in published.values() for r in recs]
    return [(v["alert_id"], v["status"]) for v in values]


def latest_budget_states(bootstrap: str, prefix: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest state per (tenant, budget) on the compacted ``llm.budget.state`` topic."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for recs in asyncio.run(read_all(bootstrap, prefix + "llm.budget.state")).values():
        for r in recs:  # a tenant's records share one partition, in order
            value = json.loads(r.value)
            assert r.key == value["tenant_id"].encode()
            for b in value["budgets"]:
                latest[(value["tenant_id"], b["budget_id"])] = b
    return latest


TOTAL_KEYS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "retrieval_calls",
    "stale_calls",
)


def assert_totals_exact(
    report: dict[str, Any], events: Sequence[bytes], bad: Sequence[bytes]
) -> None:
    """``report --json`` per-tenant totals equal an independent per-event computation
    (counts exactly, cost to 1e-9 relative), and every bad event was rejected once."""
    got = report["tenants"]
    for tenant, exp in expected_totals(list(events)).items():
        for k in TOTAL_KEYS:
            assert got[tenant][k] == exp[k], (tenant, k, got[tenant][k], exp[k])
        assert got[tenant]["cost_usd"] == pytest.approx(exp["cost_usd"], rel=1e-9, abs=1e-12)
    assert sum(t["rejected"] for t in got.values()) == len(bad)


def assert_budget_alerts_once(
    bootstrap: str,
    topic: str,
    prefix: str,
    report: dict[str, Any],
    *,
    budgets: dict[str, Any] | None = None,
    min_alerts: int = 1,
) -> None:
    """The budget alerts on the topic and in ClickHouse are exactly those the reference
    computes from the input topic with ``budgets`` (default :data:`BUDGETS`, as
    :class:`Workers`): none lost, none invented, none published twice."""
    expected = reference_budget_alerts(asyncio.run(read_all(bootstrap, topic)), budgets)
    assert len(expected) >= min_alerts, "budgets are sized to be crossed"
    messages = published_alert_ids(bootstrap, prefix)
    assert len(messages) == len(set(messages)), "an alert message was published twice"
    firing = {i for i, status in messages if status == "firing"}
    assert firing == expected, "an alert was lost or invented"
    resolved = {i for i, status in messages if status == "resolved"}
    assert resolved <= firing, "a resolution without its firing alert"
    stored = {(a["alert_id"], a["status"]) for a in report["alerts"] if a["type"] == "budget"}
    assert stored == set(messages)


def assert_dlq_exact(bootstrap: str, prefix: str, bad: Sequence[bytes]) -> None:
    """Every bad event is on the DLQ once, with its original bytes and a reason."""
    dlq = asyncio.run(read_all(bootstrap, prefix + "llm.calls.dlq"))
    records = [r for recs in dlq.values() for r in recs]
    assert sorted(r.value for r in records) == sorted(bad)
    assert all(dict(r.headers).get("reason") for r in records)
