"""OTel GenAI span input against JSON call events, on the same calls, in one process run.

The span path is what ``run --otlp-topic`` and ``replay --format otlp-json`` do: each
``ExportTraceServiceRequest`` record is converted (``stream/core/otlp.py``) and its events
go through the engine in micro-batches. The JSON-event path is the engine alone on those
very events (the calls as our producer would have sent them). Spans are made like an
instrumented app's: resource attributes of the SDK, about a dozen GenAI attributes per
inference span, and non-GenAI spans (HTTP handlers) beside them, which are skipped.

    python bench/otlp.py [--calls 200000] [--spans-per-request 500] [--repeat 3]

The last line printed is one JSON object: {"bench": "otlp", "events_per_s_json",
"events_per_s_otlp_proto", "events_per_s_otlp_json", "convert_per_s_otlp_proto",
"convert_per_s_otlp_json", "ratio_otlp_proto", "ratio_otlp_json"} (ratio = span path rate
/ JSON-event path rate).
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmops_stream.stream.core.engine import Engine, EngineConfig  # noqa: E402
from llmops_stream.stream.core.otlp import spans_to_events  # noqa: E402
from llmops_stream.stream.core.pricing import PriceTable  # noqa: E402

BATCH = 20_000
START_NS = 1_748_736_000_000 * 1_000_000  # 2025-06-01
MODELS = (("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-20241022"),
          ("openai", "gpt-4.1"), ("gcp.gemini", "gemini-2.0-flash"))  # fmt: skip


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    raise TypeError(value)


def make_requests(calls: int, per_request: int, seed: int) -> list[ExportTraceServiceRequest]:
    """``calls`` inference spans in requests of ``per_request``, one HTTP span per 4 calls,
    spread over 20 tenants (one resource each) and 4 models."""
    rng = random.Random(seed)
    requests = []
    done = 0
    while done < calls:
        n = min(per_request, calls - done)
        by_tenant: dict[int, list[Span]] = {}
        for i in range(done, done + n):
            provider, model = MODELS[i % len(MODELS)]
            inp = rng.randrange(50, 8000)
            attrs = [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.provider.name", provider),
                _kv("gen_ai.request.model", model),
                _kv("gen_ai.request.temperature", 0.3),
                _kv("gen_ai.request.max_tokens", 1024),
                _kv("server.address", "api.example.com"),
                _kv("server.port", 443),
                _kv("gen_ai.response.model", model + "-2025-01-01"),
                _kv("gen_ai.response.id", f"chatcmpl-{i:012d}"),
                KeyValue(
                    key="gen_ai.response.finish_reasons",
                    value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="stop")])),
                ),
                _kv("gen_ai.usage.input_tokens", inp),
                _kv("gen_ai.usage.output_tokens", rng.randrange(1, 900)),
            ]
            if i % 3 == 0:
                attrs.append(_kv("gen_ai.usage.cache_read.input_tokens", inp // 2))
            start = START_NS + i * 20_000_000
            trace_id = rng.getrandbits(128).to_bytes(16, "big")
            span = Span(
                trace_id=trace_id,
                span_id=rng.getrandbits(64).to_bytes(8, "big"),
                parent_span_id=rng.getrandbits(64).to_bytes(8, "big"),
                name=f"chat {model}",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start,
                end_time_unix_nano=start + rng.randrange(100_000_000, 5_000_000_000),
                attributes=attrs,
                status=Status(
                    code=Status.STATUS_CODE_ERROR if i % 50 == 0 else Status.STATUS_CODE_UNSET
                ),
            )
            spans = by_tenant.setdefault(i % 20, [])
            spans.append(span)
            if i % 4 == 0:  # the HTTP handler the call was made from
                http = Span(
                    trace_id=trace_id,
                    span_id=rng.getrandbits(64).to_bytes(8, "big"),
                    name="POST /chat",
                    kind=Span.SPAN_KIND_SERVER,
                    start_time_unix_nano=start - 1_000_000,
                    end_time_unix_nano=start + 6_000_000_000,
                    attributes=[_kv("http.request.method", "POST"), _kv("http.route", "/chat"),
                                _kv("http.response.status_code", 200)],
                )  # fmt: skip
                spans.append(http)
        resource_spans = []
        for tenant, spans in by_tenant.items():
            resource = [
                _kv("service.name", "support-bot"),
                _kv("tenant.id", f"tenant-{tenant:02d}"),
                _kv("deployment.environment.name", "prod"),
                _kv("telemetry.sdk.language", "python"),
                _kv("telemetry.sdk.name", "opentelemetry"),
                _kv("telemetry.sdk.version", "1.45.2"),
            ]
            resource_spans.append(
                ResourceSpans(
                    resource=Resource(attributes=resource),
                    scope_spans=[
                        ScopeSpans(
                            scope=InstrumentationScope(name="genai.instrumentation"), spans=spans
                        )
                    ],
                )
            )
        requests.append(ExportTraceServiceRequest(resource_spans=resource_spans))
        done += n
    return requests


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """The request as OTLP JSON lines are written (hex ids, enums as integers)."""
    doc = MessageToDict(request, use_integers_for_enums=True)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return orjson.dumps(doc)


def best_rate(n: int, fn: Callable[[], object], repeat: int) -> float:
    """Best events/s of ``repeat`` runs of ``fn`` over ``n`` events (collector on, as in
    production)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def run_events(messages: list[bytes], prices: PriceTable) -> None:
    engine = Engine(EngineConfig(prices=prices))
    for i in range(0, len(messages), BATCH):
        engine.process(messages[i : i + BATCH])


