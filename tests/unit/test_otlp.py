"""OTel GenAI spans → call events (SPEC §3), on spans made by the OpenTelemetry SDK and
encoded by its OTLP encoder, in both Collector encodings."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from otlp_spans import CURRENT, LEGACY, build_spans, event_id_of, otlp_json, sdk_request

from llmops_stream.stream.core.decode import REJECT_REASONS, decode_batch
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.otlp import (
    OTLP_ENCODINGS,
    SpanEvents,
    SpanReject,
    spans_to_events,
)
from llmops_stream.stream.core.pricing import PriceTable

CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 30,
}


def convert(request: ExportTraceServiceRequest, encoding: str, **kw: Any) -> SpanEvents:
    data = request.SerializeToString() if encoding == "otlp_proto" else otlp_json(request)
    return spans_to_events(data, encoding, **kw)


def events_of(result: SpanEvents) -> list[dict[str, Any]]:
    return [orjson.loads(e) for e in result.events]


def both(request: ExportTraceServiceRequest, **kw: Any) -> SpanEvents:
    """The conversion in both encodings, which must agree byte for byte."""
    proto, js = (convert(request, enc, **kw) for enc in OTLP_ENCODINGS)
    assert proto.events == js.events
    assert proto.tenants == js.tenants
    assert proto.skipped == js.skipped
    assert [r[:4] for r in proto.rejected] == [r[:4] for r in js.rejected]
    return proto


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
@pytest.mark.parametrize("tenant_in_span", [False, True], ids=["resource", "span"])
def test_sdk_spans_become_the_equivalent_events(legacy: bool, tenant_in_span: bool) -> None:
    batch = build_spans(
        60, non_genai=3, legacy=legacy, tenant_in_span=tenant_in_span, error_every=7, seed=3
    )
    for encoding in OTLP_ENCODINGS:
        got = spans_to_events(batch.encode(encoding), encoding)
        assert got.rejected == []
        assert got.skipped == batch.skipped == 6  # 3 non-GenAI spans of each of 2 tenants
        assert events_of(got) == [orjson.loads(e) for e in batch.events]
        assert got.events == batch.events  # the same bytes, too (a relay test compares them)
        assert got.tenants == batch.tenants
    assert both(batch.request).events  # and the two encodings agree byte for byte


def test_every_mapped_field() -> None:
    attrs = {
        **CHAT,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.cache_read.input_tokens": 40,
        "gen_ai.usage.cache_write.input_tokens": 20,
        "gen_ai.usage.reasoning.output_tokens": 10,
        "gen_ai.prompt.name": "triage",
        "gen_ai.prompt.version": "7",
    }
    request = sdk_request([attrs], resource={"service.name": "helpdesk", "tenant.id": "acme"})
    (event,) = events_of(both(request))
    assert event == {
        "event_id": event_id_of(request, 0),
        "ts": 1_748_736_000_000,
        "tenant_id": "acme",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini-2024-07-18",
        "prompt_id": "triage",
        "prompt_version": "7",
        "usage": {
            "input_tokens": 120,
            "output_tokens": 30,
            "cache_read_tokens": 40,
            "cache_write_tokens": 20,
            "reasoning_tokens": 10,
        },
        "schema_version": 1,
        "app": "helpdesk",
        "latency_ms": 250.0,
    }
    assert len(event["event_id"]) == 48 and int(event["event_id"], 16)


def test_legacy_names_map_to_the_same_fields() -> None:
    current = {
        **CHAT,
        CURRENT["cache_read"]: 5,
        CURRENT["cache_write"]: 6,
        CURRENT["reasoning"]: 7,
    }
    legacy = {
        "gen_ai.operation.name": "chat",
        LEGACY["provider"]: "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        LEGACY["input"]: 120,
        LEGACY["output"]: 30,
        LEGACY["cache_read"]: 5,
        LEGACY["cache_write"]: 6,
        LEGACY["reasoning"]: 7,
    }
    alt = {**current}
    alt["gen_ai.usage.cache_creation.input_tokens"] = alt.pop(CURRENT["cache_write"])
    a, b, c = (events_of(both(sdk_request([x])))[0] for x in (current, legacy, alt))
    a.pop("event_id"), b.pop("event_id"), c.pop("event_id")
    assert a == b == c
    assert a["usage"]["cache_write_tokens"] == 6 and a["provider"] == "openai"


PREFERENCES = [  # (field path, better name and value, worse name and value)
    (("usage", "input_tokens"), ("gen_ai.usage.input_tokens", 100),
     ("gen_ai.usage.prompt_tokens", 999)),
    (("provider",), ("gen_ai.provider.name", "anthropic"), ("gen_ai.system", "legacy")),
    (("usage", "cache_write_tokens"), ("gen_ai.usage.cache_write.input_tokens", 3),
     ("gen_ai.usage.cache_creation.input_tokens", 8)),
    (("usage", "cache_write_tokens"), ("gen_ai.usage.cache_write.input_tokens", 3),
     ("gen_ai.usage.cache_creation_input_tokens", 9)),
    (("usage", "cache_write_tokens"), ("gen_ai.usage.cache_creation.input_tokens", 4),
     ("gen_ai.usage.cache_creation_input_tokens", 9)),
]  # fmt: skip


@pytest.mark.parametrize("better_first", [True, False])
@pytest.mark.parametrize(("path", "better", "worse"), PREFERENCES)
def test_preferred_name_wins_in_any_order(
    path: tuple[str, ...], better: tuple[str, Any], worse: tuple[str, Any], better_first: bool
) -> None:
    pair = [better, worse] if better_first else [worse, better]
    attrs = {k: v for k, v in CHAT.items() if k not in (better[0], worse[0])}
    attrs.update(pair)  # in this order
    (event,) = events_of(both(sdk_request([attrs])))
    value = event
    for key in path:
        value = value[key]
    assert value == better[1]


def test_all_three_cache_write_names_in_any_order() -> None:
    names = [
        ("gen_ai.usage.cache_creation_input_tokens", 9),
        ("gen_ai.usage.cache_write.input_tokens", 3),
        ("gen_ai.usage.cache_creation.input_tokens", 8),
    ]
    for order in (names, names[::-1], names[1:] + names[:1], names[2:] + names[:2]):
        (event,) = events_of(both(sdk_request([{**CHAT, **dict(order)}])))
        assert event["usage"]["cache_write_tokens"] == 3


def test_operations_that_are_calls_and_skipped_spans() -> None:
    ops = ["chat", "text_completion", "generate_content", "embeddings", "execute_tool",
           "invoke_agent", "create_agent", None]  # fmt: skip
    spans = [{**CHAT, "gen_ai.operation.name": op} if op else {"http.route": "/"} for op in ops]
    got = both(sdk_request(spans))
    assert len(got.events) == 3 and got.skipped == 5 and got.rejected == []
    assert [e["ts"] for e in events_of(got)] == [1_748_736_000_000 + i for i in range(3)]


def test_tenant_from_span_beats_resource_and_custom_attribute() -> None:
    request = sdk_request(
        [{**CHAT, "tenant.id": "from-span"}, CHAT, {**CHAT, "org.id": "org-7"}],
        resource={"service.name": "bot", "tenant.id": "from-resource", "org.id": "org-res"},
    )
    got = both(request)
    assert got.tenants == ["from-span", "from-resource", "from-resource"]
    assert [e["tenant_id"] for e in events_of(got)] == got.tenants
    custom = both(request, tenant_attribute="org.id")
    assert custom.tenants == ["org-res", "org-res", "org-7"]


def test_missing_tenant_is_rejected_missing_field_with_the_span_as_raw() -> None:
    request = sdk_request([CHAT, {"http.route": "/"}], resource={"service.name": "bot"})
    for encoding in OTLP_ENCODINGS:
        got = convert(request, encoding)
        assert got.events == [] and got.tenants == [] and got.skipped == 1
        (rej,) = got.rejected
        assert rej.reason == "missing_field" and rej.reason in REJECT_REASONS
        assert "tenant.id" in rej.detail
        assert rej.tenant_id == "" and rej.event_id == event_id_of(request, 0)
        span = orjson.loads(rej.raw)  # the span, as OTLP JSON with hex ids
        assert span["traceId"] + span["spanId"] == rej.event_id
        assert {a["key"] for a in span["attributes"]} >= set(CHAT)
    # the same spans name a tenant with another attribute
    assert convert(request, "otlp_json", tenant_attribute="service.name").tenants == ["bot"]


def test_integer_tenant_is_text_and_other_types_are_wrong_type() -> None:
    request = sdk_request([{**CHAT, "tenant.id": 42}, {**CHAT, "tenant.id": True}])
    got = both(request)
    assert got.tenants == ["42"]
    (rej,) = got.rejected
    assert rej.reason == "wrong_type" and rej.event_id == event_id_of(request, 1)


def test_error_status_and_error_type_mean_status_error() -> None:
    spans = [CHAT, {**CHAT, "error.type": "RateLimitError"}, CHAT, {**CHAT, "error.type": "500"}]
    got = events_of(both(sdk_request(spans, error=[2])))
    assert [e.get("status") for e in got] == [None, "error", "error", "error"]


def test_a_string_token_count_is_wrong_type_after_decode() -> None:
    spans = [
        CHAT,
        {**CHAT, "gen_ai.usage.input_tokens": "120"},
        {**CHAT, "gen_ai.usage.output_tokens": 2.5},
        {k: v for k, v in CHAT.items() if k != "gen_ai.request.model"},
        {k: v for k, v in CHAT.items() if k != "gen_ai.usage.output_tokens"},
    ]
    got = both(sdk_request(spans))
    assert len(got.events) == 5  # the conversion leaves judging values to the decoder
    assert events_of(got)[1]["usage"]["input_tokens"] == "120"
    batch, rejected = decode_batch(got.events)
    assert batch.n == 1
    assert dict(zip(rejected.index, rejected.reason, strict=True)) == {
        1: "wrong_type",
        2: "wrong_type",
        3: "missing_field",
        4: "missing_field",
    }
    assert rejected.tenant_id == ["acme"] * 4


@pytest.mark.parametrize("encoding", OTLP_ENCODINGS)
@pytest.mark.parametrize(
    "record",
    [b"\xff\x00garbage", b"not a request", b'{"resourceSpans": 5}', b"[1, 2]", b"{"],
)
def test_undecodable_record_is_invalid_otlp(encoding: str, record: bytes) -> None:
    got = spans_to_events(record, encoding)
    assert got.events == [] and got.skipped == 0
    (rej,) = got.rejected
    assert rej == SpanReject("invalid_otlp", rej.detail, "", "", record)
    assert encoding in rej.detail and "invalid_otlp" in REJECT_REASONS


def test_empty_request() -> None:
    empty = ExportTraceServiceRequest()
    assert empty.SerializeToString() == b"" and otlp_json(empty) == b"{}"
    for encoding in OTLP_ENCODINGS:
        assert convert(empty, encoding) == SpanEvents()
    assert spans_to_events(b'{"resourceSpans": []}', "otlp_json") == SpanEvents()


def test_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="otlp_proto, otlp_json"):
        spans_to_events(b"", "otlp")


def json_span(**over: Any) -> bytes:
    span = {
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "startTimeUnixNano": 1_748_736_000_123_456_789,  # a number, not a string
        "endTimeUnixNano": "1748736001123456789",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": 10}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "4"}},
            {"key": "gen_ai.prompt.version", "value": {"intValue": "3"}},
            {"key": "gen_ai.prompt", "value": {"stringValue": "x" * 5000}},  # unmapped
        ],
        "status": {"code": "STATUS_CODE_ERROR"},
        **over,
    }
    resource = {"attributes": [{"key": "tenant.id", "value": {"stringValue": "t1"}}]}
    return orjson.dumps({"resourceSpans": [{"resource": resource,
                                            "scopeSpans": [{"spans": [span]}]}]})  # fmt: skip


def test_otlp_json_rules() -> None:
    (event,) = events_of(spans_to_events(json_span(), "otlp_json"))
    assert event == {
        "event_id": "5b8efff798038103d269b633813fc60ceee19b7ec3c1b174",  # hex, lowercased
        "ts": 1_748_736_000_123,
        "tenant_id": "t1",
        "model": "gpt-4o",
        "usage": {"input_tokens": 10, "output_tokens": 4},
        "prompt_version": "3",
        "schema_version": 1,
        "latency_ms": 1000.0,
        "status": "error",  # enum given by name
    }


@pytest.mark.parametrize(
    ("over", "detail"),
    [
        ({"traceId": "zz" * 16}, "16/8 bytes"),
        ({"spanId": "abcd"}, "16/8 bytes"),
        ({"traceId": "0" * 32}, "zeroes"),
        ({"startTimeUnixNano": "soon"}, "64-bit"),
        ({"endTimeUnixNano": str(2**64)}, "64-bit"),
    ],
)
def test_inference_span_breaking_otlp_rules_is_invalid_otlp(
    over: dict[str, Any], detail: str
) -> None:
    record = json_span(**over)
    (rej,) = spans_to_events(record, "otlp_json").rejected
    assert rej.reason == "invalid_otlp" and detail in rej.detail
    assert (
        orjson.loads(rej.raw)
        == orjson.loads(record)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    )


def test_span_without_end_has_no_latency() -> None:
    (event,) = events_of(spans_to_events(json_span(endTimeUnixNano="0"), "otlp_json"))
    assert "latency_ms" not in event


def test_events_price_as_the_equivalent_json_events() -> None:
    """Through the engine, converted spans cost and count as the events they stand for."""
    batch = build_spans(300, tenants=("a", "b", "c"), seed=9, error_every=11)
    converted = spans_to_events(batch.encode("otlp_proto"), "otlp_proto").events
    outs = [Engine(EngineConfig(prices=PriceTable())).process(m) for m in (converted, batch.events)]
    assert outs[0].stats == outs[1].stats and outs[0].stats["valid"] == 300
    for col in ("event_id", "tenant_id", "model", "status", "input_tokens", "cost_usd"):
        assert list(outs[0].calls[col]) == list(outs[1].calls[col]), col
    assert np.sum(outs[0].calls["cost_usd"]) > 0


def test_an_attribute_without_value_is_absent() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    request = sdk_request([{k: v for k, v in CHAT.items() if k != "gen_ai.request.model"}])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.append(KeyValue(key="gen_ai.request.model", value=AnyValue()))
    span.attributes.append(KeyValue(key="gen_ai.usage.reasoning.output_tokens"))
    (event,) = events_of(both(request))
    assert "model" not in event and "reasoning_tokens" not in event["usage"]
    assert decode_batch([orjson.dumps(event)])[1].reason == ["missing_field"]


@pytest.mark.parametrize(
    "record",
    [
        b'{"resourceSpans":[{"x":' + b"[" * 5000 + b"]" * 5000 + b"}]}",
        b'{"resourceSpans":[{"resource":{"attributes":[{"key":"a","value":'
        + b'{"arrayValue":{"values":[' * 3000
        + b"]}}" * 3000
        + b"}]}}]}",
    ],
    ids=["unknown-field", "attribute-value"],
)
def test_a_request_nested_too_deeply_is_rejected_not_raised(record: bytes) -> None:
    out = spans_to_events(record, "otlp_json")
    assert out.events == [] and [r.reason for r in out.rejected] == ["invalid_otlp"]
    assert "recursion" in out.rejected[0].detail
