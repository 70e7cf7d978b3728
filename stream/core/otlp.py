"""OpenTelemetry GenAI spans → call events v1 (SPEC §3): one OTLP trace export in, events out.

Apps instrumented with OpenTelemetry send their spans through the Collector, whose Kafka
exporter writes each ``ExportTraceServiceRequest`` as one record (``otlp_proto``, its
default, or ``otlp_json``) and whose file exporter writes one OTLP JSON request per line.
:func:`spans_to_events` turns one such record into v1 JSON event messages, which then go
through :meth:`.engine.Engine.process` like any other event: validation, reject reasons,
deduplication and pricing are the engine's, not redone here. Pure: no I/O, no clock.

A span is a call when ``gen_ai.operation.name`` is ``chat``, ``text_completion`` or
``generate_content``; any other span is skipped (counted in ``SpanEvents.skipped``), never
rejected. The mapping (first attribute name present wins; "span" = span attribute,
"resource" = resource attribute):

==================== ================================================================
v1 field             source
==================== ================================================================
event_id             trace id + span id, lowercase hex (32 + 16 characters)
ts                   span start time, integer epoch ms (floor of the nanoseconds)
latency_ms           end − start in ms (absent when the span has no end time)
tenant_id            span, else resource: the ``tenant_attribute`` (default ``tenant.id``);
                     absent from both → rejected ``missing_field``; not a string or an
                     integer → rejected ``wrong_type``
model                ``gen_ai.request.model``
served_model         ``gen_ai.response.model``
provider             ``gen_ai.provider.name``, legacy ``gen_ai.system``
app                  resource ``service.name``
prompt_id            ``gen_ai.prompt.name``
prompt_version       ``gen_ai.prompt.version``
status               ``error`` when the span status code is ERROR or ``error.type`` is
                     set; else absent (``ok``)
usage.input_tokens   ``gen_ai.usage.input_tokens``, legacy ``gen_ai.usage.prompt_tokens``
usage.output_tokens  ``gen_ai.usage.output_tokens``, legacy
                     ``gen_ai.usage.completion_tokens``
usage.cache_read_tokens   ``gen_ai.usage.cache_read.input_tokens``, legacy
                          ``gen_ai.usage.cache_read_input_tokens``
usage.cache_write_tokens  ``gen_ai.usage.cache_write.input_tokens``,
                          ``gen_ai.usage.cache_creation.input_tokens``, legacy
                          ``gen_ai.usage.cache_creation_input_tokens``
usage.reasoning_tokens    ``gen_ai.usage.reasoning.output_tokens``, legacy
                          ``gen_ai.usage.reasoning_tokens``
schema_version       1
==================== ================================================================

Values keep their OTLP types in the event (int → JSON integer, double → JSON number,
string, bool, array → JSON array), so the decoder rejects a string token count as
``wrong_type`` exactly as it would in a JSON event, and an absent required attribute
(``gen_ai.request.model``, the input/output token counts) as ``missing_field``. The one
exception is an integer where v1 wants a string (tenant, model, prompt version, ...): OTel
attributes are typed by the app (``set_attribute("tenant.id", 42)``), so it is written in
decimal. An inference span whose trace or span id is not 16/8 bytes (or all zero) is
rejected ``invalid_otlp``; so is a whole record that is not a decodable
``ExportTraceServiceRequest`` in its encoding.

``otlp_json`` follows the OTLP/JSON rules: lowerCamelCase keys, hex ids, 64-bit integers as
decimal strings or numbers, enums as integers (their names are accepted too). It is
decoded with msgspec into typed structs that read only the fields the mapping needs;
attribute values stay undecoded (``msgspec.Raw``) unless their key is one of the mapping's,
so long prompt or completion attributes cost a skip, not a copy.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import orjson
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

OTLP_ENCODINGS = ("otlp_proto", "otlp_json")
INFERENCE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
DEFAULT_TENANT_ATTRIBUTE = "tenant.id"

OPERATION = "gen_ai.operation.name"
SERVICE_NAME = "service.name"
ERROR_TYPE = "error.type"
STATUS_CODE_ERROR = 2  # opentelemetry.proto.trace.v1.Status.StatusCode.STATUS_CODE_ERROR
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}

#: usage field → its attribute names, current first (SPEC §3)
TOKEN_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
    ),
}
#: event field → its span attribute names, current first (model first: a required field)
STRING_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "model": ("gen_ai.request.model",),
    "served_model": ("gen_ai.response.model",),
    "provider": ("gen_ai.provider.name", "gen_ai.system"),
    "prompt_id": ("gen_ai.prompt.name",),
    "prompt_version": ("gen_ai.prompt.version",),
}
_SPAN_KEYS = frozenset(
    {OPERATION, ERROR_TYPE}
    | {n for names in TOKEN_ATTRIBUTES.values() for n in names}
    | {n for names in STRING_ATTRIBUTES.values() for n in names}
)
# attribute → (is a token count, v1 field, rank: 0 for the current name, legacy after)
_ROUTES: dict[str, tuple[bool, str, int]] = {
    key: (table is TOKEN_ATTRIBUTES, name, rank)
    for table in (TOKEN_ATTRIBUTES, STRING_ATTRIBUTES)
    for name, keys in table.items()
    for rank, key in enumerate(keys)
}
_ZERO_ID = frozenset({"0" * 32, "0" * 16})
# OTLP's 64-bit integers: int64 attribute values, fixed64 (unsigned) times
_INT64_MIN, _INT64_MAX = -(2**63), 2**64 - 1


class SpanReject(NamedTuple):
    """A span (or a whole record) that cannot become an event."""

    reason: str  # a decode.REJECT_REASONS key
    detail: str
    tenant_id: str  # "" when unknown
    event_id: str  # trace + span id hex, "" when unknown
    raw: bytes  # the span as OTLP JSON, or the whole record when it could not be decoded


@dataclass
class SpanEvents:
    """What one OTLP record became; ``events[i]`` is keyed by ``tenants[i]`` in Kafka."""

    events: list[bytes] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    rejected: list[SpanReject] = field(default_factory=list)
    skipped: int = 0


_ABSENT: Any = object()  # an attribute that is not there (apart from any value it could hold)


class _BadSpan(Exception):
    """An inference span that breaks the OTLP rules (its ids, a 64-bit integer)."""


def spans_to_events(
    record: bytes, encoding: str, *, tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE
) -> SpanEvents:
    """The v1 events of one ``ExportTraceServiceRequest`` record in ``encoding`` (one of
    :data:`OTLP_ENCODINGS`), in span order, with their tenants, rejects and skipped count."""
    if encoding == "otlp_proto":
        return _from_proto(record, tenant_attribute)
    if encoding == "otlp_json":
        return _from_json(record, tenant_attribute)
    raise ValueError(f"unknown OTLP encoding {encoding!r}: use one of {', '.join(OTLP_ENCODINGS)}")


# ---------------------------------------------------------------------- the mapping
class _Builder:
    """Collects the events and rejects of one record; ``where`` locates a span for its raw
    bytes, which are only rendered for rejected spans (rare) once the record is done."""

    def __init__(self, tenant_attribute: str) -> None:
        self.tenant_attribute = tenant_attribute
        self.keys = _SPAN_KEYS | {tenant_attribute}
        self.out = SpanEvents()
        self.events, self.tenants = self.out.events, self.out.tenants
        self.pending: list[tuple[str, str, str, str, Any]] = []

    def span(  # noqa: PLR0917 - the parts of a span both encodings hand over
        self,
        attrs: dict[str, Any],
        ids: tuple[str, str] | None,
        start_ns: int,
        end_ns: int,
        status_code: int,
        resource: tuple[Any, Any],
        where: Any,
    ) -> None:
        """One span: ``attrs`` holds only its mapped attributes, ``ids`` its trace and span
        id in hex (None: unreadable), ``resource`` the (tenant, service.name) values."""
        op = attrs.get(OPERATION)
        if type(op) is not str or op not in INFERENCE_OPERATIONS:
            self.out.skipped += 1
            return
        if ids is None or len(ids[0]) != 32 or len(ids[1]) != 16 or not _ZERO_ID.isdisjoint(ids):
            detail = "trace id or span id missing, not 16/8 bytes or all zeroes"
            self.pending.append(("invalid_otlp", detail, "", "", where))
            return
        event_id = ids[0] + ids[1]
        tenant = attrs.get(self.tenant_attribute, _ABSENT)
        if tenant is _ABSENT:
            tenant = resource[0]
        if tenant is _ABSENT:
            detail = f"no span or resource attribute {self.tenant_attribute!r} (the tenant)"
            self.pending.append(("missing_field", detail, "", event_id, where))
            return
        if type(tenant) is int:  # an integer where v1 wants a string: its decimal
            tenant = str(tenant)
        if type(tenant) is not str:
            detail = f"tenant attribute {self.tenant_attribute!r} is not a string"
            self.pending.append(("wrong_type", detail, "", event_id, where))
            return
        event: dict[str, Any] = {"event_id": event_id, "ts": start_ns // 1_000_000}
        event["tenant_id"] = tenant
        usage: dict[str, Any] = {}
        ranks: dict[str, int] | None = None  # rank of a legacy name's value, once one is seen
        for key, value in attrs.items():
            route = _ROUTES.get(key)
            if route is None:  # the operation, error.type or the tenant
                continue
            is_token, name, rank = route
            dest = usage if is_token else event
            if rank:  # a legacy name: only where no better-ranked name gave the field
                if ranks is None:
                    ranks = {}
                if name in dest and ranks.get(name, 0) <= rank:  # absent: the current name's
                    continue
                ranks[name] = rank
            elif ranks:
                ranks.pop(name, None)
            # tokens keep their type (the decoder judges them); an int id becomes text
            dest[name] = value if is_token or type(value) is not int else str(value)
        event["usage"] = usage
        event["schema_version"] = 1
        if resource[1] is not _ABSENT:
            app = resource[1]
            event["app"] = str(app) if type(app) is int else app
        if end_ns:
            event["latency_ms"] = (end_ns - start_ns) / 1e6
        if status_code == STATUS_CODE_ERROR or ERROR_TYPE in attrs:
            event["status"] = "error"
        try:
            data = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits: no OTLP value
            self.pending.append(("invalid_otlp", str(exc), tenant, event_id, where))
            return
        self.events.append(data)
        self.tenants.append(tenant)

    def bad_span(self, detail: str, op: Any, where: Any) -> None:
        """A span whose fields broke the OTLP rules: rejected if it is a call, else skipped."""
        if type(op) is str and op in INFERENCE_OPERATIONS:
            self.pending.append(("invalid_otlp", detail, "", "", where))
        else:
            self.out.skipped += 1


def _invalid(record: bytes, detail: str) -> SpanEvents:
    return SpanEvents(rejected=[SpanReject("invalid_otlp", detail[:500], "", "", record)])


# ---------------------------------------------------------------------- otlp_proto
def _from_proto(record: bytes, tenant_attribute: str) -> SpanEvents:
    try:
        request = ExportTraceServiceRequest.FromString(record)
    except (DecodeError, ValueError, TypeError) as exc:
        return _invalid(record, f"not an ExportTraceServiceRequest (otlp_proto): {exc}")
    b = _Builder(tenant_attribute)
    keys = b.keys
    for rs in request.resource_spans:
        res = {
            kv.key: _pb_value(kv.value)
            for kv in rs.resource.attributes
            if kv.key in (tenant_attribute, SERVICE_NAME)
        }
        resource = (res.get(tenant_attribute, _ABSENT), res.get(SERVICE_NAME, _ABSENT))
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = {}
                for kv in span.attributes:
                    key = kv.key
                    if key in keys:
                        value = kv.value
                        kind = value.WhichOneof("value")
                        if kind in _PB_SCALARS:
                            attrs[key] = getattr(value, kind)
                        elif kind is not None:  # an empty AnyValue is no value
                            attrs[key] = _pb_value(value)
                b.span(
                    attrs,
                    (span.trace_id.hex(), span.span_id.hex()),
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    span.status.code,
                    resource,
                    span,
                )
    out = b.out
    out.rejected = [
        SpanReject(reason, detail, tenant, event_id, _pb_span_json(span))
        for reason, detail, tenant, event_id, span in b.pending
    ]
    return out


_PB_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _pb_value(value: Any) -> Any:
    """A protobuf ``AnyValue`` as the JSON value it carries."""
    kind = value.WhichOneof("value")
    if kind is None:
        return _ABSENT
    if kind == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":  # no v1 field is bytes: kept as an object, so it is rejected
        return {"bytesValue": base64.b64encode(value.bytes_value).decode("ascii")}
    return getattr(value, kind)


def _pb_span_json(span: Any) -> bytes:
    """A protobuf span as OTLP JSON, for its reject: protobuf's JSON mapping (only rejects
    take this path), with the hex ids OTLP/JSON wants instead of its base64."""
    doc = MessageToDict(span, use_integers_for_enums=True)
    for item in (doc, *doc.get("links", ())):
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in item:
                item[key] = base64.b64decode(item[key]).hex()
    return orjson.dumps(doc)


# ---------------------------------------------------------------------- otlp_json
class _KeyValue(msgspec.Struct, gc=False):
    key: str = ""
    value: msgspec.Raw = msgspec.Raw(b"null")


class _Status(msgspec.Struct, gc=False):
    code: int | str = 0


class _Span(msgspec.Struct, gc=False, rename="camel"):
    trace_id: str = ""
    span_id: str = ""
    start_time_unix_nano: int | str = 0
    end_time_unix_nano: int | str = 0
    attributes: list[_KeyValue] | None = None
    status: _Status | None = None


class _ScopeSpans(msgspec.Struct, gc=False):
    spans: list[_Span] | None = None


class _Resource(msgspec.Struct, gc=False):
    attributes: list[_KeyValue] | None = None


class _ResourceSpans(msgspec.Struct, gc=False, rename="camel"):
    resource: _Resource | None = None
    scope_spans: list[_ScopeSpans] | None = None


class _Request(msgspec.Struct, gc=False, rename="camel"):
    resource_spans: list[_ResourceSpans] | None = None


class _ArrayValue(msgspec.Struct, gc=False):
    values: list[_AnyValue] | None = None


class _KvPair(msgspec.Struct, gc=False):
    key: str = ""
    value: _AnyValue | None = None


class _KvList(msgspec.Struct, gc=False):
    values: list[_KvPair] | None = None


class _AnyValue(msgspec.Struct, gc=False, rename="camel"):
    string_value: str | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None  # "NaN", "Infinity", "-Infinity" are strings
    bool_value: bool | None = None
    array_value: _ArrayValue | None = None
    kvlist_value: _KvList | None = None
    bytes_value: str | None = None


# the record again, with each span's exact bytes: only read back for rejected spans
class _RawScope(msgspec.Struct, gc=False):
    spans: list[msgspec.Raw] | None = None


class _RawResourceSpans(msgspec.Struct, gc=False, rename="camel"):
    scope_spans: list[_RawScope] | None = None


class _RawRequest(msgspec.Struct, gc=False, rename="camel"):
    resource_spans: list[_RawResourceSpans] | None = None


_REQUEST = msgspec.json.Decoder(_Request)
_RAW_REQUEST = msgspec.json.Decoder(_RawRequest)
_ANY = msgspec.json.Decoder(_AnyValue | None)  # an absent value is null: no value
# what a JSON request msgspec cannot read raises (RecursionError: nested beyond its limit)
_UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)


def _from_json(record: bytes, tenant_attribute: str) -> SpanEvents:
    try:
        request = _REQUEST.decode(record)
    except _UNDECODABLE as exc:
        return _invalid(record, f"not an ExportTraceServiceRequest (otlp_json): {exc}")
    b = _Builder(tenant_attribute)
    keys = b.keys
    res_keys = frozenset({tenant_attribute, SERVICE_NAME})
    try:
        for r, rs in enumerate(request.resource_spans or ()):
            res = _json_attrs(rs.resource.attributes if rs.resource else None, res_keys)
            resource = (res.get(tenant_attribute, _ABSENT), res.get(SERVICE_NAME, _ABSENT))
            for s, ss in enumerate(rs.scope_spans or ()):
                for k, span in enumerate(ss.spans or ()):
                    status = span.status.code if span.status else 0
                    try:
                        attrs = _json_attrs(span.attributes, keys)
                        ids = _hex_ids(span.trace_id, span.span_id)
                        start = _int64(span.start_time_unix_nano)
                        end = _int64(span.end_time_unix_nano)
                    except _BadSpan as exc:
                        b.bad_span(str(exc), _json_operation(span.attributes), (r, s, k))
                        continue
                    code = _STATUS_NAMES.get(status, 0) if isinstance(status, str) else status
                    b.span(attrs, ids, start, end, code, resource, (r, s, k))
    except (*_UNDECODABLE, _BadSpan) as exc:
        # a resource attribute, or a mapped span attribute, whose value is no AnyValue
        return _invalid(record, f"not an ExportTraceServiceRequest (otlp_json): {exc}")
    out = b.out
    if b.pending:
        raw = _RAW_REQUEST.decode(record)
        out.rejected = [
            SpanReject(reason, detail, tenant, event_id, _raw_span(raw, where))
            for reason, detail, tenant, event_id, where in b.pending
        ]
    return out


def _json_attrs(kvs: list[_KeyValue] | None, keys: frozenset[str]) -> dict[str, Any]:
    """The attributes among ``keys`` as JSON values (others are never decoded)."""
    attrs: dict[str, Any] = {}
    for kv in kvs or ():
        key = kv.key
        if key in keys:
            v = _ANY.decode(kv.value)
            if v is None:
                continue
            if v.string_value is not None:  # the common cases first, inline
                attrs[key] = v.string_value
            elif type(v.int_value) is str:  # OTLP/JSON writes 64-bit integers as strings
                try:
                    attrs[key] = int(v.int_value)
                except ValueError:
                    raise _BadSpan(f"intValue {v.int_value[:40]!r} is no integer") from None
            else:
                value = _json_value(v)
                if value is not _ABSENT:
                    attrs[key] = value
    return attrs


def _json_operation(kvs: list[_KeyValue] | None) -> Any:
    """``gen_ai.operation.name`` of a span whose other attributes may be unreadable."""
    for kv in kvs or ():
        if kv.key == OPERATION:
            v = _ANY.decode(kv.value)
            return v.string_value if v is not None else None
    return None


def _json_value(v: _AnyValue | None) -> Any:
    """An OTLP/JSON ``AnyValue`` as the JSON value it carries (the protobuf mapping's)."""
    if v is None:
        return _ABSENT
    if v.string_value is not None:
        return v.string_value
    if v.int_value is not None:
        return _int64(v.int_value)
    if v.double_value is not None:
        try:
            return float(v.double_value)
        except ValueError:
            raise _BadSpan(f"doubleValue {v.double_value!r} is not a number") from None
    if v.bool_value is not None:
        return v.bool_value
    if v.array_value is not None:
        return [_json_value(x) for x in v.array_value.values or ()]
    if v.kvlist_value is not None:
        return {kv.key: _json_value(kv.value) for kv in v.kvlist_value.values or ()}
    if v.bytes_value is not None:
        return {"bytesValue": v.bytes_value}
    return _ABSENT


def _int64(value: int | str) -> int:
    """A 64-bit integer of OTLP/JSON: a number or its decimal string."""
    try:
        number = int(value)
    except ValueError:
        raise _BadSpan(f"{str(value)[:40]!r} is not a 64-bit integer") from None
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _BadSpan(f"{number} is out of the 64-bit integer range")
    return number


def _hex_ids(trace_id: str, span_id: str) -> tuple[str, str] | None:
    """Lowercase hex of the ids (OTLP/JSON writes them in hex), None if they are not hex."""
    try:
        return bytes.fromhex(trace_id).hex(), bytes.fromhex(span_id).hex()
    except ValueError:
        return None


def _raw_span(raw: _RawRequest, where: tuple[int, int, int]) -> bytes:
    r, s, k = where
    scopes = (raw.resource_spans or [])[r].scope_spans or []
    return bytes((scopes[s].spans or [])[k])
