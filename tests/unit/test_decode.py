"""Decoder: valid events become exact columns; every bad class is rejected with its reason
while the rest of the batch goes through."""

import base64
import json
from datetime import datetime

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.schemas import read_text
from llmops_stream.stream.core.decode import MAX_MESSAGE_BYTES, REJECT_REASONS, decode_batch


def event(i: int = 0, **over: object) -> dict:
    e = {
        "event_id": f"e{i}",
        "ts": "2026-11-23T10:00:00.250+02:00",
        "tenant_id": "acme",
        "model": "gpt-4o-mini",
        "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_tokens": 40},
    }
    e.update(over)
    return e


def enc(e: dict) -> bytes:
    return orjson.dumps(e)


def test_schema_examples_decode() -> None:
    schema = json.loads(read_text("call_event_v1.schema.json"))
    batch, rej = decode_batch([enc(x) for x in schema["examples"]])
    assert len(rej) == 0
    assert batch.n == len(schema["examples"])
    assert set(schema["required"]) == {"event_id", "ts", "tenant_id", "model", "usage"}


def test_columns_exact() -> None:
    emb = np.arange(4, dtype="<f4")
    e = event(
        1,
        app="bot",
        status="cache_hit",
        latency_ms=12.5,
        route={"tier": "small", "escalated": True},
        embedding=base64.b64encode(emb.tobytes()).decode(),
        embedding_model="m",
        retrieval={
            "index_version": "ix",
            "chunks": [
                {"embedded_at": 1795420000000, "source_updated_at": "2026-11-23T00:00:00Z"},
                {"embedded_at": "2026-11-01T00:00:00+00:00"},
            ],
        },
        extra_field={"kept": "ignored"},
    )
    b, rej = decode_batch([enc(e), enc(event(2, ts=1795428000123))])
    assert len(rej) == 0 and b.n == 2
    expected = int(datetime.fromisoformat("2026-11-23T10:00:00.250+02:00").timestamp() * 1000)
    assert b.ts_ms.tolist() == [expected, 1795428000123]
    assert b.input_tokens.tolist() == [100, 100]
    assert b.cache_read_tokens.tolist() == [40, 40]
    assert b.cache_write_tokens.tolist() == [0, 0]
    assert b.status.tolist() == [4, 0]
    assert b.route_escalated.tolist() == [True, False]
    assert b.app.tolist() == ["bot", ""]
    assert np.isnan(b.latency_ms[1]) and b.latency_ms[0] == 12.5
    assert np.frombuffer(b.embedding[0], "<f4").tolist() == emb.tolist()
    assert b.embedding[1] is None
    assert b.chunk_offsets.tolist() == [0, 2, 2]
    assert b.chunk_embedded_at_ms[0] == 1795420000000
    assert b.chunk_source_updated_at_ms[1] == np.iinfo(np.int64).min
    assert b.index_version.tolist() == ["ix", ""]


def test_json_array_embedding_equals_base64() -> None:
    v = [0.5, -1.25, 3.0]
    a, _ = decode_batch([enc(event(embedding=v))])
    b64 = base64.b64encode(np.array(v, "<f4").tobytes()).decode()
    b, _ = decode_batch([enc(event(embedding=b64))])
    assert a.embedding[0] == b.embedding[0]


