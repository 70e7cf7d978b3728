"""Usage normalisers: provider responses → the call event v1 ``usage`` object (SPEC §3).

Job
---
Every provider counts tokens differently: some include cache reads in the input count,
some do not; some include reasoning ("thinking") in the output count, some report it
apart. The v1 event has one convention, and pricing relies on it:

* ``input_tokens`` — ALL input tokens, cache reads and cache writes included;
* ``output_tokens`` — ALL output tokens, reasoning included;
* ``cache_read_tokens`` / ``cache_write_tokens`` — subsets of ``input_tokens``;
* ``cache_write_1h_tokens`` — subset of ``cache_write_tokens`` written with a long TTL
  (Anthropic's 1 h, OpenAI's 12 h), priced at the long-TTL write rate;
* ``reasoning_tokens`` — subset of ``output_tokens``.

The functions here take the response as the provider's REST API returns it (parsed JSON),
or the SDK's response object (anything with ``model_dump()``, e.g. the pydantic models of
the ``openai``, ``anthropic`` and ``google-genai`` SDKs), or just its usage sub-object, and
return that ``usage`` dict: the four input/output/cache counts and ``cache_write_1h_tokens``
always, ``reasoning_tokens`` when the provider reports it. :func:`call_event` builds a
whole v1 event, and ``event_from_*`` do both in one call, also taking the model the
provider reported.

Mapping (field names as in each provider's API reference and SDK types — ``openai``
3.51, ``anthropic`` 2.10, ``google-genai`` 3.3; a ``+`` sums, ``/`` gives the Chat
Completions and the Responses API name)

OpenAI — Chat Completions ``usage`` (``CompletionUsage``) / Responses API ``usage``
(``ResponseUsage``). Both input counts include cache reads and cache writes: the SDK's
Usage API types define ``input_tokens`` as "including cached and cache-write tokens" and
split off ``input_uncached_tokens`` "excluding cache-write tokens", and ``total_tokens``
is input + output; so they pass through.

=========================  ===========================================================
v1 ``usage``               source
=========================  ===========================================================
``input_tokens``           ``prompt_tokens`` / ``input_tokens``
``output_tokens``          ``completion_tokens`` / ``output_tokens`` (reasoning
                           included)
``cache_read_tokens``      ``prompt_tokens_details.cached_tokens`` /
                           ``input_tokens_details.cached_tokens``
``cache_write_tokens``     ``prompt_tokens_details.cache_write_tokens`` /
                           ``input_tokens_details.cache_write_tokens`` (else the sum of
                           its ``cache_write_tokens_details.ttl_30m/12h_tokens``)
``cache_write_1h_tokens``  ``input_tokens_details.cache_write_tokens_details
                           .ttl_12h_tokens``; 0 for Chat Completions (30 min TTL only)
``reasoning_tokens``       ``completion_tokens_details.reasoning_tokens`` /
                           ``output_tokens_details.reasoning_tokens``; absent when the
                           details object is not reported
=========================  ===========================================================

Not read: ``total_tokens``; the modality splits (``text/audio/image_tokens``) and the
Predicted Outputs counts (``accepted/rejected_prediction_tokens``, both inside
``completion_tokens``).

Anthropic — Messages API ``usage`` (``Usage``; its ``input_tokens`` excludes both cache
classes):

=========================  ===========================================================
``input_tokens``           ``input_tokens + cache_creation_input_tokens
                           + cache_read_input_tokens``
``output_tokens``          ``output_tokens`` (extended thinking included)
``cache_read_tokens``      ``cache_read_input_tokens``
``cache_write_tokens``     ``cache_creation_input_tokens`` (else the sum of
                           ``cache_creation.ephemeral_5m/1h_input_tokens``)
``cache_write_1h_tokens``  ``cache_creation.ephemeral_1h_input_tokens``
``reasoning_tokens``       ``output_tokens_details.thinking_tokens``; absent when not
                           reported
=========================  ===========================================================

Not read, as they change the price of a call and not its token counts: ``service_tier``
(priority/batch), ``inference_geo`` (regional inference), ``speed`` (fast mode) and
``server_tool_use`` (web search/fetch requests, billed per request; their results are
already in ``input_tokens``).

Gemini — ``GenerateContentResponse.usageMetadata`` (``GenerateContentResponseUsageMetadata``;
camelCase over REST, the SDK's ``model_dump()`` gives ``usage_metadata.prompt_token_count``
etc., also read):

=========================  ===========================================================
``input_tokens``           ``promptTokenCount`` (cached content included)
                           ``+ toolUsePromptTokenCount``
``output_tokens``          ``candidatesTokenCount + thoughtsTokenCount`` (candidates
                           exclude thoughts)
``cache_read_tokens``      ``cachedContentTokenCount``
``cache_write_tokens``     0 (explicit caches are created by a separate call, not per
                           request)
``cache_write_1h_tokens``  0
``reasoning_tokens``       ``thoughtsTokenCount`` (0 when omitted)
=========================  ===========================================================

Not read: ``totalTokenCount`` (only to tell usage from none), the per-modality
breakdowns (``promptTokensDetails``, ``cacheTokensDetails``, ``candidatesTokensDetails``,
``toolUsePromptTokensDetails``) and ``trafficType`` (a price matter).

So ``input_tokens + output_tokens`` equals OpenAI's and Gemini's ``total_tokens`` /
``totalTokenCount``, and the sum of all four Anthropic counts. Audio and image tokens are
priced as text: v1 has no per-modality price class.

Missing or ``null`` counts and sub-objects count as 0 (providers omit zero counts, and
OpenAI-compatible servers often leave the details out). A response without any usage
raises :class:`ValueError`, as does a count that is negative, not an integer, or a part
larger than its total — cache reads + writes over the input, TTL parts over the writes,
reasoning over the output, Gemini's cached content over its prompt (the decoder would
reject such an event anyway, or it would mean the counts are not what this mapping
assumes; failing at the source tells the app where the bug is).

Not covered: streamed responses must be reduced to their final usage first (OpenAI:
the last chunk with ``stream_options={"include_usage": true}``; Anthropic: input counts
from ``message_start`` plus the final ``output_tokens`` of ``message_delta``; Gemini: the
last chunk's ``usageMetadata``). The beta Messages API's ``usage.iterations`` (compaction,
advisor and fallback iterations, partly not in the top-level counts and partly billed at
another model's rates) is not read: only the top-level counts are.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "call_event",
    "event_from_anthropic",
    "event_from_gemini",
    "event_from_openai",
    "usage_from_anthropic",
    "usage_from_gemini",
    "usage_from_openai",
]


@runtime_checkable
class _ModelDump(Protocol):
    """SDK response objects (pydantic models) expose their JSON shape through this."""

    def model_dump(self) -> dict[str, Any]: ...


Response = Mapping[str, Any] | _ModelDump
"""A provider response (or its usage object): parsed JSON, or an SDK pydantic object."""


# --------------------------------------------------------------------------- helpers


def _as_mapping(obj: Response, provider: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, _ModelDump):
        dumped = obj.model_dump()
        if isinstance(dumped, Mapping):
            return dumped
    raise ValueError(
        f"{provider} response: expected a dict (parsed JSON) or an SDK object with "
        f"model_dump(), got {type(obj).__name__}"
    )


def _sub(obj: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """The first of ``keys`` that holds an object; ``{}`` when all are missing or null."""
    for key in keys:
        value = obj.get(key)
        if isinstance(value, Mapping):
            return value
    return {}


def _count(obj: Mapping[str, Any], *keys: str, where: str) -> int | None:
    """Token count under the first present, non-null key of ``keys``; None when none is.

    JSON numbers that are whole floats (``12.0``, written by some proxies) are accepted;
    anything else that is not a non-negative integer is an error rather than a silent 0.
    """
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}.{key}: token count must be an integer, got {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{where}.{key}: token count must be an integer, got {value!r}")
            value = int(value)
        if value < 0:
            raise ValueError(f"{where}.{key}: token count must be >= 0, got {value}")
        return int(value)
    return None


def _check(usage: dict[str, int], provider: str) -> dict[str, int]:
    """Reject counts whose subsets exceed their totals (the decoder would reject them)."""
    cached = usage.get("cache_read_tokens", 0) + usage.get("cache_write_tokens", 0)
    if cached > usage["input_tokens"]:
        raise ValueError(
            f"{provider} usage is inconsistent: cache read + write ({cached}) > "
            f"input ({usage['input_tokens']})"
        )
    if usage.get("cache_write_1h_tokens", 0) > usage.get("cache_write_tokens", 0):
        raise ValueError(
            f"{provider} usage is inconsistent: long-TTL cache writes "
            f"({usage['cache_write_1h_tokens']}) > cache writes ({usage['cache_write_tokens']})"
        )
    if usage.get("reasoning_tokens", 0) > usage["output_tokens"]:
        raise ValueError(
            f"{provider} usage is inconsistent: reasoning ({usage['reasoning_tokens']}) > "
            f"output ({usage['output_tokens']})"
        )
    return usage


def _cache_writes(
    total: int | None,
    by_ttl: Mapping[str, Any],
    *,
    short_key: str,
    long_key: str,
    where: str,
    provider: str,
) -> tuple[int, int]:
    """Cache writes and their long-TTL part, from the total and/or its breakdown by TTL.

    The providers' parts add up to the total; without the total (older responses, some
    proxies) their sum stands in for it. Parts exceeding the total are an error; parts
    short of it are accepted, as a TTL class not broken down here would leave them.
    """
    short = _count(by_ttl, short_key, where=where)
    long = _count(by_ttl, long_key, where=where)
    parts = (short or 0) + (long or 0)
    if total is None:
        return parts, long or 0
    if parts > total:
        raise ValueError(
            f"{provider} usage is inconsistent: cache writes by TTL ({parts}) > "
            f"cache writes ({total})"
        )
    return total, long or 0


def _usage_object(
    obj: Response, *, provider: str, container_keys: tuple[str, ...], marker_keys: tuple[str, ...]
) -> Mapping[str, Any]:
    """The usage sub-object of a full response, or ``obj`` itself when it is one."""
    data = _as_mapping(obj, provider)
    for key in container_keys:
        if key in data:
            usage = data[key]
            if isinstance(usage, Mapping):
                return usage
            raise ValueError(f"{provider} response has no usage ({key!r} is {usage!r})")
    if any(key in data for key in marker_keys):
        return data
    raise ValueError(
        f"{provider} response has no usage: expected a {' or '.join(map(repr, container_keys))} "
        f"object (or the usage object itself, with one of {', '.join(marker_keys)})"
    )


# --------------------------------------------------------------------------- usage


def usage_from_openai(response_or_usage: Response) -> dict[str, int]:
    """v1 usage from an OpenAI Chat Completions or Responses API response (or its usage).

    Both APIs count cache reads and cache writes inside the input and reasoning tokens
    inside the output, so the totals pass through. Writes come with a breakdown by TTL
    in the Responses API; its 12 h part is the long-TTL class (``cache_write_1h_tokens``).
    """
    u = _usage_object(
        response_or_usage,
        provider="OpenAI",
        container_keys=("usage",),
        marker_keys=("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"),
    )
    # Chat Completions names first, Responses API names second.
    input_tokens = _count(u, "prompt_tokens", "input_tokens", where="usage")
    output_tokens = _count(u, "completion_tokens", "output_tokens", where="usage")
    if input_tokens is None and output_tokens is None:
        raise ValueError(
            "OpenAI usage has neither prompt_tokens/completion_tokens (Chat Completions) nor "
            "input_tokens/output_tokens (Responses API)"
        )
    in_details = _sub(u, "prompt_tokens_details", "input_tokens_details")
    out_details = _sub(u, "completion_tokens_details", "output_tokens_details")
    cache_write, cache_write_1h = _cache_writes(
        _count(in_details, "cache_write_tokens", where="usage.details"),
        _sub(in_details, "cache_write_tokens_details"),
        short_key="ttl_30m_tokens",
        long_key="ttl_12h_tokens",
        where="usage.details.cache_write_tokens_details",
        provider="OpenAI",
    )
    usage = {
        "input_tokens": input_tokens or 0,
        "output_tokens": output_tokens or 0,
        "cache_read_tokens": _count(in_details, "cached_tokens", where="usage.details") or 0,
        "cache_write_tokens": cache_write,
        "cache_write_1h_tokens": cache_write_1h,
    }
    reasoning = _count(out_details, "reasoning_tokens", where="usage.details")
    if reasoning is not None:
        usage["reasoning_tokens"] = reasoning
    return _check(usage, "OpenAI")


def usage_from_anthropic(response_or_usage: Response) -> dict[str, int]:
    """v1 usage from an Anthropic Messages API response (or its ``usage``).

    Anthropic's ``input_tokens`` counts only the input after the last cache breakpoint:
    cache reads and writes are added to make the v1 total. The 1 h part of the writes is
    the long-TTL class. Extended thinking is billed inside ``output_tokens``; its count
    (``output_tokens_details.thinking_tokens``) becomes ``reasoning_tokens`` when
    reported. Service tier, inference region, speed and server tool requests change the
    price of a call, not its token counts, and are not read.
    """
    u = _usage_object(
        response_or_usage,
        provider="Anthropic",
        container_keys=("usage",),
        marker_keys=("input_tokens", "output_tokens"),
    )
    uncached = _count(u, "input_tokens", where="usage")
    output = _count(u, "output_tokens", where="usage")
    if uncached is None and output is None:
        raise ValueError("Anthropic usage has neither input_tokens nor output_tokens")
    cache_write, cache_write_1h = _cache_writes(
        _count(u, "cache_creation_input_tokens", where="usage"),
        _sub(u, "cache_creation"),
        short_key="ephemeral_5m_input_tokens",
        long_key="ephemeral_1h_input_tokens",
        where="usage.cache_creation",
        provider="Anthropic",
    )
    cache_read = _count(u, "cache_read_input_tokens", where="usage") or 0
    usage = {
        "input_tokens": (uncached or 0) + cache_write + cache_read,
        "output_tokens": output or 0,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "cache_write_1h_tokens": cache_write_1h,
    }
    thinking = _count(
        _sub(u, "output_tokens_details"), "thinking_tokens", where="usage.output_tokens_details"
    )
    if thinking is not None:
        usage["reasoning_tokens"] = thinking
    return _check(usage, "Anthropic")


_GEMINI_KEYS = {
    # REST (camelCase) → google-genai SDK model_dump() (snake_case)
    "promptTokenCount": "prompt_token_count",
    "candidatesTokenCount": "candidates_token_count",
    "cachedContentTokenCount": "cached_content_token_count",
    "thoughtsTokenCount": "thoughts_token_count",
    "toolUsePromptTokenCount": "tool_use_prompt_token_count",
    "totalTokenCount": "total_token_count",
}


def usage_from_gemini(response_or_usage: Response) -> dict[str, int]:
    """v1 usage from a Gemini ``generateContent`` response (or its ``usageMetadata``).

    ``promptTokenCount`` already includes the cached-content tokens; tool-use prompt
    tokens are counted apart and added. ``candidatesTokenCount`` excludes thinking, so
    ``thoughtsTokenCount`` is added to the output and reported as reasoning. The
    per-modality breakdowns and the traffic type are not read (they split the counts or
    change their price, not the counts).
    """
    u = _usage_object(
        response_or_usage,
        provider="Gemini",
        container_keys=("usageMetadata", "usage_metadata"),
        marker_keys=tuple(_GEMINI_KEYS) + tuple(_GEMINI_KEYS.values()),
    )

    def count(key: str) -> int | None:
        return _count(u, key, _GEMINI_KEYS[key], where="usageMetadata")

    prompt, candidates = count("promptTokenCount"), count("candidatesTokenCount")
    total = count("totalTokenCount")
    if prompt is None and candidates is None and total is None:
        raise ValueError("Gemini usageMetadata has no promptTokenCount/candidatesTokenCount")
    cached = count("cachedContentTokenCount") or 0
    if cached > (prompt or 0):
        # The cached content is part of the prompt; more of it than prompt means the
        # counts mean something other than what this mapping assumes.
        raise ValueError(
            f"Gemini usage is inconsistent: cached content ({cached}) > prompt ({prompt or 0})"
        )
    thoughts = count("thoughtsTokenCount") or 0
    return _check(
        {
            "input_tokens": (prompt or 0) + (count("toolUsePromptTokenCount") or 0),
            "output_tokens": (candidates or 0) + thoughts,
            "cache_read_tokens": cached,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": thoughts,
        },
        "Gemini",
    )


# --------------------------------------------------------------------------- events


def _rfc3339_ms(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        # A naive time is ambiguous (local? UTC?); the event contract requires an offset.
        raise ValueError("ts: a datetime needs a timezone (e.g. datetime.now(UTC))")
    utc = dt.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def call_event(
    *,
    tenant_id: str,
    model: str,
    usage: Mapping[str, int],
    event_id: str | None = None,
    ts: str | int | datetime | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A call event v1 as a dict, ready for ``CallEventProducer.send`` (``producer.py``).

    ``event_id`` defaults to a random UUID (hex); pass your own request id to make app
    retries deduplicate. ``ts`` is the call start: an RFC 3339 string, epoch ms or an
    aware ``datetime``; default now (UTC, millisecond precision). ``fields`` are the
    optional v1 fields (``app``, ``provider``, ``served_model``, ``latency_ms``,
    ``status``, ``retrieval``, ...); ``None`` values are dropped.
    """
    if not tenant_id or not isinstance(tenant_id, str):
        raise ValueError(f"tenant_id must be a non-empty string, got {tenant_id!r}")
    if not model or not isinstance(model, str):
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    if ts is None:
        ts = datetime.now(UTC)
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id if event_id is not None else uuid.uuid4().hex,
        "ts": _rfc3339_ms(ts) if isinstance(ts, datetime) else ts,
        "tenant_id": tenant_id,
        "model": model,
        "usage": dict(usage),
    }
    for key, value in fields.items():
        if value is not None:
            event[key] = value
    return event


