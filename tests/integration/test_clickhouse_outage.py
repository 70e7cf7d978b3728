"""ClickHouse unreachable while events keep arriving: backpressure, retries, nothing lost.

One ``llmops-stream run`` worker writes to ClickHouse over ``http://`` through the
test-only front over chDB (``tests/chdb_front.py``, a process of its own). Mid-stream the
front stops listening for a while (connections refused, as for a server that is down):
the worker must retry with backoff and stop consuming, so the group's committed offsets
stay where they were while the topic grows; once ClickHouse is back it catches up, with
exact totals and every budget alert published and stored exactly once (SPEC §7).
"""

from __future__ import annotations

import asyncio
import re
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
    assert_dlq_exact,
    assert_totals_exact,
    assignments,
    committed_offsets,
    drain_and_stop,
    end_offsets,
    produce,
    traffic,
    wait_caught_up,
    wait_members,
)

from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.dev.synth import SynthConfig, generate_events

pytestmark = pytest.mark.integration

OUTAGE_S = 15.0
BUDGETS = {
    "default": [
        {"id": "h", "limit_usd": 1.0, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "d", "limit_usd": 8.0, "window": "day", "soft": [0.5], "hard": 1.0},
    ]
}
RETRY = re.compile(r"ClickHouse write failed \((\w+): .*?\); retrying in ([\d.]+) s")


def test_clickhouse_outage_backpressure_then_catch_up(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    kafka_broker.create_topics({topic: PARTITIONS})
    events, bad, stream = traffic(
        30_000,
        seed=41,
        n_tenants=10,
        rate_per_s=1.0,
        bad_seed=5,
        max_bad_bytes=100_000,
        spacing=1009,
    )

    with FrontProcess(tmp_path / "ch", tmp_path / "front.log") as front:
        workers = Workers(
            kafka_broker,
            tmp_path,
            topic,
            group,
            prefix,
            clickhouse=front.url,
            database="outage",
            budgets=BUDGETS,
        )
        try:
            worker = workers.start("w0")
            workers.wait_assigned(worker)
            # ~30 s of stream at 1,000 events/s: the outage lands in its middle
            producer = Stream(bootstrap, topic, stream, chunk=250, pause_s=0.25)
            producer.start()
            producer.wait_sent(len(stream) // 4)
            front.pause()
            paused_at = time.monotonic()
            time.sleep(1.5)  # a flush that wrote ClickHouse before the cut may still commit
            held = asyncio.run(committed_offsets(bootstrap, group, topic))
            high_at_start = asyncio.run(end_offsets(bootstrap, topic))
            while time.monotonic() - paused_at < OUTAGE_S:
                time.sleep(1)
                assert worker.poll() is None, workers.logs()
                now = asyncio.run(committed_offsets(bootstrap, group, topic))
                assert now == held, f"offsets moved while ClickHouse was down: {held} → {now}"
            assert producer.is_alive(), "events are meant to keep arriving during the outage"
            high = asyncio.run(end_offsets(bootstrap, topic))
            lag = sum(high[p] - held.get(p, 0) for p in high)
            assert sum(high.values()) > sum(high_at_start.values()), "nothing arrived meanwhile"
            assert lag > 0
            front.resume()

            producer.join(300)
            drain_and_stop(kafka_broker, group, topic, workers, worker)
        finally:
            workers.stop_all()

        # The worker retried with growing delays, and did not give up.
        delays = [float(d) for _, d in RETRY.findall(workers.log_of(worker))]
        assert len(delays) >= 3, workers.logs()
        # (each partition's write retries on its own, so their sequences interleave)
        assert delays[0] == min(delays) and max(delays) > delays[0], delays
        assert max(delays) <= 10.0

        report = workers.report()
        assert_totals_exact(report, events, bad)
        assert_budget_alerts_once(bootstrap, topic, prefix, report, budgets=BUDGETS, min_alerts=51)
        assert_dlq_exact(bootstrap, prefix, bad)


def wait_checkpointed(
    front_url: str,
    group: str,
    bootstrap: str,
    topic: str,
    trickle: list[bytes],
    timeout_s: float = 60,
) -> None:
    """Block until every partition's checkpoint is at its committed offset (a worker then
    has nothing to write when it gives its partitions up). A checkpoint is taken after a
    flush at most once a second, so a few events are sent now and then to cause flushes."""
    host, port = front_url.removeprefix("http://").split(":")
    client = clickhouse_connect.get_client(host=host, port=int(port))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.2)
        committed = asyncio.run(committed_offsets(bootstrap, group, topic))
        rows = {
            int(p): int(o)
            for p, o in client.query(
                "SELECT partition, max(offset) FROM outage.llm_engine_state "
                "WHERE group_id = %(g)s GROUP BY partition",
                parameters={"g": group},
            ).result_rows
        }
        if len(committed) == PARTITIONS and all(rows.get(p) == o for p, o in committed.items()):
            return
        asyncio.run(produce(bootstrap, topic, trickle[:8]))
        del trickle[:8]
    raise AssertionError("checkpoints did not reach the committed offsets")


def test_clickhouse_down_during_a_rebalance_moved_partitions_wait_for_it(
    kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    kafka_broker.create_topics({topic: PARTITIONS})
    events = list(
        generate_events(
            SynthConfig(n_events=12_000, seed=43, n_tenants=8, embedding_share=0.0, rate_per_s=1.0)
        )
    )
    first, trickle, last = events[:6000], events[6000:6400], events[6400:]

    with FrontProcess(tmp_path / "ch", tmp_path / "front.log") as front:
        workers = Workers(
            kafka_broker,
            tmp_path,
            topic,
            group,
            prefix,
            clickhouse=front.url,
            database="outage",
            budgets=BUDGETS,
        )
        try:
            w1, w2 = workers.start("w1"), workers.start("w2")
            for w in (w1, w2):
                workers.wait_assigned(w)
            asyncio.run(produce(bootstrap, topic, first))
            wait_caught_up(kafka_broker, group, topic, workers, alive=[w1, w2])
            pending = list(trickle)
            wait_checkpointed(front.url, group, bootstrap, topic, pending)
            sent = first + trickle[: len(trickle) - len(pending)]
            wait_caught_up(kafka_broker, group, topic, workers, alive=[w1, w2])

            front.pause()
            survivor_log_at_kill = len(workers.log_of(w1))
            w2.send_signal(signal.SIGKILL)
            w2.wait(30)
            # the group notices after the session timeout (6 s): w1 gets every partition
            wait_members(bootstrap, group, 1)
            time.sleep(3)  # ClickHouse stays down for a while after the assignment
            front.resume()

            asyncio.run(produce(bootstrap, topic, last))
            sent += last
            drain_and_stop(kafka_broker, group, topic, workers, w1, timeout_s=30)
        finally:
            workers.stop_all()

        taken = {a["partition"] for a in assignments(workers.log_of(w1)[survivor_log_at_kill:])}
        assert taken == set(range(PARTITIONS)), workers.logs()
        got = workers.report()["tenants"]
        for tenant, exp in expected_totals(sent).items():
            assert got[tenant]["calls"] == exp["calls"], tenant
