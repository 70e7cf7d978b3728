"""A tenant refused at its hard cap sends nothing more; the worker's clock follows the wall
clock on its idle partition, so its 1 h window slides and the compacted state topic says
``ok`` again within two flush intervals plus 1 s of the moment the spend left the window."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from workers import PARTITIONS, Workers, produce

from llmops_stream.stream.dev.kafka_broker import KafkaBroker

pytestmark = pytest.mark.integration

MIN = 60_000
FLUSH_S = 0.2  # LLMOPS_FLUSH_INTERVAL_MS of the Workers helper


async def watch(
    bootstrap: str, topics: list[str], until: float, seen: list[tuple[float, str, Any]]
) -> None:
    """Append (arrival wall time, topic, value) of every committed record until ``until``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while time.time() < until:
            batches = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for tp, recs in batches.items():
                seen += [(now, tp.topic, orjson.loads(r.value)) for r in recs]
    finally:
        await consumer.stop()


def test_refused_tenant_is_released_when_its_window_slides(
    kafka_broker: KafkaBroker, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    budgets = {"tenants": {"acme": [{"id": "h", "limit_usd": 1.0, "window": "1h",
                                     "soft": [0.5], "hard": 1.0}]}}  # fmt: skip
    w = Workers(kafka_broker, tmp_path, topic, group, prefix, budgets=budgets)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"m": {"input": 0.2, "output": 0.0}}}))
    w.env["LLMOPS_PRICES"] = str(prices)
    w.env["LLMOPS_CLOCK_IDLE_MS"] = "1000"  # the default: the wall clock moves the partition
    proc = w.start()
    try:
        w.wait_assigned(proc)
        # Calls dated so that their minute leaves the 1 h window at a minute boundary
        # 20-80 s from now: until then acme is over its cap; then nothing holds it.
        release_ms = math.ceil((time.time() * 1000 + 20_000) / MIN) * MIN
        ts = release_ms - 60 * MIN + 1000
        calls = [
            orjson.dumps({"event_id": f"a{i}", "ts": ts + i, "tenant_id": "acme", "model": "m",
                          "usage": {"input_tokens": 1_000_000, "output_tokens": 0}})
            for i in range(12)
        ]  # fmt: skip
        asyncio.run(produce(kafka_broker.bootstrap_servers, topic, calls))
        seen: list[tuple[float, str, Any]] = []
        state_topic, alert_topic = prefix + "llm.budget.state", prefix + "llm.alerts.budget"
        deadline = release_ms / 1000 + 2 * FLUSH_S + 1.0
        asyncio.run(
            watch(kafka_broker.bootstrap_servers, [state_topic, alert_topic], deadline + 3, seen)
        )
    finally:
        w.stop_all()
    states = [(t, v) for t, topic_, v in seen if topic_ == state_topic]
    alerts = [v for _, topic_, v in seen if topic_ == alert_topic]
    assert states and states[0][1]["status"] == "exceeded", w.logs()
    assert all(v["status"] == "exceeded" for t, v in states if t < release_ms / 1000 - 0.5)
    released = [t for t, v in states if v["status"] != "exceeded"]
    assert released, f"acme was never released: {states[-1]}\n{w.logs()}"
    assert released[0] <= deadline, (released[0] - release_ms / 1000, w.logs())
    final = states[-1][1]
    assert final["status"] == "ok" and final["budgets"][0]["spend_usd"] == 0.0
    fired = [(a["severity"], a["status"]) for a in alerts]
    assert fired.count(("critical", "firing")) == 1
    assert fired.count(("critical", "resolved")) == 1
    ids = {a["alert_id"] for a in alerts if a["severity"] == "critical"}
    assert len(ids) == 1
