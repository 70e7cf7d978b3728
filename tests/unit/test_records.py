"""DLQ records: a rejected message of any size the broker accepts yields a record the
producer can send (cut to a prefix when needed, marked), small ones go unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.kafka.records import (
    DLQ_MAX_RECORD_BYTES,
    DLQ_RECORD_MARGIN,
    Record,
    dlq_records,
)

AIOKAFKA_MAX_REQUEST_SIZE = 1_048_576  # AIOKafkaProducer's default max_request_size
BROKER_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's default message.max.bytes


def rejected(*raws: bytes, tenant: str = "acme", detail: str = "not JSON") -> dict[str, Any]:
    n = len(raws)
    return {
        "reason": ["malformed"] * n,
        "detail": [detail] * n,
        "tenant_id": [tenant] * n,
        "kafka_partition": np.full(n, 7, np.int32),
        "kafka_offset": np.arange(123_456_789, 123_456_789 + n, dtype=np.int64),
        "raw": list(raws),
    }


def size(rec: Record) -> int:
    """Value + key + every header's name and value, in bytes."""
    return (
        len(rec.value) + len(rec.key or b"") + sum(len(k.encode()) + len(v) for k, v in rec.headers)
    )


def batch_size(rec: Record) -> int:
    """Bytes of the record batch aiokafka builds for ``rec`` alone (transactional)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=1,
        producer_id=1,
        producer_epoch=0,
        base_sequence=0,
        batch_size=16_384,
    )
    assert builder.append(0, None, rec.key, rec.value, rec.headers) is not None
    return len(builder.build())


def test_default_limit_fits_the_producer_and_broker_defaults() -> None:
    assert DLQ_MAX_RECORD_BYTES <= AIOKAFKA_MAX_REQUEST_SIZE - DLQ_RECORD_MARGIN


def test_a_message_near_the_broker_limit_is_cut_to_fit() -> None:
    raw = bytes(range(256)) * (1_048_400 // 256) + b"{" * (1_048_400 % 256)
    assert len(raw) == 1_048_400
    [rec] = dlq_records(rejected(raw), "llm.calls", "pre.")
    headers = dict(rec.headers)
    assert rec.topic == "pre.llm.calls.dlq"
    assert size(rec) < AIOKAFKA_MAX_REQUEST_SIZE - DLQ_RECORD_MARGIN
    assert size(rec) <= DLQ_MAX_RECORD_BYTES - DLQ_RECORD_MARGIN
    assert headers["truncated"] == b"1"
    assert headers["original_size"] == b"1048400"
    assert raw.startswith(rec.value) and len(rec.value) > 990_000
    # the source position and reason still travel with it
    assert headers["reason"] == b"malformed" and headers["source_offset"] == b"123456789"
    assert headers["source_topic"] == b"llm.calls" and headers["source_partition"] == b"7"
    # what the producer checks (its own estimate) and what the broker gets (the batch)
    estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes(rec.key, rec.value, rec.headers)
    assert estimate <= DLQ_MAX_RECORD_BYTES < AIOKAFKA_MAX_REQUEST_SIZE
    assert batch_size(rec) <= DLQ_MAX_RECORD_BYTES < BROKER_MAX_MESSAGE_BYTES


def test_a_small_message_goes_unchanged() -> None:
    raw = b'{"event_id": "e1", "tenant_id": "acme", "ts": "yesterday"}'
    [rec] = dlq_records(rejected(raw), "llm.calls")
    headers = dict(rec.headers)
    assert rec.value == raw and rec.key == b"acme"
    assert "truncated" not in headers and "original_size" not in headers
    assert list(headers) == [
        "reason",
        "detail",
        "tenant_id",
        "source_topic",
        "source_partition",
        "source_offset",
    ]


def test_the_cut_is_exact_at_the_limit() -> None:
    limit = 20_000
    [probe] = dlq_records(rejected(b""), "llm.calls", max_record_bytes=limit)
    fits = limit - DLQ_RECORD_MARGIN - size(probe)  # the longest value sent whole
    raw = b"x" * (fits + 1)
    whole, cut = dlq_records(rejected(raw[:fits], raw), "llm.calls", max_record_bytes=limit)
    assert whole.value == raw[:fits] and "truncated" not in dict(whole.headers)
    assert size(whole) == limit - DLQ_RECORD_MARGIN
    assert dict(cut.headers)["original_size"] == str(fits + 1).encode()
    assert raw.startswith(cut.value) and size(cut) <= limit - DLQ_RECORD_MARGIN
    assert len(cut.value) == fits - len(b"truncated1original_size") - len(str(fits + 1))


@pytest.mark.parametrize("limit", [8_192, 65_536, 1_000_000])
def test_any_limit_holds_whatever_the_key_and_headers(limit: int) -> None:
    # the longest ids and detail the decoder lets through, in 4-byte UTF-8
    recs = dlq_records(
        rejected(b"\xff" * 2_000_000, b"", tenant="\U0001f600" * 128, detail="\U0001f600" * 500),
        "llm.calls",
        max_record_bytes=limit,
    )
    for rec in recs:
        assert size(rec) <= limit - DLQ_RECORD_MARGIN
        assert batch_size(rec) <= limit
    assert dict(recs[0].headers)["original_size"] == b"2000000"
    assert "truncated" not in dict(recs[1].headers)


def test_a_limit_too_small_for_the_headers_is_refused() -> None:
    with pytest.raises(ValueError, match="max_record_bytes"):
        dlq_records(rejected(b"x" * 10_000), "llm.calls", max_record_bytes=600)


def test_the_engine_rejects_a_huge_message_that_then_fits_the_dlq() -> None:
    raw = b'{"event_id": "big", "tenant_id": "acme", "pad": "' + b"a" * 1_048_300 + b"}"
    engine = Engine(EngineConfig(prices=PriceTable()))
    out = engine.process(
        [raw],
        source="llm.calls",
        partitions=np.zeros(1, np.int32),
        offsets=np.array([42], np.int64),
    )
    assert out.rejected["raw"] == [raw]  # whole, for llm_rejected
    [rec] = dlq_records(out.rejected, "llm.calls")
    assert raw.startswith(rec.value) and dict(rec.headers)["truncated"] == b"1"
    assert dict(rec.headers)["original_size"] == str(len(raw)).encode()
    assert dict(rec.headers)["source_offset"] == b"42"
    assert size(rec) < AIOKAFKA_MAX_REQUEST_SIZE - DLQ_RECORD_MARGIN
