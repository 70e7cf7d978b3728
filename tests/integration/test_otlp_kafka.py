"""OTel GenAI spans through the real broker: spans made by the OpenTelemetry SDK and encoded
by its OTLP encoder, produced to an ``otlp_spans`` topic as the Collector's Kafka exporter
writes them (one ``ExportTraceServiceRequest`` per record, no key), relayed by ``run
--otlp-topic`` into the calls topic keyed by tenant, and priced and stored by the same engine:
``report --json`` gives the totals of the equivalent JSON events, exactly. A Collector retry
(the same request twice) counts once; a record that is not OTLP and a span without a tenant
go to the DLQ with their reasons; nothing is published twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from expected import expected_totals
from otlp_spans import build_spans
from workers import (
    TOTAL_KEYS,
    Workers,
    committed_offsets,
    end_offsets,
    read_all,
)

from llmops_stream.stream.dev.kafka_broker import KafkaBroker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
def test_spans_from_kafka_give_the_totals_of_the_equivalent_json_events(
    kafka_broker: KafkaBroker, tmp_path: Path, unique_name: Callable[[str], str], encoding: str
) -> None:
    topic, group, prefix = unique_name("calls"), unique_name("g"), unique_name("out") + "."
    spans_topic = unique_name("otlp_spans")
    bootstrap = kafka_broker.bootstrap_servers
    batches = [
        build_spans(120, tenants=("acme", "globex", "initech"), seed=s, error_every=9)
        for s in range(4)
    ]
    # A span whose tenant attribute is missing: the tenant is read from the span here.
    no_tenant = build_spans(3, tenants=("acme",), seed=9, tenant_in_span=True,
                            tenant_attribute="customer")  # fmt: skip
    records = [b.encode(encoding) for b in batches]
    records.append(batches[1].encode(encoding))  # the Collector retried an export
    records.append(no_tenant.encode(encoding))
    records.append(b"\x00 not an OTLP request")
    w = Workers(kafka_broker, tmp_path, topic, group, prefix)
    w.env["LLMOPS_OTLP_TOPIC"] = spans_topic
    w.env["LLMOPS_OTLP_ENCODING"] = encoding
    proc = w.start()
    try:
        w.wait_assigned(proc)
        asyncio.run(produce_unkeyed(bootstrap, spans_topic, records))
        # the relay committed every span record, then the worker every relayed call (a
        # transactional input partition ends with a commit marker: the worker's committed
        # offset is one past its last record, not the high watermark)
        assert _wait(lambda: _caught_up(bootstrap, f"{group}.otlp", spans_topic), 180), w.logs()
        assert _wait(lambda: _calls_done(bootstrap, group, topic), 180), w.logs()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, w.logs()
        report = w.report()
    finally:
        w.stop_all()

    # Relayed calls are keyed by tenant, in one transaction per span record batch: every
    # call exactly once on the calls topic.
    calls = [r for recs in asyncio.run(read_all(bootstrap, topic)).values() for r in recs]
    relayed = Counter(r.value for r in calls)
    sent = Counter([e for b in batches for e in b.events] + batches[1].events)
    assert (relayed - sent, sent - relayed) == (Counter(), Counter()), (
        f"{sum((relayed - sent).values())} relayed too often, "
        f"{sum((sent - relayed).values())} missing, of {sum(sent.values())}"
    )
    events = [e for b in batches for e in b.events]
    want = expected_totals(events)
    assert all(r.key is not None and r.key.decode() in want for r in calls)
    got = report["tenants"]
    assert set(got) == set(want)
    for tenant, exp in want.items():
        for key in TOTAL_KEYS:
            assert got[tenant][key] == exp[key], (tenant, key)
        assert got[tenant]["cost_usd"] == pytest.approx(exp["cost_usd"], rel=1e-9, abs=1e-12)
    # the retried request: each of its calls once more, counted as a duplicate only
    dup = {t: 0 for t in want}
    for t in batches[1].tenants:
        dup[t] += 1
    assert {t: got[t]["duplicates"] for t in want} == dup

    dlq = [r for recs in asyncio.run(read_all(bootstrap, prefix + "llm.calls.dlq")).values()
           for r in recs]  # fmt: skip
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dlq)
    assert reasons == ["invalid_otlp"] + ["missing_field"] * 3
    assert all(dict(r.headers)["source_topic"].decode() == spans_topic for r in dlq)


async def produce_unkeyed(bootstrap: str, topic: str, records: list[bytes]) -> None:
    """As the Collector's Kafka exporter: no key, so requests spread over partitions."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(records):
            await producer.send_and_wait(topic, value, partition=i % 4)
    finally:
        await producer.stop()


def _caught_up(bootstrap: str, group: str, topic: str) -> bool:
    ends = asyncio.run(end_offsets(bootstrap, topic))
    done = asyncio.run(committed_offsets(bootstrap, group, topic))
    return all(done.get(p, 0) >= end for p, end in ends.items())


def _calls_done(bootstrap: str, group: str, topic: str) -> bool:
    last = {
        p: recs[-1].offset + 1
        for p, recs in asyncio.run(read_all(bootstrap, topic)).items()
        if recs
    }
    done = asyncio.run(committed_offsets(bootstrap, group, topic))
    return bool(last) and all(done.get(p, 0) >= end for p, end in last.items())


def _wait(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False
