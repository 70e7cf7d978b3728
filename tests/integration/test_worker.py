"""The Kafka worker on a real broker: exact totals and exactly-once alerts under kill -9
of the worker, and of the broker.

Workers run as real processes (``llmops-stream run``) against the session's Apache Kafka
broker and an embedded chDB in the test's folder; ``report --json`` reads the result back
in another process once the workers are gone (chDB serves one process at a time). The
helpers live in ``tests/workers.py``.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from workers import (
    PARTITIONS,
    Workers,
    assert_budget_alerts_once,
    assert_dlq_exact,
    assert_totals_exact,
    drain_and_stop,
    produce,
    traffic,
)

from llmops_stream.stream.dev.kafka_broker import KafkaBroker

pytestmark = pytest.mark.integration


def test_kill_9_three_times_totals_exact_alerts_once(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    kafka_broker.create_topics({topic: PARTITIONS})
    events, bad, stream = traffic(
        200_000,
        seed=21,
        n_tenants=15,
        rate_per_s=20.0,
        bad_seed=2,
        max_bad_bytes=900_000,
        spacing=3989,
    )
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
        workers.wait_assigned(final)  # its SIGTERM handler is installed by then
        drain_and_stop(kafka_broker, group, topic, workers, final)
    finally:
        workers.stop_all()

    report = workers.report()
    assert_totals_exact(report, events, bad)
    bootstrap = kafka_broker.bootstrap_servers
    assert_budget_alerts_once(bootstrap, topic, prefix, report)
    assert_dlq_exact(bootstrap, prefix, bad)


def test_broker_restart_reconnects_and_loses_nothing(unique_name: Any, tmp_path: Path) -> None:
    """SPEC §7: the broker is killed (kill -9) while the worker consumes and comes back on
    the same port and data a few seconds later; the worker reconnects by itself and the
    totals, alerts and DLQ are exact. A broker of its own: the session's must stay up."""
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    events, bad, stream = traffic(
        60_000,
        seed=5,
        n_tenants=8,
        rate_per_s=20.0,
        bad_seed=3,
        max_bad_bytes=900_000,
        spacing=1777,
    )
    with KafkaBroker(data_dir=tmp_path / "kafka") as broker:
        broker.create_topics({topic: PARTITIONS})
        asyncio.run(produce(broker.bootstrap_servers, topic, stream))
        workers = Workers(broker, tmp_path, topic, group, prefix)
        try:
            worker = workers.start()
            workers.wait_assigned(worker)
            time.sleep(1.0)  # while it processes
            broker.kill()
            time.sleep(4.0)
            assert worker.poll() is None, workers.logs()
            broker.start()
            drain_and_stop(broker, group, topic, workers, worker)
        finally:
            workers.stop_all()

        report = workers.report()
        assert_totals_exact(report, events, bad)
        assert_budget_alerts_once(broker.bootstrap_servers, topic, prefix, report)
        assert_dlq_exact(broker.bootstrap_servers, prefix, bad)
