"""Decode raw call-event bytes (SPEC §3, v1) into a columnar batch, rejecting bad events.

Two readers give the same raw columns (:mod:`.decode_columns`): a numba scanner over the
batch joined into one buffer (:mod:`.json_scan`), which accepts the plain, well-formed
events that make up normal traffic and declines anything it cannot reproduce exactly, and
msgspec, which decodes the declined messages straight into typed structs (UTF-8, JSON
syntax, types, ranges checked in C) and classifies the ones it refuses. The semantic checks
then run once on the merged columns, so every reject reason comes from one place. A bad
message never takes its batch down.

Measured (``bench/engine.py``): the scanner plus span dictionaries is about twice as fast
as msgspec decoding followed by the transpose of its structs into columns; orjson remains
the decode-only baseline the engine is compared with.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import pybase64

from .decode_columns import RawColumns, merge, raw_from_events, raw_from_scan
from .interning import Interners
from .json_scan import scan_calls
from .rfc3339 import MISSING as MISSING_TS
from .rfc3339 import WRONG_TYPE

MAX_MESSAGE_BYTES = 1 << 20
MAX_TOKENS = 10**12  # far above any real context; beyond it int64 sums could overflow
# Event time must be plausible: before 2000 or after 2100 is a unit mix-up (seconds vs
# ms) or garbage, and would poison windows and budgets.
MIN_TS_MS = 946_684_800_000  # 2000-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01

STATUSES = ("ok", "error", "rate_limited", "timeout", "cache_hit")
STATUS_OK, STATUS_ERROR, STATUS_RATE_LIMITED, STATUS_TIMEOUT, STATUS_CACHE_HIT = range(5)
_STATUS_CODE: dict[str | None, int] = {s: i for i, s in enumerate(STATUSES)}
_STATUS_CODE[None] = STATUS_OK

REJECT_REASONS: dict[str, str] = {
    "invalid_json": "not one JSON object: syntax error, truncated, trailing data, a "
    "non-object top level, or nested too deeply to decode",
    "invalid_utf8": "the bytes are not valid UTF-8",
    "missing_field": "a required field is absent: event_id, ts, tenant_id, model, usage, "
    "usage.input_tokens or usage.output_tokens",
    "wrong_type": "a field has the wrong JSON type (a token count as a string or a fraction, "
    "tenant_id as a number, usage not an object, ts neither string nor integer, ...)",
    "negative_tokens": "a token count is below zero",
    "inconsistent_tokens": "token subsets exceed their total: cache_read + cache_write > input, "
    "cache_write_1h > cache_write or reasoning > output",
    "bad_embedding": "embedding is not valid base64, its byte length is not a whole number "
    "of float32, or its JSON array holds a non-number",
    "embedding_not_finite": "embedding holds NaN or +-inf once read as float32 (also a JSON "
    "number too large for float32)",
    "too_large": f"the message is larger than {MAX_MESSAGE_BYTES} bytes",
    "bad_timestamp": "ts (or a chunk time) is a string that is not RFC 3339 with an offset, "
    "or an instant before 2000 or after 2100 (e.g. epoch seconds sent as ms)",
    "ts_in_future": "ts is further ahead of the processing wall clock than the allowed "
    "future skew (LLMOPS_MAX_FUTURE_SKEW_S, default 900 s)",
    "invalid_value": "a value outside its allowed set or range: unknown status, event_id or "
    "tenant_id empty or longer than 128 characters, negative latency_ms/ttft_ms",
    "invalid_otlp": "an OTel span input that is not a decodable ExportTraceServiceRequest in "
    "its encoding, or an inference span whose trace/span id is not 16/8 bytes",
}

Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
Id128 = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# Times stay raw JSON here (no str/int object per value) and are parsed in bulk by
# rfc3339.json_times_ms; an unparsable one becomes INVALID and is rejected as bad_timestamp.
Time = msgspec.Raw
NULL = msgspec.Raw(b"null")
NonNeg = Annotated[float, msgspec.Meta(ge=0)]


class Usage(msgspec.Struct, gc=False):
    input_tokens: Tokens
    output_tokens: Tokens
    cache_read_tokens: Tokens | None = None
    cache_write_tokens: Tokens | None = None
    # Subset of cache_write_tokens written with a long TTL (Anthropic's 1 h, OpenAI's 12 h):
    # providers bill them at a higher write rate than the default 5-minute class.
    cache_write_1h_tokens: Tokens | None = None
    reasoning_tokens: Tokens | None = None


class Route(msgspec.Struct, gc=False):
    tier: str | None = None
    escalated: bool | None = None


class Chunk(msgspec.Struct, gc=False):
    embedded_at: Time
    chunk_id: str | None = None
    doc_id: str | None = None
    source_updated_at: Time = NULL
    score: float | None = None


class Retrieval(msgspec.Struct, gc=False):
    index_version: str | None = None
    chunks: list[Chunk] | None = None


class CallEvent(msgspec.Struct, gc=False):
    """The call event v1 (``schemas/call_event_v1.schema.json``); extra fields are ignored.

    ``gc=False``: decoded events hold no reference cycles, and keeping millions of them out
    of the cyclic garbage collector's lists is a measurable share of decode time.
    """

    event_id: Id128
    ts: Time
    tenant_id: Id128
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    usage: Usage
    schema_version: int | None = None
    provider: str | None = None
    app: str | None = None
    served_model: str | None = None
    prompt_id: str | None = None
    prompt_version: str | None = None
    latency_ms: NonNeg | None = None
    ttft_ms: NonNeg | None = None
    status: Literal["ok", "error", "rate_limited", "timeout", "cache_hit"] | None = None
    route: Route | None = None
    context_window: Annotated[int, msgspec.Meta(ge=0, le=2**31)] | None = None
    embedding: str | list[float] | None = None
    embedding_model: str | None = None
    retrieval: Retrieval | None = None


_DECODER = msgspec.json.Decoder(CallEvent)


class _TenantOnly(msgspec.Struct, gc=False):
    tenant_id: str | None = None
    event_id: str | None = None


_PEEK = msgspec.json.Decoder(_TenantOnly)


@dataclass
class Rejected:
    """Rejected events of a batch: parallel lists, ``index`` into the input messages."""

    index: list[int] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)
    tenant_id: list[str] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)

    def add(
        self,
        index: int,
        reason: str,
        detail: str,
        raw: bytes | None = None,
        *,
        tenant_id: str = "",
        event_id: str = "",
    ) -> None:
        """Record message ``index`` as rejected; ``raw`` (if given) is peeked for the ids."""
        tenant, event = tenant_id, event_id
        if raw is not None:
            try:
                peek = _PEEK.decode(raw)
                tenant = peek.tenant_id if isinstance(peek.tenant_id, str) else ""
                event = peek.event_id if isinstance(peek.event_id, str) else ""
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                pass
        self.index.append(index)
        self.reason.append(reason)
        self.detail.append(detail[:500])
        # an over-long id is not a tenant we could attribute to: report it as unreadable
        self.tenant_id.append(tenant if len(tenant) <= 128 else "")
        self.event_id.append(event if len(event) <= 128 else "")

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class CallBatch:
    """Valid decoded events as columns; every array has length ``n`` unless noted.

    Strings are object arrays of ``str`` (``""`` when absent). ``src_index`` maps each row
    back to its position in the input message list (int64[n]).
    """

    n: int
    src_index: np.ndarray  # int64[n]
    event_id: np.ndarray  # object[n]
    ts_ms: np.ndarray  # int64[n], epoch ms UTC
    tenant_id: np.ndarray
    model: np.ndarray
    provider: np.ndarray
    app: np.ndarray
    served_model: np.ndarray
    prompt_id: np.ndarray
    prompt_version: np.ndarray
    status: np.ndarray  # uint8[n], index into STATUSES
    route_tier: np.ndarray
    route_escalated: np.ndarray  # bool[n]
    input_tokens: np.ndarray  # int64[n]
    output_tokens: np.ndarray
    cache_read_tokens: np.ndarray
    cache_write_tokens: np.ndarray
    cache_write_1h_tokens: np.ndarray  # int64[n], subset of cache_write_tokens
    reasoning_tokens: np.ndarray
    latency_ms: np.ndarray  # float64[n], NaN when absent
    ttft_ms: np.ndarray  # float64[n], NaN when absent
    context_window: np.ndarray  # int64[n], 0 when absent
    embedding_model: np.ndarray
    embedding: list[bytes | None]  # raw little-endian float32 bytes per event, or None
    embedding_nbytes: np.ndarray  # int64[n], len of each embedding's bytes (0 = none)
    index_version: np.ndarray
    chunk_offsets: np.ndarray  # int64[n+1]; chunks of row i are [off[i], off[i+1])
    chunk_embedded_at_ms: np.ndarray  # int64[c]
    chunk_source_updated_at_ms: np.ndarray  # int64[c], MISSING_TS when absent
    # int32[n] codes of the :data:`.interning.INTERNED` columns, by name, when decoded with
    # interners (the object arrays above hold the same values)
    codes: dict[str, np.ndarray] = field(default_factory=dict)

    def take(self, rows: np.ndarray) -> CallBatch:
        """A new batch holding only ``rows`` (int64 indices, increasing), chunks included."""
        off = self.chunk_offsets
        counts = off[rows + 1] - off[rows]
        new_off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=new_off[1:])
        # chunk j of kept row r sits at off[r] + (j - new_off[r's position])
        chunk_rows = np.repeat(off[rows] - new_off[:-1], counts) + np.arange(new_off[-1])
        values: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if name in ("n", "chunk_offsets", "chunk_embedded_at_ms", "chunk_source_updated_at_ms"):
                continue
            if name == "embedding":
                values[name] = [value[i] for i in rows]
            elif name == "codes":
                values[name] = {k: v[rows] for k, v in value.items()}
            else:
                values[name] = value[rows]
        return CallBatch(
            n=len(rows),
            chunk_offsets=new_off,
            chunk_embedded_at_ms=self.chunk_embedded_at_ms[chunk_rows],
            chunk_source_updated_at_ms=self.chunk_source_updated_at_ms[chunk_rows],
            **values,
        )


def _classify(exc: Exception, raw: bytes) -> str:
    """Map a decode exception to a reason code of :data:`REJECT_REASONS`."""
    if isinstance(exc, UnicodeDecodeError):
        return "invalid_utf8"
    msg = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if "missing required field" in msg:
            return "missing_field"
        if "$.embedding" in msg:
            return "bad_embedding"
        if "Expected `object`, got" in msg and "- at" not in msg:
            return "invalid_json"  # valid JSON, but not an object
        if ", got `" in msg:
            return "wrong_type"
        if "usage" in msg and ">= 0" in msg:
            return "negative_tokens"
        if "datetime" in msg or "$.ts" in msg or "_at`" in msg:
            return "bad_timestamp"
        return "invalid_value"
    # msgspec.DecodeError: JSON syntax; invalid UTF-8 inside strings also lands here
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "invalid_json"


def _decode_events(messages: list[bytes], rejected: Rejected) -> tuple[list[CallEvent], list[int]]:
    """Decode each message; returns the good events and their input indices."""
    sizes = np.fromiter(map(len, messages), dtype=np.int64, count=len(messages))
    too_big = np.flatnonzero(sizes > MAX_MESSAGE_BYTES)
    if too_big.size == 0:
        try:
            return list(map(_DECODER.decode, messages)), list(range(len(messages)))
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
            pass  # at least one bad message: find it below
    big = set(too_big.tolist())
    events: list[CallEvent] = []
    keep: list[int] = []
    for i, m in enumerate(messages):
        if i in big:
            rejected.add(i, "too_large", f"{len(m)} bytes")
            continue
        try:
            events.append(_DECODER.decode(m))
            keep.append(i)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            rejected.add(i, _classify(exc, m), str(exc), m)
        except RecursionError:  # a valid document msgspec cannot descend into
            rejected.add(i, "invalid_json", "nested too deeply to decode (arrays or objects)", m)
    return events, keep


def _embedding_bytes(value: str | bytes | list[float]) -> bytes:
    """Raw little-endian float32 bytes of an embedding field (raises ValueError)."""
    if isinstance(value, (str, bytes)):  # bytes: the base64 text as the scanner found it
        # pybase64 (SIMD) decodes ~4x faster than binascii: base64 is most of an embedded
        # event's bytes
        raw = pybase64.b64decode(value, validate=True)
        if len(raw) == 0 or len(raw) % 4:
            raise ValueError(f"decoded embedding has {len(raw)} bytes, not a float32 multiple")
        return raw
    if not value:
        raise ValueError("empty embedding array")
    with np.errstate(over="ignore"):  # overflow becomes inf and is rejected as not finite
        return np.asarray(value, dtype="<f4").tobytes()


def decode_batch(
    messages: list[bytes], interners: Interners | None = None, *, fast: bool = True
) -> tuple[CallBatch, Rejected]:
    """Decode ``messages`` (one JSON event each) into a :class:`CallBatch` of the valid ones.

    With ``interners``, the :data:`.interning.INTERNED` columns also come as int32 codes
    (``CallBatch.codes``) of those per-column dictionaries.

    Semantic checks that JSON typing cannot express (token consistency, time range,
    embedding encoding and finiteness) reject the event with its reason code, never the
    batch.

    ``fast``: read what the numba scanner (:mod:`.json_scan`) accepts from one joined
    buffer and only the rest with msgspec; ``False`` decodes every message with msgspec.
    Both give the same result (the scanner declines whatever it cannot reproduce exactly).
    """
    rejected = Rejected()
    if fast and messages:
        raw = _raw_fast(messages, rejected)
    else:
        events, keep = _decode_events(messages, rejected)
        raw = raw_from_events(events, np.asarray(keep, dtype=np.int64), _STATUS_CODE)
    return _checked(raw, rejected, interners)


def _raw_fast(messages: list[bytes], rejected: Rejected) -> RawColumns:
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, messages), np.int64, len(messages)), out=offsets[1:])
    data = b"".join(messages)
    buf = np.frombuffer(data, dtype=np.uint8)
    scan = scan_calls(buf, offsets, MAX_MESSAGE_BYTES)
    raw = raw_from_scan(data, buf, scan, np.flatnonzero(scan.ok))
    if len(raw.src) == len(messages):
        return raw
    declined = np.flatnonzero(~scan.ok)
    sub = Rejected()
    events, keep = _decode_events([messages[i] for i in declined.tolist()], sub)
    sub.index = declined[sub.index].tolist()
    for name in ("index", "reason", "detail", "tenant_id", "event_id"):
        getattr(rejected, name).extend(getattr(sub, name))
    slow = raw_from_events(events, declined[np.asarray(keep, dtype=np.int64)], _STATUS_CODE)
    return merge(raw, slow)


def _checked(
    raw: RawColumns, rejected: Rejected, interners: Interners | None
) -> tuple[CallBatch, Rejected]:
    """The batch of ``raw``'s rows that pass the semantic checks; the others rejected."""
    n = len(raw.src)
    src = raw.src
    i64 = np.int64
    input_tokens = raw.ints["input_tokens"]
    output_tokens = raw.ints["output_tokens"]
    cache_read = raw.ints["cache_read_tokens"]
    cache_write = raw.ints["cache_write_tokens"]
    cache_write_1h = raw.ints["cache_write_1h_tokens"]
    reasoning = raw.ints["reasoning_tokens"]
    ts_ms = raw.ints["ts_ms"]

    bad = np.zeros(n, dtype=np.int8)  # 0 good, else 1 + index into _CHECKS
    _CHECKS = (
        "inconsistent_tokens",
        "bad_timestamp",
        "bad_embedding",
        "bad_timestamp",
        "embedding_not_finite",
        "wrong_type",
    )
    bad[
        (cache_read + cache_write > input_tokens)
        | (cache_write_1h > cache_write)
        | (reasoning > output_tokens)
    ] = 1
    bad[(bad == 0) & (ts_ms == WRONG_TYPE)] = 6
    bad[(bad == 0) & ((ts_ms < MIN_TS_MS) | (ts_ms >= MAX_TS_MS))] = 2

    raw_embedding = raw.embedding
    embedding: list[bytes | None] = [None] * n
    nbytes = np.zeros(n, dtype=i64)
    with_emb = [i for i, v in enumerate(raw_embedding) if v is not None]
    for i in with_emb:
        try:
            embedding[i] = value = _embedding_bytes(raw_embedding[i])
            nbytes[i] = len(value)
        except (ValueError, binascii.Error):
            if bad[i] == 0:
                bad[i] = 3
    with_emb = [i for i in with_emb if embedding[i] is not None]
    if with_emb:
        flat = np.frombuffer(b"".join([embedding[i] for i in with_emb]), dtype="<f4")  # type: ignore[misc]
        starts = np.zeros(len(with_emb), dtype=i64)
        np.cumsum(nbytes[with_emb][:-1] // 4, out=starts[1:])
        not_finite = np.logical_or.reduceat(~np.isfinite(flat), starts)
        rows = np.asarray(with_emb, dtype=i64)[not_finite]
        bad[rows[bad[rows] == 0]] = 5

    counts = raw.chunk_counts
    chunk_offsets = np.zeros(n + 1, dtype=i64)
    np.cumsum(counts, out=chunk_offsets[1:])
    emb_at = raw.chunk_embedded_at_ms
    src_at = raw.chunk_source_updated_at_ms  # null → MISSING_TS
    chunk_wrong = (emb_at == WRONG_TYPE) | (src_at == WRONG_TYPE)
    chunk_bad = (emb_at < MIN_TS_MS) | (emb_at >= MAX_TS_MS)
    chunk_bad |= (src_at != MISSING_TS) & ((src_at < MIN_TS_MS) | (src_at >= MAX_TS_MS))
    if chunk_bad.any():
        owner = np.repeat(np.arange(n), counts)
        for mask, code in ((chunk_wrong, 6), (chunk_bad, 4)):
            rows = np.unique(owner[mask])
            bad[rows[bad[rows] == 0]] = code

    labels: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    for name, (local, values) in raw.labels.items():
        if interners is None:
            labels[name] = values[local]
        else:
            interner = interners[name]
            # values are distinct, in order of first appearance: the interner meets new
            # strings in the same order as it would meeting them row by row
            codes[name] = interner.encode(values)[local]
            # the dictionary's own str objects: later hashing of these columns finds their
            # hashes cached
            labels[name] = interner.values(codes[name])
    batch = CallBatch(
        n=n,
        src_index=src,
        event_id=raw.event_id,
        ts_ms=ts_ms,
        **labels,
        status=raw.ints["status"].astype(np.uint8),
        route_escalated=raw.ints["route_escalated"].astype(bool),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        reasoning_tokens=reasoning,
        latency_ms=raw.floats["latency_ms"],
        ttft_ms=raw.floats["ttft_ms"],
        context_window=raw.ints["context_window"],
        embedding=embedding,
        embedding_nbytes=nbytes,
        chunk_offsets=chunk_offsets,
        chunk_embedded_at_ms=emb_at,
        chunk_source_updated_at_ms=src_at,
        codes=codes,
    )
    if bad.any():
        for row in np.flatnonzero(bad).tolist():
            reason = _CHECKS[int(bad[row]) - 1]
            rejected.add(
                int(src[row]),
                reason,
                _detail(reason, batch, row),
                tenant_id=batch.tenant_id[row],
                event_id=batch.event_id[row],
            )
        batch = batch.take(np.flatnonzero(bad == 0))
    return batch, rejected


def _detail(reason: str, b: CallBatch, i: int) -> str:
    if reason == "inconsistent_tokens":
        return (
            f"input={b.input_tokens[i]} cache_read={b.cache_read_tokens[i]} "
            f"cache_write={b.cache_write_tokens[i]} cache_write_1h={b.cache_write_1h_tokens[i]} "
            f"output={b.output_tokens[i]} "
            f"reasoning={b.reasoning_tokens[i]}"
        )
    if reason == "bad_timestamp":
        return f"ts={b.ts_ms[i]} ms is outside 2000-01-01..2100-01-01 (or a chunk time is)"
    if reason == "embedding_not_finite":
        return "embedding holds NaN or infinity"
    if reason == "wrong_type":
        return "ts or a chunk time is neither an RFC 3339 string nor an integer (epoch ms)"
    return "embedding is not base64 of little-endian float32 (or an empty/odd-length array)"
