"""Rebalance across two workers: budget state follows its partitions (SPEC §7).

Two ``llmops-stream run`` processes of one consumer group share a 4-partition topic and
one ClickHouse: the test-only HTTP front over chDB (``tests/chdb_front.py``), in a process
of its own, spoken to over ``http://`` by the workers, by ``report`` and by this test. While
events stream in, one worker is killed with SIGKILL; its partitions move to the survivor,
which restores their engine state from the checkpoint table and carries on. At the end the
totals are exact, every budget alert is published and stored exactly once, and the
compacted ``llm.budget.state`` topic agrees with ``llm_budget_state`` in ClickHouse.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from chdb_front import FrontProcess
from expected import expected_totals
from workers import (
    PARTITIONS,
    Stream,
    Workers,
    assert_budget_alerts_once,
    assert_totals_exact,
    assignments,
    committed_offsets,
    fence,
    latest_budget_states,
    read_all,
    traffic,
    wait_caught_up,
    wait_stable,
)

from llmops_stream.stream.clickhouse.report import budget_states
from llmops_stream.stream.dev.kafka_broker import KafkaBroker

pytestmark = pytest.mark.integration

DB = "rebalance"
# Small budgets on ~11 h of event time: thresholds are crossed all along the stream, so
# alerts are due both before and after the partitions move.
BUDGETS = {
    "default": [
        {"id": "h", "limit_usd": 1.0, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "d", "limit_usd": 8.0, "window": "day", "soft": [0.5], "hard": 1.0},
    ]
}


def owned(log_text: str) -> set[int]:
    """Partitions of a worker's latest assignment, when two workers share the topic
    (eager rebalancing: each assignment logs all of its partitions, here half of them)."""
    return {a["partition"] for a in assignments(log_text)[-(PARTITIONS // 2) :]}


def wait_split(
    workers: Workers, a: Any, b: Any, timeout_s: float = 90
) -> tuple[set[int], set[int]]:
    """Block until workers ``a`` and ``b`` each own half of the partitions."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert a.poll() is None and b.poll() is None, workers.logs()
        pa, pb = owned(workers.log_of(a)), owned(workers.log_of(b))
        if len(pa) == len(pb) == PARTITIONS // 2 and not pa & pb:
            return pa, pb
        time.sleep(0.2)
    raise AssertionError("the partitions were not split between the workers:\n" + workers.logs())


def wait_checkpoints(
    client: Any, group: str, bootstrap: str, topic: str, timeout_s: float = 60
) -> None:
    """Block until every partition has committed offsets and a checkpoint past offset 0."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = client.query(
            f"SELECT partition, max(offset) FROM {DB}.llm_engine_state "  # noqa: S608 - constant
            "WHERE group_id = %(g)s GROUP BY partition",
            parameters={"g": group},
        ).result_rows
        committed = asyncio.run(committed_offsets(bootstrap, group, topic))
        if (
            len([p for p, off in rows if off > 0]) == PARTITIONS
            and len([o for o in committed.values() if o > 0]) == PARTITIONS
        ):
            return
        time.sleep(0.3)
    raise AssertionError("no checkpoint on every partition")


def test_kill_one_of_two_workers_state_follows_partitions(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    kafka_broker.create_topics({topic: PARTITIONS})
    events, bad, stream = traffic(
        40_000,
        seed=31,
        n_tenants=12,
        rate_per_s=1.0,
        bad_seed=4,
        max_bad_bytes=100_000,
        spacing=997,
    )

    with FrontProcess(tmp_path / "ch", tmp_path / "front.log") as front:
        host, port = front.url.removeprefix("http://").split(":")
        workers = Workers(
            kafka_broker,
            tmp_path,
            topic,
            group,
            prefix,
            clickhouse=front.url,
            database=DB,
            budgets=BUDGETS,
        )
        try:
            w1, w2 = workers.start("w1"), workers.start("w2")
            for w in (w1, w2):
                workers.wait_assigned(w)
            _, victim_parts = wait_split(workers, w1, w2)

            producer = Stream(bootstrap, topic, stream, chunk=1000, pause_s=0.25)
            producer.start()
            client = clickhouse_connect.get_client(host=host, port=int(port))
            wait_checkpoints(client, group, bootstrap, topic)
            producer.wait_sent(len(stream) * 2 // 5)
            assert owned(workers.log_of(w2)) == victim_parts, "a rebalance ran meanwhile"
            survivor_log_at_kill = len(workers.log_of(w1))
            w2.send_signal(signal.SIGKILL)
            w2.wait(30)
            assert producer.is_alive(), "the kill is meant to land mid-stream"

            producer.join(300)
            wait_caught_up(kafka_broker, group, topic, workers, alive=[w1])
            # what a restarted w2 slot would do first; without it the killed worker's open
            # transaction (if any) holds back read_committed readers until it times out
            asyncio.run(fence(bootstrap, f"{group}.{topic}.w2"))
            w1.send_signal(signal.SIGTERM)
            assert w1.wait(120) == 0, workers.logs()
        finally:
            workers.stop_all()

        # The survivor took over the killed worker's partitions at their committed offsets,
        # with their engine state restored from a checkpoint (replay starts past 0).
        taken = assignments(workers.log_of(w1)[survivor_log_at_kill:])
        by_partition = {a["partition"]: a for a in taken}
        assert victim_parts <= set(by_partition), workers.logs()
        for p in victim_parts:
            assert by_partition[p]["committed"] > 0, by_partition[p]
            assert 0 < by_partition[p]["replay"] <= by_partition[p]["committed"], by_partition[p]

        report = workers.report()  # through the front, over http://
        assert_totals_exact(report, events, bad)

        wait_stable(bootstrap, [prefix + "llm.alerts.budget", prefix + "llm.budget.state"])
        assert_budget_alerts_once(bootstrap, topic, prefix, report, budgets=BUDGETS, min_alerts=51)

        # Budget state followed the partitions: the compacted topic's latest state per
        # tenant and budget is ClickHouse's final one.
        client = clickhouse_connect.get_client(host=host, port=int(port))
        stored = {  # the current period of calendar budgets, as report shows it
            (t, b): (spend, status)
            for t, b, _window, spend, _limit, status in budget_states(client, DB)
        }
        on_topic = latest_budget_states(bootstrap, prefix)
        tenants = expected_totals(events)
        assert set(on_topic) == set(stored) == {(t, b) for t in tenants for b in ("h", "d")}
        for key, (spend, status) in stored.items():
            assert on_topic[key]["status"] == status, key
            assert on_topic[key]["spend_usd"] == pytest.approx(spend, rel=1e-9, abs=1e-12), key
        # tenants were over their caps on the way (once the partitions go idle the clock
        # follows the wall clock, weeks after this traffic, and their windows slide out)
        history = asyncio.run(read_all(bootstrap, prefix + "llm.budget.state"))
        statuses = [json.loads(r.value)["status"] for recs in history.values() for r in recs]
        assert "exceeded" in statuses