BAD = [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"event_id": "\xff\xfe"}', "invalid_utf8"),
    (enc({k: v for k, v in event().items() if k != "tenant_id"}), "missing_field"),
    (enc(event(usage={"input_tokens": "100", "output_tokens": 1})), "wrong_type"),
    (enc(event(usage={"input_tokens": -1, "output_tokens": 1})), "negative_tokens"),
    (
        enc(
            event(
                usage={
                    "input_tokens": 10,
                    "output_tokens": 1,
                    "cache_read_tokens": 8,
                    "cache_write_tokens": 3,
                }
            )
        ),
        "inconsistent_tokens",
    ),
    (
        enc(event(usage={"input_tokens": 10, "output_tokens": 1, "reasoning_tokens": 2})),
        "inconsistent_tokens",
    ),
    (enc(event(embedding="!!notbase64!!")), "bad_embedding"),
    (enc(event(embedding=base64.b64encode(b"abcde").decode())), "bad_embedding"),
    (
        enc(event(embedding=base64.b64encode(np.array([1, np.nan], "<f4").tobytes()).decode())),
        "embedding_not_finite",
    ),
    (enc(event(embedding=[1.0, 1e39])), "embedding_not_finite"),
    (b'{"event_id":"x","pad":"' + b"a" * (MAX_MESSAGE_BYTES + 1) + b'"}', "too_large"),
    (enc(event(ts="2026-11-23T10:00:00")), "bad_timestamp"),
    (enc(event(ts=1_795_428_000)), "bad_timestamp"),  # seconds, not ms
    (enc(event(ts="2200-01-01T00:00:00Z")), "bad_timestamp"),
    (enc(event(retrieval={"chunks": [{"embedded_at": 12}]})), "bad_timestamp"),
    (
        enc(
            event(
                retrieval={
                    "chunks": [{"embedded_at": 1795420000000, "source_updated_at": "yesterday"}]
                }
            )
        ),
        "bad_timestamp",
    ),
    (enc(event(status="weird")), "invalid_value"),
    (enc(event(ts=True)), "wrong_type"),
    (enc(event(ts=1.5e12)), "wrong_type"),
    (enc(event(retrieval={"chunks": [{"embedded_at": [1]}]})), "wrong_type"),
    (enc(event(event_id="x" * 129)), "invalid_value"),
]


def test_every_bad_class_rejected_rest_of_batch_kept() -> None:
    good = [enc(event(i)) for i in range(5)]
    messages = []
    for i, (raw, _) in enumerate(BAD):
        messages += [raw, good[i % 5]]
    b, rej = decode_batch(messages)
    assert b.n == len(BAD)
    got = dict(zip(rej.index, rej.reason, strict=True))
    assert got == {2 * i: reason for i, (_, reason) in enumerate(BAD)}
    assert set(rej.reason) <= set(REJECT_REASONS)
    assert b.src_index.tolist() == [2 * i + 1 for i in range(len(BAD))]
    # the tenant is reported when readable
    tenants = dict(zip(rej.reason, rej.tenant_id, strict=False))
    assert tenants["negative_tokens"] == "acme"
    assert tenants["invalid_json"] == ""


def test_empty_and_single() -> None:
    b, rej = decode_batch([])
    assert b.n == 0 and len(rej) == 0 and b.chunk_offsets.tolist() == [0]
    b, rej = decode_batch([enc(event())])
    assert b.n == 1 and b.event_id.tolist() == ["e0"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**12),
            st.integers(0, 10**12),
            st.integers(0, 10**12),
            st.integers(1_000_000_000_000, 4_000_000_000_000),
        ),
        max_size=30,
    )
)
def test_tokens_roundtrip_and_consistency(rows: list[tuple[int, int, int, int]]) -> None:
    msgs = [
        enc(event(i, ts=ts, usage={"input_tokens": a, "output_tokens": b, "cache_read_tokens": c}))
        for i, (a, b, c, ts) in enumerate(rows)
    ]
    batch, rej = decode_batch(msgs)
    ok = [r for r in rows if r[2] <= r[0]]
    assert batch.n == len(ok)
    assert batch.input_tokens.tolist() == [r[0] for r in ok]
    assert batch.ts_ms.tolist() == [r[3] for r in ok]
    assert set(rej.reason) <= {"inconsistent_tokens"}


@pytest.mark.parametrize("text", ["2026-11-23T10:00:00.123456Z", "2026-01-01T00:00:00.999+05:30"])
def test_microsecond_times_floor_to_ms(text: str) -> None:
    b, _ = decode_batch([enc(event(ts=text))])
    dt = datetime.fromisoformat(text)
    assert b.ts_ms[0] == int(dt.timestamp()) * 1000 + dt.microsecond // 1000
