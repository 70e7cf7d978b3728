"""Real OpenTelemetry GenAI spans for tests: made by the OTel Python SDK, encoded by its OTLP
encoder, with the v1 call events they stand for written down independently of
``stream/core/otlp.py`` (from the values the spans were given, by a plain reading of
SPEC §3).

:func:`build_spans` makes one ``ExportTraceServiceRequest`` of N inference spans (plus
non-GenAI spans, which the conversion must skip); :meth:`SpanBatch.encode` gives its bytes
as the Collector's Kafka exporter writes them (``otlp_proto``) or as its file exporter and
``otlp_json`` encoding do (:func:`otlp_json`: the protobuf JSON mapping with hex ids).
Span and trace ids come from a seeded generator, so the same arguments give the same bytes.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

START_MS = 1_748_736_000_000  # 2025-06-01T00:00:00Z: in the past, inside the accepted range
MODELS: tuple[tuple[str, str], ...] = (
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("openai", "gpt-4.1"),
)
OPERATIONS = ("chat", "text_completion", "generate_content")

# current attribute names and their legacy twins (SPEC §3)
CURRENT = {
    "provider": "gen_ai.provider.name",
    "input": "gen_ai.usage.input_tokens",
    "output": "gen_ai.usage.output_tokens",
    "cache_read": "gen_ai.usage.cache_read.input_tokens",
    "cache_write": "gen_ai.usage.cache_write.input_tokens",
    "reasoning": "gen_ai.usage.reasoning.output_tokens",
}
LEGACY = {
    "provider": "gen_ai.system",
    "input": "gen_ai.usage.prompt_tokens",
    "output": "gen_ai.usage.completion_tokens",
    "cache_read": "gen_ai.usage.cache_read_input_tokens",
    "cache_write": "gen_ai.usage.cache_creation_input_tokens",
    "reasoning": "gen_ai.usage.reasoning_tokens",
}


class SeededIds(IdGenerator):
    """Trace and span ids from a seeded generator (never zero), for repeatable files."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.rng.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


