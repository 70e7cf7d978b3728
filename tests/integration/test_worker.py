"""The Kafka worker on a real broker: exact totals and exactly-once alerts under kill -9
of the worker, and of the broker.

Workers run as real processes (``llmops-stream run``) against the session's Apache Kafka
broker and an embedded chDB in the test's folder; ``report --json`` reads the result back
in another process once the workers are gone (chDB serves one process at a time). The
helpers live in ``tests/workers.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from expected import expected_totals
from workers import (
    PARTITIONS,
    Workers,
    produce,
    read_all,
    reference_budget_alerts,
    traffic,
    wait_caught_up,
)

from llmops_stream.stream.kafka_broker import KafkaBroker

pytestmark = pytest.mark.integration


def test_kill_9_three_times_totals_exact_alerts_once(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    kafka_broker.create_topics({topic: PARTITIONS})
    events, bad, stream = traffic(200_000, seed=21, n_tenants=15, rate_per_s=20.0,
                                  bad_seed=2, max_bad_bytes=900_000, spacing=3989)
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


def test_broker_restart_reconnects_and_loses_nothing(unique_name: Any, tmp_path: Path) -> None:
    """SPEC §7: the broker is killed (kill -9) while the worker consumes and comes back on
    the same port and data a few seconds later; the worker reconnects by itself and the
    totals, alerts and DLQ are exact. A broker of its own: the session's must stay up."""
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    events, bad, stream = traffic(60_000, seed=5, n_tenants=8, rate_per_s=20.0,
                                  bad_seed=3, max_bad_bytes=900_000, spacing=1777)
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
            wait_caught_up(broker, group, topic, workers)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(120) == 0, workers.logs()
        finally:
            workers.stop_all()

        report = workers.report()
        expected = expected_totals(events)
        for tenant, exp in expected.items():
            got = report["tenants"][tenant]
            assert (got["calls"], got["input_tokens"], got["output_tokens"]) == (
                exp["calls"], exp["input_tokens"], exp["output_tokens"]), tenant
            assert got["cost_usd"] == pytest.approx(exp["cost_usd"], rel=1e-9, abs=1e-12)
        assert sum(t["rejected"] for t in report["tenants"].values()) == len(bad)

        bootstrap = broker.bootstrap_servers
        expected_alerts = reference_budget_alerts(asyncio.run(read_all(bootstrap, topic)))
        assert expected_alerts, "budgets are sized to be crossed"
        published = asyncio.run(read_all(bootstrap, prefix + "llm.alerts.budget"))
        ids = [json.loads(r.value)["alert_id"] for recs in published.values() for r in recs]
        assert len(ids) == len(set(ids)), "an alert was published twice"
        assert set(ids) == expected_alerts
        dlq = asyncio.run(read_all(bootstrap, prefix + "llm.calls.dlq"))
        assert sorted(r.value for recs in dlq.values() for r in recs) == sorted(bad)
