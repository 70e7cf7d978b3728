"""Edges of SPEC §7 on a real broker: a poison pill just under the broker's message limit,
replicas started from the same settings, and a stale owner that wakes up after the group
replaced it.

Workers are real ``llmops-stream run`` processes (``tests/workers.py``); results are read
back the way users do: ``report --json``, and the output topics with a ``read_committed``
consumer, so an output that a worker published twice, or that a replaced owner published
for a partition it had lost, shows up as a repeated record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from chdb_front import FrontProcess
from prometheus_client.parser import text_string_to_metric_families
from workers import (
    PARTITIONS,
    Stream,
    Workers,
    assert_budget_alerts_once,
    assert_dlq_exact,
    assert_totals_exact,
    drain_and_stop,
    group_caught_up,
    produce,
    read_all,
    tenant_key,
    wait_caught_up,
    wait_members,
    wait_stable,
)

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.core.timeutil import now_ms
from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.dev.synth import SynthConfig, generate_bad_events, generate_events
from llmops_stream.stream.kafka.records import output_topics

pytestmark = pytest.mark.integration

# Hourly budgets of several sizes on traffic of nine minutes: thresholds are crossed all
# along the stream, so budget alerts are due in every phase of a test.
BUDGETS = {
    "default": [
        {"id": f"h{i}", "limit_usd": limit, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0}
        for i, limit in enumerate((1.5, 5.0, 9.0, 20.0))
    ]
}
# Lines of a worker log telling that it retried a commit its producer was fenced out of:
# the fencing loop of workers sharing a transactional id. (A member the group expelled
# under load is fenced once per partition it held and drops them: not a loop.)
FENCED = re.compile(r"write failed \((ProducerFenced|IllegalOperation|InvalidProducerEpoch)")


def traffic_ahead(n_events: int, *, seed: int, n_tenants: int) -> list[bytes]:
    """Synthetic events (no embeddings) dated one to ten minutes ahead of the wall clock
    (the engine admits events up to 15 minutes ahead).

    These tests leave partitions idle for seconds between phases, and an idle partition's
    clock follows the wall clock (``StreamClock.tick``) when that is ahead of it: budget
    episodes would then start at the wall clock rather than at the event that fired them
    (other alert ids than the uninterrupted reference's), and events dated in the past (the
    synthetic default, weeks back) would fall out of their budget window and the dedup
    horizon. Ahead of the wall clock, the stream clock is never moved by an idle tick: the
    totals and alerts depend on the events alone, whatever the pauses.
    """
    config = SynthConfig(
        n_events=n_events,
        seed=seed,
        n_tenants=n_tenants,
        embedding_share=0.0,
        start_ms=now_ms() + 60_000,
        rate_per_s=n_events / 540,
    )
    return list(generate_events(config))


def reference_firing(events: Sequence[bytes]) -> set[str]:
    """Ids of the budget alerts that ``events`` fire, processed in order by one engine."""
    engine = Engine(EngineConfig(prices=PriceTable(), budgets=BudgetConfig.model_validate(BUDGETS)))
    out = engine.process(list(events))
    return {a.alert_id for a in out.alerts if a.type == "budget" and a.status == "firing"}


def interleave(good: Sequence[bytes], bad: Sequence[bytes], spacing: int) -> list[bytes]:
    """``good`` with the ``bad`` events inserted every ``spacing``-th position (modulo)."""
    stream = list(good)
    for i, raw in enumerate(bad):
        stream.insert((i * spacing) % len(stream), raw)
    return stream


def bad_events(seed: int, max_bytes: int = 100_000) -> list[bytes]:
    return [raw for raw, _ in generate_bad_events(seed=seed) if len(raw) < max_bytes]


def stop(workers: Workers, proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM ``proc`` (if still running) and its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        raise AssertionError("a worker did not stop on SIGTERM:\n" + workers.logs()) from None


def fenced_lines(workers: Workers) -> list[str]:
    return [
        line
        for proc in workers.procs
        for line in workers.log_of(proc).splitlines()
        if FENCED.search(line)
    ]


# ------------------------------------------------------------------ 1. poison pill

POISON_BYTES = 1_048_400
# Kafka's default message.max.bytes: a record batch of one 1,048,400-byte record fits.
TOPIC_MAX_MESSAGE_BYTES = 1_048_588


async def produce_large(bootstrap: str, topic: str, batches: Sequence[Sequence[bytes]]) -> None:
    """Produce each batch in order, each acknowledged before the next starts, with a
    producer whose request limit lets a message of ~1 MiB through."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_request_size=2_000_000
    )
    await producer.start()
    try:
        for batch in batches:
            futures = [await producer.send(topic, raw, key=tenant_key(raw)) for raw in batch]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_one(bootstrap: str, topic: str, value: bytes, key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2_000_000)
    await producer.start()
    try:
        await (await producer.send(topic, value, key=key))
    finally:
        await producer.stop()