@dataclass
class SpanBatch:
    """One request's spans and what they stand for."""

    request: ExportTraceServiceRequest
    events: list[bytes]  # the equivalent v1 events, in the request's span order (the bytes
    # the conversion writes: same keys, values and key order)
    tenants: list[str]  # tenant of each event
    skipped: int  # non-GenAI spans in the request
    spans: list[ReadableSpan] = field(repr=False, default_factory=list)

    def encode(self, encoding: str) -> bytes:
        """The request as the Collector writes it: ``otlp_proto`` or ``otlp_json``."""
        if encoding == "otlp_proto":
            return self.request.SerializeToString()
        if encoding == "otlp_json":
            return otlp_json(self.request)
        raise ValueError(encoding)


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON of a request, as the Collector's file exporter writes one line: the
    protobuf JSON mapping (lowerCamelCase, 64-bit integers as strings, enums as integers)
    with trace and span ids in hex instead of base64."""
    doc = MessageToDict(request, use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for item in (span, *span.get("links", ())):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in item:
                            item[key] = base64.b64decode(item[key]).hex()
    return orjson.dumps(doc)


def build_spans(  # noqa: PLR0914 - one recipe, written out
    n: int,
    *,
    tenants: Sequence[str] = ("acme", "globex"),
    models: Sequence[tuple[str, str]] = MODELS,
    seed: int = 0,
    non_genai: int = 2,
    legacy: bool = False,
    tenant_in_span: bool = False,
    tenant_attribute: str = "tenant.id",
    service: str = "support-bot",
    start_ms: int = START_MS,
    error_every: int = 0,
) -> SpanBatch:
    """``n`` inference spans (tenants and models round-robin, seeded usage) plus ``non_genai``
    plain spans per tenant (an HTTP server span and an embeddings span, which is GenAI but
    no inference call), in one ``ExportTraceServiceRequest``.

    The tenant is a resource attribute (one TracerProvider per tenant, as one app per tenant
    would have) unless ``tenant_in_span``. ``legacy`` writes the legacy attribute names.
    Every ``error_every``-th span ends with status ERROR (and every other one of those
    carries ``error.type`` instead).
    """
    rng = random.Random(seed)
    names = LEGACY if legacy else CURRENT
    exporter = InMemorySpanExporter()
    tracers = {}
    for t, tenant in enumerate(tenants if not tenant_in_span else ["*"]):
        # a fixed instance id: the SDK would add a random one, and files must repeat
        attrs: dict[str, Any] = {"service.name": service, "service.instance.id": f"i-{seed}"}
        if not tenant_in_span:
            attrs[tenant_attribute] = tenant
        provider = TracerProvider(
            resource=Resource.create(attrs), id_generator=SeededIds(seed * 1000 + t)
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracers[tenant] = provider.get_tracer("genai.instrumentation", "1.0.0")
    expected: dict[str, bytes] = {}
    tenant_of: dict[str, str] = {}
    for i in range(n):
        tenant = tenants[i % len(tenants)]
        tracer = tracers["*" if tenant_in_span else tenant]
        provider_name, model = models[i % len(models)]
        op = OPERATIONS[i % len(OPERATIONS)]
        start_ns = (start_ms + i * 1_500) * 1_000_000 + rng.randrange(1_000_000)
        duration_ns = rng.randrange(50_000_000, 9_000_000_000)
        inp = rng.randrange(20, 20_000)
        out = rng.randrange(1, 2_000)
        usage = {"input_tokens": inp, "output_tokens": out}
        attrs = {
            "gen_ai.operation.name": op,
            names["provider"]: provider_name,
            "gen_ai.request.model": model,
            "gen_ai.response.model": f"{model}-2025-01-01",
            "gen_ai.response.id": f"resp-{seed}-{i}",
            "gen_ai.request.temperature": 0.2,
            "gen_ai.response.finish_reasons": ("stop",),
            "server.address": "api.example.com",
            names["input"]: inp,
            names["output"]: out,
        }
        if i % 3 == 0:
            cache_read = rng.randrange(0, inp // 2 + 1)
            attrs[names["cache_read"]] = usage["cache_read_tokens"] = cache_read
        if i % 5 == 0:
            cache_write = rng.randrange(0, inp // 3 + 1)
            attrs[names["cache_write"]] = usage["cache_write_tokens"] = cache_write
        if i % 4 == 1:
            reasoning = rng.randrange(0, out + 1)
            attrs[names["reasoning"]] = usage["reasoning_tokens"] = reasoning
        if i % 7 == 0:
            attrs["gen_ai.prompt.name"] = "triage"
            attrs["gen_ai.prompt.version"] = f"v{1 + i % 3}"
        if tenant_in_span:
            attrs[tenant_attribute] = tenant
        error = bool(error_every) and i % error_every == error_every - 1
        if error and (i // error_every) % 2:
            attrs["error.type"] = "RateLimitError"
        span = tracer.start_span(
            f"{op} {model}", kind=SpanKind.CLIENT, attributes=attrs, start_time=start_ns
        )
        if error and not (i // error_every) % 2:
            span.set_status(Status(StatusCode.ERROR, "upstream failed"))
        span.end(end_time=start_ns + duration_ns)
        ctx = span.get_span_context()
        event_id = f"{ctx.trace_id:032x}{ctx.span_id:016x}"
        # keys in the order the conversion writes them (ids, the span's string attributes
        # in span order, usage, then the rest), so that the bytes are equal too
        event = {
            "event_id": event_id,
            "ts": start_ns // 1_000_000,
            "tenant_id": tenant,
            "provider": provider_name,
            "model": model,
            "served_model": f"{model}-2025-01-01",
        }
        if "gen_ai.prompt.name" in attrs:
            event["prompt_id"] = attrs["gen_ai.prompt.name"]
            event["prompt_version"] = attrs["gen_ai.prompt.version"]
        event |= {
            "usage": usage,
            "schema_version": 1,
            "app": service,
            "latency_ms": duration_ns / 1e6,
        }
        if error:
            event["status"] = "error"
        expected[event_id] = orjson.dumps(event)
        tenant_of[event_id] = tenant
    skipped = 0
    for t, tenant in enumerate(tenants):
        tracer = tracers["*" if tenant_in_span else tenant]
        for j in range(non_genai):
            start_ns = (start_ms + j) * 1_000_000
            if j % 2:
                attrs = {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e5"}
            else:
                attrs = {"http.request.method": "POST", "http.route": "/chat"}
            if tenant_in_span:
                attrs[tenant_attribute] = tenant
            span = tracer.start_span(f"other {t}.{j}", attributes=attrs, start_time=start_ns)
            span.end(end_time=start_ns + 1_000_000)
            skipped += 1
    spans = list(exporter.get_finished_spans())
    request = encode_spans(spans)
    order = [
        f"{s.trace_id.hex()}{s.span_id.hex()}"
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    ids = [i for i in order if i in expected]
    return SpanBatch(
        request=request,
        events=[expected[i] for i in ids],
        tenants=[tenant_of[i] for i in ids],
        skipped=skipped,
        spans=spans,
    )


def sdk_request(
    spans: Sequence[dict[str, Any]],
    *,
    resource: dict[str, Any] | None = None,
    error: Sequence[int] = (),
    start_ms: int = START_MS,
    seed: int = 0,
) -> ExportTraceServiceRequest:
    """A request of one span per attribute dict of ``spans`` (span ``i`` starts at
    ``start_ms + i`` and lasts 250 ms; those listed in ``error`` end with status ERROR),
    from one TracerProvider whose resource has ``resource`` (default: service.name
    ``support-bot`` and tenant.id ``acme``)."""
    exporter = InMemorySpanExporter()
    attrs = {"service.name": "support-bot", "tenant.id": "acme"} if resource is None else resource
    provider = TracerProvider(
        resource=Resource.create({"service.instance.id": f"i-{seed}", **attrs}),
        id_generator=SeededIds(seed),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("genai.instrumentation", "1.0.0")
    for i, span_attrs in enumerate(spans):
        start_ns = (start_ms + i) * 1_000_000
        span = tracer.start_span(
            f"span {i}", kind=SpanKind.CLIENT, attributes=span_attrs, start_time=start_ns
        )
        if i in error:
            span.set_status(Status(StatusCode.ERROR, "failed"))
        span.end(end_time=start_ns + 250_000_000)
    return encode_spans(exporter.get_finished_spans())


def event_id_of(request: ExportTraceServiceRequest, index: int) -> str:
    """The event id (trace + span id, hex) of the ``index``-th span of a request."""
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return spans[index].trace_id.hex() + spans[index].span_id.hex()