def _event(
    usage: dict[str, int],
    served: Any,
    provider: str,
    tenant_id: str,
    fields: dict[str, Any],
) -> dict[str, Any]:
    served_model = served if isinstance(served, str) and served else None
    # The caller knows what it asked for (an alias such as "gpt-4o"); the response says
    # what actually answered (a dated snapshot). Fall back to the served one.
    model = fields.pop("model", None) or served_model
    if not model:
        raise ValueError(
            f"{provider} response names no model: pass model= (the requested model id)"
        )
    fields.setdefault("provider", provider)
    fields.setdefault("served_model", served_model)
    return call_event(tenant_id=tenant_id, model=model, usage=usage, **fields)


def event_from_openai(response: Response, *, tenant_id: str, **fields: Any) -> dict[str, Any]:
    """A v1 event from an OpenAI Chat Completions / Responses API response.

    ``served_model`` is the response's ``model``; ``model`` (the requested id) defaults
    to it. Other keyword arguments are passed to :func:`call_event`.
    """
    data = _as_mapping(response, "OpenAI")
    return _event(usage_from_openai(data), data.get("model"), "openai", tenant_id, fields)


def event_from_anthropic(response: Response, *, tenant_id: str, **fields: Any) -> dict[str, Any]:
    """A v1 event from an Anthropic Messages API response (``served_model`` = its ``model``)."""
    data = _as_mapping(response, "Anthropic")
    return _event(usage_from_anthropic(data), data.get("model"), "anthropic", tenant_id, fields)


def event_from_gemini(response: Response, *, tenant_id: str, **fields: Any) -> dict[str, Any]:
    """A v1 event from a Gemini ``generateContent`` response (``served_model`` =
    ``modelVersion``). Pass ``model=`` with the model you called: the response's
    ``modelVersion`` may name a different (preview or dated) version."""
    data = _as_mapping(response, "Gemini")
    served = data.get("modelVersion", data.get("model_version"))
    return _event(usage_from_gemini(data), served, "google", tenant_id, fields)