def chdb_rows(path: Path, sql: str) -> list[list[Any]]:
    """Rows of ``sql`` on the embedded chDB at ``path``, read in a process of its own (chDB
    serves one process per path, and this one must not keep it open)."""
    code = (
        "import json, sys, clickhouse_connect\n"
        "client = clickhouse_connect.get_client(interface='chdb', path=sys.argv[1])\n"
        "print(json.dumps([list(r) for r in client.query(sys.argv[2]).result_rows]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(path), sql],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows: list[list[Any]] = json.loads(run.stdout)
    return rows


def test_poison_pill_just_under_the_broker_limit(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    """A bad message of 1,048,400 bytes (the broker takes it) between good events: it goes
    to the DLQ as a prefix marked truncated (the whole record would not fit the worker's
    producer), whole into ``llm_rejected``, and its partition goes on: every good event
    after it is counted."""
    bootstrap = kafka_broker.bootstrap_servers
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    db = "edges_poison"
    kafka_broker.create_topics(
        {topic: PARTITIONS},
        configs={topic: {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}},
    )
    events = traffic_ahead(2_000, seed=51, n_tenants=6)
    head = b'{"event_id": "x", '
    poison = head + b"a" * (POISON_BYTES - len(head))  # an object never closed: invalid JSON
    assert len(poison) == POISON_BYTES
    # keyed like the first event after it, so good events follow it on its partition
    poison_key = tenant_key(events[1_000])

    workers = Workers(kafka_broker, tmp_path, topic, group, prefix, database=db, budgets=BUDGETS)
    try:
        worker = workers.start()
        workers.wait_assigned(worker)
        asyncio.run(produce_large(bootstrap, topic, [events[:1_000]]))
        asyncio.run(produce_one(bootstrap, topic, poison, poison_key))
        asyncio.run(produce_large(bootstrap, topic, [events[1_000:]]))
        drain_and_stop(kafka_broker, group, topic, workers, worker, timeout_s=120)
    finally:
        workers.stop_all()

    log = workers.logs()
    assert "MessageSizeTooLarge" not in workers.log_of(worker), log

    # all 2,000 good events counted (those after the poison pill too), one rejection
    report = workers.report()
    assert_totals_exact(report, events, [poison])

    # the DLQ holds one record for it: a prefix of its bytes, marked truncated
    dlq = asyncio.run(read_all(bootstrap, prefix + "llm.calls.dlq"))
    records = [r for recs in dlq.values() for r in recs]
    assert len(records) == 1, [(r.partition, len(r.value)) for r in records]
    (record,) = records
    headers = dict(record.headers)
    assert 0 < len(record.value) < POISON_BYTES
    assert poison.startswith(record.value)
    assert headers["truncated"] == b"1"
    assert headers["original_size"] == str(POISON_BYTES).encode()
    # 1,048,400 bytes is under the decoder's size limit (1 MiB): rejected for its syntax
    assert headers["reason"] == b"invalid_json"

    # llm_rejected holds the whole message (read once the worker is gone)
    rows = chdb_rows(
        tmp_path / "ch",
        f"SELECT reason, length(raw), lower(hex(MD5(raw))) FROM {db}.llm_rejected",  # noqa: S608
    )
    assert rows == [["invalid_json", POISON_BYTES, hashlib.md5(poison).hexdigest()]]  # noqa: S324


# ------------------------------------------------------------------ 2. same settings


def test_workers_from_the_same_settings_do_not_fence_each_other(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    """Two replicas of one deployment (the same environment, the same ``--worker-id``) in
    one group share the partitions: outputs and totals are exact, and neither keeps
    fencing the other's transactional producer."""
    bootstrap = kafka_broker.bootstrap_servers
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    db = "edges_replicas"
    kafka_broker.create_topics({topic: PARTITIONS})
    events = traffic_ahead(20_000, seed=61, n_tenants=12)
    bad = bad_events(6)
    stream = interleave(events, bad, 499)

    with FrontProcess(tmp_path / "ch", tmp_path / "front.log") as front:
        workers = Workers(
            kafka_broker,
            tmp_path,
            topic,
            group,
            prefix,
            clickhouse=front.url,
            database=db,
            budgets=BUDGETS,
        )
        try:
            first, second = workers.start("replica"), workers.start("replica")
            for w in (first, second):
                workers.wait_assigned(w)
            wait_members(bootstrap, group, 2)

            producer = Stream(bootstrap, topic, stream, chunk=1000, pause_s=0.2)
            producer.start()
            producer.join(120)
            wait_caught_up(kafka_broker, group, topic, workers, 90, alive=[first, second])
            codes = [stop(workers, w) for w in (first, second)]
            assert codes == [0, 0], workers.logs()
        finally:
            workers.stop_all()

        fenced = fenced_lines(workers)
        assert not fenced, f"{len(fenced)} fencing lines:\n" + "\n".join(fenced[:20])

        report = workers.report()
        assert_totals_exact(report, events, bad)
        wait_stable(bootstrap, list(output_topics(prefix).values()))
        assert_budget_alerts_once(bootstrap, topic, prefix, report, budgets=BUDGETS)
        assert_dlq_exact(bootstrap, prefix, bad)


# ------------------------------------------------------------------ 3. stale owner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def processed(metrics_port: int) -> int:
    """Events a worker processed so far (valid, duplicate and rejected), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "llmops_events"
            for sample in family.samples
            if sample.name == "llmops_events_total"
            and sample.labels.get("result") in ("valid", "duplicate", "rejected")
        )
    )


def dlq_positions(bootstrap: str, prefix: str) -> list[tuple[int, int]]:
    """(partition, offset) of the rejected input message of each committed DLQ record."""
    dlq = asyncio.run(read_all(bootstrap, prefix + "llm.calls.dlq"))
    return [
        (int(h["source_partition"]), int(h["source_offset"]))
        for recs in dlq.values()
        for h in (dict(r.headers) for r in recs)
    ]


def wait_committed(
    bootstrap: str, group: str, topic: str, workers: Workers, proc: Any, timeout_s: float = 60
) -> None:
    """Like ``wait_caught_up``, polled closely: returns right after the commit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, workers.logs()
        if asyncio.run(group_caught_up(bootstrap, group, topic)):
            return
        time.sleep(0.05)
    raise AssertionError("the worker did not commit everything:\n" + workers.logs())


def test_stale_owner_woken_after_its_session_publishes_and_commits_nothing(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    """Worker A owns every partition and holds a processed, not yet flushed burst (bad
    events for the DLQ, budget crossings) when it freezes (SIGSTOP) past its session
    timeout. Worker B takes the partitions over, redoes the burst and goes on with more
    traffic. Then A wakes up (SIGCONT) still holding the burst's outputs for partitions it
    lost: it must neither publish them nor commit offsets. On the topics, read
    ``read_committed``: every bad event once on the DLQ, every budget alert message once."""
    bootstrap = kafka_broker.bootstrap_servers
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    db = "edges_stale"
    kafka_broker.create_topics({topic: PARTITIONS})
    events = traffic_ahead(14_000, seed=71, n_tenants=10)
    burst_bad, later_bad = bad_events(7), bad_events(8)
    before = events[:6_000]
    burst = interleave(events[6_000:8_000], burst_bad, 37)
    after = interleave(events[8_000:], later_bad, 113)
    # the burst A holds when it freezes crosses budgets: its alerts are at stake too
    assert reference_firing(events[:8_000]) - reference_firing(before)

    with FrontProcess(tmp_path / "ch", tmp_path / "front.log") as front:
        workers = Workers(
            kafka_broker,
            tmp_path,
            topic,
            group,
            prefix,
            clickhouse=front.url,
            database=db,
            budgets=BUDGETS,
        )
        env = workers.env
        # A flushes only every 10 s, so the burst it processes right after a flush is
        # still buffered (processed, outputs built, nothing written or committed) when it
        # freezes; its /metrics tell when it has processed the burst.
        metrics_port = free_port()
        workers.env = {
            **env,
            "LLMOPS_FLUSH_INTERVAL_MS": "10000",
            "LLMOPS_METRICS_PORT": str(metrics_port),
        }
        a = workers.start("a")
        workers.env = env
        try:
            workers.wait_assigned(a)
            asyncio.run(produce(bootstrap, topic, before))
            wait_committed(bootstrap, group, topic, workers, a)  # A has just flushed
            flushed_at = time.monotonic()
            asyncio.run(produce(bootstrap, topic, burst))
            deadline = time.monotonic() + 30
            while processed(metrics_port) < len(before) + len(burst):
                assert time.monotonic() < deadline, workers.logs()
                time.sleep(0.05)
            os.kill(a.pid, signal.SIGSTOP)
            assert time.monotonic() - flushed_at < 8, "A may have flushed the burst"
            assert not asyncio.run(group_caught_up(bootstrap, group, topic)), (
                "the burst was meant to be held by A, unflushed"
            )

            # B takes over once A's session has expired, redoes the burst, goes on
            b = workers.start("b")
            workers.wait_assigned(b, timeout_s=60)
            wait_caught_up(kafka_broker, group, topic, workers, 60, alive=[b])
            asyncio.run(produce(bootstrap, topic, after))
            wait_caught_up(kafka_broker, group, topic, workers, 60, alive=[b])

            # A wakes up with the burst's outputs for partitions it lost, and tries to
            # flush them (and rejoins the group as a new member)
            os.kill(a.pid, signal.SIGCONT)
            time.sleep(8)
            wait_caught_up(kafka_broker, group, topic, workers, 60, alive=[b])
            stop(workers, a)  # whatever its status: it may stop on finding itself replaced
            assert stop(workers, b) == 0, workers.logs()
        finally:
            workers.stop_all()

        report = workers.report()
        assert_totals_exact(report, events, burst_bad + later_bad)
        wait_stable(bootstrap, list(output_topics(prefix).values()))
        dlq_sources = dlq_positions(bootstrap, prefix)
        repeated = sorted(pos for pos, n in Counter(dlq_sources).items() if n > 1)
        assert not repeated, f"DLQ records published twice, by input position: {repeated}"
        assert len(dlq_sources) == len(burst_bad) + len(later_bad)
        assert_dlq_exact(bootstrap, prefix, burst_bad + later_bad)
        assert_budget_alerts_once(bootstrap, topic, prefix, report, budgets=BUDGETS)