def run_spans(records: list[bytes], encoding: str, prices: PriceTable) -> None:
    """Convert each record and feed the engine batches of about BATCH events."""
    engine = Engine(EngineConfig(prices=prices))
    pending: list[bytes] = []
    for record in records:
        pending += spans_to_events(record, encoding).events
        if len(pending) >= BATCH:
            engine.process(pending)
            pending = []
    if pending:
        engine.process(pending)


def convert(records: list[bytes], encoding: str) -> None:
    for record in records:
        spans_to_events(record, encoding)


def _bind(fn: Callable[..., object], *args: object) -> Callable[[], object]:
    """``fn`` with its arguments fixed now (a loop's lambdas would all see its last ones)."""
    return lambda: fn(*args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--spans-per-request", dest="per_request", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    requests = make_requests(args.calls, args.per_request, seed=1)
    records = {
        "otlp_proto": [r.SerializeToString() for r in requests],
        "otlp_json": [otlp_json(r) for r in requests],
    }
    events = [e for rec in records["otlp_proto"] for e in spans_to_events(rec, "otlp_proto").events]
    assert len(events) == args.calls
    json_events = [
        e for rec in records["otlp_json"] for e in spans_to_events(rec, "otlp_json").events
    ]
    assert json_events == events, "both encodings must give the same events"
    prices = PriceTable()
    run_events(events[:BATCH], prices)  # compile / warm caches outside the timing

    n = len(events)
    results = {"json_events": best_rate(n, lambda: run_events(events, prices), args.repeat)}
    for enc, recs in records.items():
        results[f"convert_{enc}"] = best_rate(n, _bind(convert, recs, enc), args.repeat)
        results[enc] = best_rate(n, _bind(run_spans, recs, enc, prices), args.repeat)
    size = {enc: sum(map(len, recs)) / n for enc, recs in records.items()}
    print(
        f"{n:,} calls in requests of {args.per_request} (+1 HTTP span per 4 calls); "
        f"bytes per call: otlp_proto {size['otlp_proto']:.0f}, otlp_json "
        f"{size['otlp_json']:.0f}, v1 event {sum(map(len, events)) / n:.0f}; best of {args.repeat}"
    )
    for name, rate in results.items():
        print(f"  {name:24s} {rate:>12,.0f} events/s")
    for enc in records:
        print(f"  {enc} / json_events   {results[enc] / results['json_events']:>10.2f}")
    print(
        json.dumps(
            {
                "bench": "otlp",
                "events_per_s_json": round(results["json_events"]),
                "events_per_s_otlp_proto": round(results["otlp_proto"]),
                "events_per_s_otlp_json": round(results["otlp_json"]),
                "convert_per_s_otlp_proto": round(results["convert_otlp_proto"]),
                "convert_per_s_otlp_json": round(results["convert_otlp_json"]),
                "ratio_otlp_proto": round(results["otlp_proto"] / results["json_events"], 3),
                "ratio_otlp_json": round(results["otlp_json"] / results["json_events"], 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
