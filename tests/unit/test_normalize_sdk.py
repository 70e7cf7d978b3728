"""Usage normalisers against the providers' own SDK types (``openai``, ``anthropic`` and
``google-genai``, pinned in the dev extra): responses built with the SDK models map to the
v1 usage convention whether passed as the SDK object, its ``model_dump()`` or the REST JSON
it serialises to; every field of every SDK usage model is either mapped or listed as
consciously ignored, and the listing is checked against the SDK's field set and against
what the normaliser actually reads, so an SDK bump breaks a test here rather than a bill;
the events decode with exactly those counts; and for random SDK usage objects the v1
invariants hold, or a ``ValueError`` names the inconsistency."""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from typing import Any, NamedTuple, Union, get_args, get_origin

import msgspec
import pydantic
import pytest
from anthropic.types import CacheCreation, Message, ServerToolUsage, TextBlock, Usage
from anthropic.types import OutputTokensDetails as AnthropicOutputTokensDetails
from google.genai import types as genai
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.completion_usage import (
    CompletionTokensDetails,
    CompletionUsage,
    PromptTokensDetails,
)
from openai.types.responses import Response, ResponseUsage
from openai.types.responses.response_usage import (
    InputTokensDetails,
    InputTokensDetailsCacheWriteTokensDetails,
    OutputTokensDetails,
)

from llmops_stream.stream.core.decode import decode_batch
from llmops_stream.stream.normalize import (
    call_event,
    event_from_anthropic,
    event_from_gemini,
    event_from_openai,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai,
)

# --------------------------------------------------------------------------- SDK responses


def chat_completion(usage: CompletionUsage | None) -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-CbVx1",
        object="chat.completion",
        created=1_790_000_000,
        model="gpt-5.4-mini-2026-03-17",
        choices=[
            Choice(
                index=0,
                finish_reason="stop",
                message=ChatCompletionMessage(role="assistant", content="42"),
            )
        ],
        usage=usage,
        service_tier="default",
    )


def responses_response(usage: ResponseUsage | None) -> Response:
    return Response(
        id="resp_0a1b2c",
        object="response",
        created_at=1_790_000_000,
        status="completed",
        model="gpt-5.5-2026-04-23",
        output=[],
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        usage=usage,
    )


def anthropic_message(usage: Usage) -> Message:
    return Message(
        id="msg_01XFDUDYJgAACzvnptvVoYEL",
        type="message",
        role="assistant",
        model="claude-sonnet-4-5-20250929",
        content=[TextBlock(type="text", text="Hello!")],
        stop_reason="end_turn",
        stop_sequence=None,
        usage=usage,
    )


def gemini_response(usage: genai.GenerateContentResponseUsageMetadata) -> Any:
    return genai.GenerateContentResponse(
        candidates=[
            genai.Candidate(
                content=genai.Content(role="model", parts=[genai.Part(text="Here it is.")]),
                finish_reason=genai.FinishReason.STOP,
                index=0,
            )
        ],
        model_version="gemini-2.5-flash-preview-09-2025",
        response_id="mAitaLmkHPPlz7IPvtfUqQ4",
        usage_metadata=usage,
    )


def modality(kind: str, count: int) -> genai.ModalityTokenCount:
    return genai.ModalityTokenCount(modality=genai.MediaModality(kind), token_count=count)


FORMS = ("sdk", "model_dump", "rest_json")


def as_form(obj: pydantic.BaseModel, form: str) -> Any:
    """``obj`` as the app may hold it: the SDK object, its model_dump(), or the REST JSON."""
    if form == "sdk":
        return obj
    if form == "model_dump":
        return obj.model_dump()
    # On the wire: camelCase for Gemini (the SDK's aliases), null fields left out.
    return json.loads(obj.model_dump_json(by_alias=True, exclude_none=True))


# --------------------------------------------------------------------------- cases


class Case(NamedTuple):
    response: pydantic.BaseModel
    usage: pydantic.BaseModel
    normalise: Callable[[Any], dict[str, int]]
    make_event: Callable[..., dict[str, Any]]
    expected: dict[str, int]

    @property
    def served_model(self) -> str:
        dumped = self.response.model_dump()
        return str(dumped.get("model_version") or dumped["model"])


def _chat_case(usage: CompletionUsage, expected: dict[str, int]) -> Case:
    return Case(chat_completion(usage), usage, usage_from_openai, event_from_openai, expected)


def _responses_case(usage: ResponseUsage, expected: dict[str, int]) -> Case:
    return Case(responses_response(usage), usage, usage_from_openai, event_from_openai, expected)


def _anthropic_case(usage: Usage, expected: dict[str, int]) -> Case:
    return Case(
        anthropic_message(usage), usage, usage_from_anthropic, event_from_anthropic, expected
    )


def _gemini_case(usage: genai.GenerateContentResponseUsageMetadata, exp: dict[str, int]) -> Case:
    return Case(gemini_response(usage), usage, usage_from_gemini, event_from_gemini, exp)


CASES: dict[str, Case] = {
    # Chat Completions reports writes (30 min TTL only: no TTL breakdown).
    "openai-chat-cache-write": _chat_case(
        CompletionUsage(
            prompt_tokens=12_000,
            completion_tokens=900,
            total_tokens=12_900,
            prompt_tokens_details=PromptTokensDetails(
                cached_tokens=4_096,
                cache_write_tokens=7_000,
                text_tokens=11_000,
                image_tokens=1_000,
                audio_tokens=0,
            ),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=640,
                text_tokens=260,
                audio_tokens=0,
                accepted_prediction_tokens=0,
                rejected_prediction_tokens=0,
            ),
        ),
        {
            "input_tokens": 12_000,
            "output_tokens": 900,
            "cache_read_tokens": 4_096,
            "cache_write_tokens": 7_000,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 640,
        },
    ),
    "openai-chat-totals-only": _chat_case(
        CompletionUsage(prompt_tokens=100, completion_tokens=7, total_tokens=107),
        {
            "input_tokens": 100,
            "output_tokens": 7,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
        },
    ),
    # Responses API: writes split by TTL; the 12 h ones are the long-TTL class.
    "openai-responses-cache-write-ttl": _responses_case(
        ResponseUsage(
            input_tokens=48_000,
            input_tokens_details=InputTokensDetails(
                cached_tokens=16_000,
                cache_write_tokens=30_000,
                cache_write_tokens_details=InputTokensDetailsCacheWriteTokensDetails(
                    ttl_30m_tokens=12_000, ttl_12h_tokens=18_000
                ),
            ),
            output_tokens=1_500,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=1_100),
            total_tokens=49_500,
        ),
        {
            "input_tokens": 48_000,
            "output_tokens": 1_500,
            "cache_read_tokens": 16_000,
            "cache_write_tokens": 30_000,
            "cache_write_1h_tokens": 18_000,
            "reasoning_tokens": 1_100,
        },
    ),
    "openai-responses-cache-write-no-ttl": _responses_case(
        ResponseUsage(
            input_tokens=5_000,
            input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=2_048),
            output_tokens=20,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            total_tokens=5_020,
        ),
        {
            "input_tokens": 5_000,
            "output_tokens": 20,
            "cache_read_tokens": 0,
            "cache_write_tokens": 2_048,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 0,
        },
    ),
    # Every optional Anthropic field set: tier, geo, speed and server tool requests change
    # the price of a token, not the count.
    "anthropic-1h-write-thinking": _anthropic_case(
        Usage(
            input_tokens=120,
            cache_creation_input_tokens=9_000,
            cache_read_input_tokens=40_000,
            cache_creation=CacheCreation(
                ephemeral_5m_input_tokens=2_500, ephemeral_1h_input_tokens=6_500
            ),
            output_tokens=2_000,
            output_tokens_details=AnthropicOutputTokensDetails(thinking_tokens=1_400),
            server_tool_use=ServerToolUsage(web_search_requests=3, web_fetch_requests=1),
            service_tier="priority",
            inference_geo="us",
            speed="fast",
        ),
        {
            "input_tokens": 120 + 9_000 + 40_000,
            "output_tokens": 2_000,
            "cache_read_tokens": 40_000,
            "cache_write_tokens": 9_000,
            "cache_write_1h_tokens": 6_500,
            "reasoning_tokens": 1_400,
        },
    ),
    "anthropic-ttl-breakdown-only": _anthropic_case(
        Usage(
            input_tokens=10,
            output_tokens=5,
            cache_creation=CacheCreation(
                ephemeral_5m_input_tokens=300, ephemeral_1h_input_tokens=700
            ),
        ),
        {
            "input_tokens": 1_010,
            "output_tokens": 5,
            "cache_read_tokens": 0,
            "cache_write_tokens": 1_000,
            "cache_write_1h_tokens": 700,
        },
    ),
    "gemini-all-fields": _gemini_case(
        genai.GenerateContentResponseUsageMetadata(
            prompt_token_count=12_000,
            prompt_tokens_details=[modality("TEXT", 11_000), modality("IMAGE", 1_000)],
            cached_content_token_count=8_192,
            cache_tokens_details=[modality("TEXT", 8_192)],
            candidates_token_count=350,
            candidates_tokens_details=[modality("TEXT", 350)],
            thoughts_token_count=1_230,
            tool_use_prompt_token_count=300,
            tool_use_prompt_tokens_details=[modality("TEXT", 300)],
            total_token_count=12_000 + 350 + 1_230 + 300,
            traffic_type=genai.TrafficType.ON_DEMAND,
        ),
        {
            "input_tokens": 12_300,
            "output_tokens": 1_580,
            "cache_read_tokens": 8_192,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 1_230,
        },
    ),
}

COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)


def decoded_columns(events: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Decode the events (JSON as the producer sends them); all must be accepted."""
    batch, rejected = decode_batch([msgspec.json.encode(e) for e in events])
    assert len(rejected) == 0, list(zip(rejected.reason, rejected.detail, strict=True))
    assert batch.n == len(events)
    return [{k: int(getattr(batch, k)[i]) for k in COLUMNS} for i in range(batch.n)]


def as_columns(usage: dict[str, int]) -> dict[str, int]:
    """The decoded token columns of ``usage``: an absent optional count decodes as 0."""
    return {k: usage.get(k, 0) for k in COLUMNS}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", CASES)
def test_usage_from_sdk_response(name: str, form: str) -> None:
    case = CASES[name]
    assert case.normalise(as_form(case.response, form)) == case.expected
    # The usage object alone gives the same.
    assert case.normalise(as_form(case.usage, form)) == case.expected


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", CASES)
def test_sdk_events_decode_with_exact_tokens(name: str, form: str) -> None:
    case = CASES[name]
    event = case.make_event(as_form(case.response, form), tenant_id="acme", app="doc-qa")
    assert event["served_model"] == case.served_model
    (columns,) = decoded_columns([event])
    assert columns == as_columns(case.expected)


def test_sdk_events_decode_in_one_batch() -> None:
    events = [
        case.make_event(case.response, tenant_id=f"t{i}", model="requested")
        for i, case in enumerate(CASES.values())
    ]
    assert decoded_columns(events) == [as_columns(c.expected) for c in CASES.values()]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("normalise", "response", "message"),
    [
        pytest.param(
            usage_from_openai,
            chat_completion(
                CompletionUsage(
                    prompt_tokens=100,
                    completion_tokens=1,
                    total_tokens=101,
                    prompt_tokens_details=PromptTokensDetails(
                        cached_tokens=60, cache_write_tokens=50
                    ),
                )
            ),
            r"cache read \+ write \(110\) > input \(100\)",
            id="chat-reads-plus-writes-over-input",
        ),
        pytest.param(
            usage_from_openai,
            responses_response(
                ResponseUsage(
                    input_tokens=100,
                    input_tokens_details=InputTokensDetails(
                        cached_tokens=0,
                        cache_write_tokens=100,
                        cache_write_tokens_details=InputTokensDetailsCacheWriteTokensDetails(
                            ttl_30m_tokens=60, ttl_12h_tokens=50
                        ),
                    ),
                    output_tokens=1,
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                    total_tokens=101,
                )
            ),
            r"cache writes by TTL \(110\) > cache writes \(100\)",
            id="responses-ttl-parts-over-writes",
        ),
        pytest.param(
            usage_from_openai,
            responses_response(
                ResponseUsage(
                    input_tokens=100,
                    input_tokens_details=InputTokensDetails(
                        cached_tokens=1, cache_write_tokens=100
                    ),
                    output_tokens=1,
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                    total_tokens=101,
                )
            ),
            r"cache read \+ write \(101\) > input \(100\)",
            id="responses-reads-plus-writes-over-input",
        ),
        pytest.param(
            usage_from_anthropic,
            anthropic_message(
                Usage(
                    input_tokens=1,
                    output_tokens=1,
                    cache_creation_input_tokens=100,
                    cache_creation=CacheCreation(
                        ephemeral_5m_input_tokens=1, ephemeral_1h_input_tokens=100
                    ),
                )
            ),
            r"cache writes by TTL \(101\) > cache writes \(100\)",
            id="anthropic-ttl-parts-over-writes",
        ),
        pytest.param(
            usage_from_anthropic,
            anthropic_message(
                Usage(
                    input_tokens=1,
                    output_tokens=10,
                    output_tokens_details=AnthropicOutputTokensDetails(thinking_tokens=11),
                )
            ),
            r"reasoning \(11\) > output \(10\)",
            id="anthropic-thinking-over-output",
        ),
        pytest.param(
            usage_from_gemini,
            gemini_response(
                genai.GenerateContentResponseUsageMetadata(
                    prompt_token_count=10,
                    cached_content_token_count=11,
                    tool_use_prompt_token_count=50,
                    total_token_count=60,
                )
            ),
            r"cached content \(11\) > prompt \(10\)",
            id="gemini-cached-over-prompt",
        ),
    ],
)
def test_inconsistent_sdk_usage_raises(
    normalise: Callable[[Any], dict[str, int]],
    response: pydantic.BaseModel,
    message: str,
    form: str,
) -> None:
    with pytest.raises(ValueError, match="inconsistent: " + message):
        normalise(as_form(response, form))


# --------------------------------------------------------------------------- field guard


class Read(NamedTuple):
    """What a usage field does to the v1 usage, as the listings below claim it."""

    changes: tuple[str, ...]
    """The v1 counts that move when the field grows a little."""
    subset: bool = False
    """A part of a total: grown past every total, the response is rejected (ValueError)."""


IGNORED = None  # read by nothing: growing it changes no count and rejects nothing

FieldUse = Read | None

# Every leaf field of the SDK usage models (dotted paths, ``[]`` for a list's items).
# Mapped fields say what they feed; ignored ones say why the count does not need them.

OPENAI_CHAT_FIELDS: dict[str, FieldUse] = {
    "prompt_tokens": Read(("input_tokens",)),  # cache reads and writes included
    "completion_tokens": Read(("output_tokens",)),  # reasoning included
    "prompt_tokens_details.cached_tokens": Read(("cache_read_tokens",), subset=True),
    "prompt_tokens_details.cache_write_tokens": Read(("cache_write_tokens",), subset=True),
    "completion_tokens_details.reasoning_tokens": Read(("reasoning_tokens",), subset=True),
    # = prompt + completion; the property tests check that input + output equals it
    "total_tokens": IGNORED,
    # modality split of prompt_tokens; v1 has no per-modality price class
    "prompt_tokens_details.text_tokens": IGNORED,
    "prompt_tokens_details.audio_tokens": IGNORED,  # same split
    "prompt_tokens_details.image_tokens": IGNORED,  # same split
    # modality split of completion_tokens
    "completion_tokens_details.text_tokens": IGNORED,
    "completion_tokens_details.audio_tokens": IGNORED,  # same split
    # Predicted Outputs: inside completion_tokens, rejected ones billed as output too
    "completion_tokens_details.accepted_prediction_tokens": IGNORED,
    "completion_tokens_details.rejected_prediction_tokens": IGNORED,  # as above
}

OPENAI_RESPONSES_FIELDS: dict[str, FieldUse] = {
    "input_tokens": Read(("input_tokens",)),  # cache reads and writes included
    "output_tokens": Read(("output_tokens",)),  # reasoning included
    "input_tokens_details.cached_tokens": Read(("cache_read_tokens",), subset=True),
    "input_tokens_details.cache_write_tokens": Read(("cache_write_tokens",), subset=True),
    # the long-TTL class; the 30 min part is only checked against (or, without the total,
    # summed into) cache_write_tokens
    "input_tokens_details.cache_write_tokens_details.ttl_12h_tokens": Read(
        ("cache_write_1h_tokens",), subset=True
    ),
    "input_tokens_details.cache_write_tokens_details.ttl_30m_tokens": Read((), subset=True),
    "output_tokens_details.reasoning_tokens": Read(("reasoning_tokens",), subset=True),
    # = input + output; the property tests check that input + output equals it
    "total_tokens": IGNORED,
}

ANTHROPIC_FIELDS: dict[str, FieldUse] = {
    # Anthropic's input_tokens excludes both cache classes: v1 input is the sum of three.
    "input_tokens": Read(("input_tokens",)),
    "cache_creation_input_tokens": Read(("input_tokens", "cache_write_tokens")),
    "cache_read_input_tokens": Read(("input_tokens", "cache_read_tokens")),
    "output_tokens": Read(("output_tokens",)),  # thinking included
    "cache_creation.ephemeral_1h_input_tokens": Read(("cache_write_1h_tokens",), subset=True),
    # inside cache_creation_input_tokens; only summed in when that total is missing
    "cache_creation.ephemeral_5m_input_tokens": Read((), subset=True),
    "output_tokens_details.thinking_tokens": Read(("reasoning_tokens",), subset=True),
    # server tool requests are billed per request (web search), not as tokens; their
    # results are already counted in input_tokens
    "server_tool_use.web_search_requests": IGNORED,
    "server_tool_use.web_fetch_requests": IGNORED,  # as above; fetches cost tokens only
    # priority/batch tier, regional inference and fast mode change the price of a token,
    # not the token counts
    "service_tier": IGNORED,
    "inference_geo": IGNORED,  # as above
    "speed": IGNORED,  # as above
}

GEMINI_FIELDS: dict[str, FieldUse] = {
    "prompt_token_count": Read(("input_tokens",)),  # cached content included
    "tool_use_prompt_token_count": Read(("input_tokens",)),  # counted apart from the prompt
    "candidates_token_count": Read(("output_tokens",)),  # thoughts excluded
    "thoughts_token_count": Read(("output_tokens", "reasoning_tokens")),
    "cached_content_token_count": Read(("cache_read_tokens",), subset=True),
    # = prompt + candidates + tool use + thoughts; read only to tell usage from no usage,
    # the property tests check that input + output equals it
    "total_token_count": IGNORED,
    # modality splits of the counts above; v1 has no per-modality price class
    "prompt_tokens_details[].modality": IGNORED,
    "prompt_tokens_details[].token_count": IGNORED,
    "cache_tokens_details[].modality": IGNORED,  # same, for the cached content
    "cache_tokens_details[].token_count": IGNORED,
    "candidates_tokens_details[].modality": IGNORED,  # same, for the candidates
    "candidates_tokens_details[].token_count": IGNORED,
    "tool_use_prompt_tokens_details[].modality": IGNORED,  # same, for tool use
    "tool_use_prompt_tokens_details[].token_count": IGNORED,
    # Vertex AI pay-as-you-go / priority / flex / provisioned throughput: a price matter
    "traffic_type": IGNORED,
}

# A fully set response of each usage model (every leaf present), with headroom: each part
# well below its total, so growing a mapped field a little changes its count and nothing else.
BASELINES: dict[str, tuple[pydantic.BaseModel, dict[str, FieldUse], Any]] = {
    "openai-chat": (
        CompletionUsage(
            prompt_tokens=100_000,
            completion_tokens=50_000,
            total_tokens=150_000,
            prompt_tokens_details=PromptTokensDetails(
                cached_tokens=1_000,
                cache_write_tokens=2_000,
                text_tokens=90_000,
                audio_tokens=5_000,
                image_tokens=5_000,
            ),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=1_000,
                text_tokens=40_000,
                audio_tokens=10_000,
                accepted_prediction_tokens=3,
                rejected_prediction_tokens=4,
            ),
        ),
        OPENAI_CHAT_FIELDS,
        usage_from_openai,
    ),
    "openai-responses": (
        ResponseUsage(
            input_tokens=100_000,
            input_tokens_details=InputTokensDetails(
                cached_tokens=1_000,
                cache_write_tokens=3_000,
                cache_write_tokens_details=InputTokensDetailsCacheWriteTokensDetails(
                    ttl_30m_tokens=1_000, ttl_12h_tokens=1_000
                ),
            ),
            output_tokens=50_000,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=1_000),
            total_tokens=150_000,
        ),
        OPENAI_RESPONSES_FIELDS,
        usage_from_openai,
    ),
    "anthropic": (
        Usage(
            input_tokens=100,
            cache_creation_input_tokens=3_000,
            cache_read_input_tokens=1_000,
            cache_creation=CacheCreation(
                ephemeral_5m_input_tokens=1_000, ephemeral_1h_input_tokens=1_000
            ),
            output_tokens=50_000,
            output_tokens_details=AnthropicOutputTokensDetails(thinking_tokens=1_000),
            server_tool_use=ServerToolUsage(web_search_requests=2, web_fetch_requests=1),
            service_tier="standard",
            inference_geo="global",
            speed="standard",
        ),
        ANTHROPIC_FIELDS,
        usage_from_anthropic,
    ),
    "gemini": (
        genai.GenerateContentResponseUsageMetadata(
            prompt_token_count=100_000,
            prompt_tokens_details=[modality("TEXT", 100_000)],
            cached_content_token_count=1_000,
            cache_tokens_details=[modality("TEXT", 1_000)],
            candidates_token_count=40_000,
            candidates_tokens_details=[modality("TEXT", 40_000)],
            thoughts_token_count=10_000,
            tool_use_prompt_token_count=500,
            tool_use_prompt_tokens_details=[modality("TEXT", 500)],
            total_token_count=150_500,
            traffic_type=genai.TrafficType.ON_DEMAND,
        ),
        GEMINI_FIELDS,
        usage_from_gemini,
    ),
}


def _nested_model(annotation: Any) -> tuple[type[pydantic.BaseModel] | None, bool]:
    """The pydantic model inside a field's type (through Optional and list), and whether
    it sits in a list; ``(None, False)`` for a scalar field."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    if origin is list:
        inner, _ = _nested_model(get_args(annotation)[0])
        return inner, inner is not None
    if origin in (Union, types.UnionType):
        found = [_nested_model(a) for a in get_args(annotation)]
        models = [f for f in found if f[0] is not None]
        # One nested model per field is all the paths can express; a union of several
        # would need this guard to grow first.
        assert len(models) <= 1, f"{annotation}: several models"
        return models[0] if models else (None, False)
    return None, False


def leaf_fields(model: type[pydantic.BaseModel], prefix: str = "") -> set[str]:
    """Dotted paths of every scalar field of ``model``, recursively."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        nested, in_list = _nested_model(field.annotation)
        if nested is None:
            paths.add(prefix + name)
        else:
            paths |= leaf_fields(nested, f"{prefix}{name}{'[].' if in_list else '.'}")
    return paths


def _grown(usage: pydantic.BaseModel, path: str, by: int) -> dict[str, Any]:
    """``usage.model_dump()`` with the field at ``path`` grown by ``by`` (a list's first
    item for ``[]``); a field that is not a count is set to another value instead."""
    data = usage.model_dump()
    holder = data
    *parents, last = path.split(".")
    for key in parents:
        holder = holder[key.removesuffix("[]")][0] if key.endswith("[]") else holder[key]
    value = holder[last]
    assert value is not None, f"the baseline must set {path}"
    holder[last] = value + by if isinstance(value, int) else "another-value"
    return data


def _effect(normalise: Callable[[Any], dict[str, int]], data: dict[str, Any], before: Any) -> Any:
    """The v1 counts that differ from ``before`` (sorted), or "ValueError"."""
    try:
        after = normalise(data)
    except ValueError:
        return "ValueError"
    return tuple(sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k)))


def test_guard_sees_nested_and_listed_fields() -> None:
    # The guard itself: it must reach into details objects and into list items.
    assert "input_tokens_details.cache_write_tokens_details.ttl_12h_tokens" in leaf_fields(
        ResponseUsage
    )
    assert "prompt_tokens_details[].token_count" in leaf_fields(
        genai.GenerateContentResponseUsageMetadata
    )
    assert "cache_creation" not in leaf_fields(Usage)


@pytest.mark.parametrize("name", BASELINES)
def test_every_sdk_usage_field_is_mapped_or_ignored(name: str) -> None:
    usage, listing, _ = BASELINES[name]
    sdk_fields = leaf_fields(type(usage))
    # A new SDK field must be looked at (mapped or listed as ignored, with the reason);
    # a listed field the SDK no longer has means a rename or a changed meaning.
    assert sorted(sdk_fields - listing.keys()) == [], f"{name}: SDK fields not listed"
    assert sorted(listing.keys() - sdk_fields) == [], f"{name}: listed fields not in SDK"


@pytest.mark.parametrize("name", BASELINES)
def test_listed_fields_are_read_as_listed(name: str) -> None:
    # The listing is a claim about the normaliser; check it field by field: a mapped field
    # moves the v1 counts it names, a part is rejected once it outgrows its total, and an
    # ignored field does neither.
    usage, listing, normalise = BASELINES[name]
    before = normalise(usage.model_dump())
    wrong: dict[str, str] = {}
    for path, use in sorted(listing.items()):
        listed = tuple(sorted(use.changes)) if use else ()
        small = _effect(normalise, _grown(usage, path, 1), before)
        if small != listed:
            wrong[path] = f"grown by 1: {small}, listed {listed}"
        huge = _effect(normalise, _grown(usage, path, 10**9), before)
        if (huge == "ValueError") != bool(use and use.subset):
            wrong[path] = f"grown past every total: {huge}, listed as a part: {bool(use)}"
    assert wrong == {}


# --------------------------------------------------------------------------- properties

counts = st.integers(min_value=0, max_value=2_000_000)
maybe = st.none() | counts


def part_of(total: int, over: int = 50) -> st.SearchStrategy[int]:
    """A part of ``total``, now and then a little more than it (an inconsistent count)."""
    return st.integers(min_value=0, max_value=total + over)


def check_invariants(usage: dict[str, int]) -> None:
    """The v1 subset rules hold, and the decoder accepts the usage with those counts."""
    assert usage["cache_read_tokens"] + usage["cache_write_tokens"] <= usage["input_tokens"]
    assert usage["cache_write_1h_tokens"] <= usage["cache_write_tokens"]
    assert usage.get("reasoning_tokens", 0) <= usage["output_tokens"]
    event = call_event(tenant_id="acme", model="m", usage=usage, ts=1_795_420_000_000)
    (columns,) = decoded_columns([event])
    assert columns == as_columns(usage)


@st.composite
def chat_usages(draw: st.DrawFn) -> CompletionUsage:
    prompt, completion = draw(counts), draw(counts)
    prompt_details = draw(
        st.none()
        | st.builds(
            PromptTokensDetails,
            cached_tokens=st.none() | part_of(prompt),
            cache_write_tokens=st.none() | part_of(prompt),
            text_tokens=maybe,
            audio_tokens=maybe,
            image_tokens=maybe,
        )
    )
    completion_details = draw(
        st.none()
        | st.builds(
            CompletionTokensDetails,
            reasoning_tokens=st.none() | part_of(completion),
            text_tokens=maybe,
            audio_tokens=maybe,
            accepted_prediction_tokens=maybe,
            rejected_prediction_tokens=maybe,
        )
    )
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=prompt_details,
        completion_tokens_details=completion_details,
    )


@given(usage=chat_usages(), form=st.sampled_from(FORMS))
def test_openai_chat_sdk_properties(usage: CompletionUsage, form: str) -> None:
    pd = usage.prompt_tokens_details or PromptTokensDetails()
    cd = usage.completion_tokens_details or CompletionTokensDetails()
    reads, writes = pd.cached_tokens or 0, pd.cache_write_tokens or 0
    response = as_form(chat_completion(usage), form)
    if reads + writes > usage.prompt_tokens or (cd.reasoning_tokens or 0) > (
        usage.completion_tokens
    ):
        with pytest.raises(ValueError, match="inconsistent"):
            usage_from_openai(response)
        return
    v1 = usage_from_openai(response)
    check_invariants(v1)
    assert v1["input_tokens"] + v1["output_tokens"] == usage.total_tokens
    assert (v1["cache_read_tokens"], v1["cache_write_tokens"]) == (reads, writes)
    assert v1["cache_write_1h_tokens"] == 0  # Chat Completions writes 30 min entries only
    assert v1.get("reasoning_tokens") == cd.reasoning_tokens


@st.composite
def responses_usages(draw: st.DrawFn) -> ResponseUsage:
    input_tokens, output_tokens = draw(counts), draw(counts)
    writes = draw(part_of(input_tokens))
    short = draw(part_of(writes))
    ttl = draw(
        st.none()
        | st.builds(
            InputTokensDetailsCacheWriteTokensDetails,
            ttl_30m_tokens=st.just(short),
            ttl_12h_tokens=part_of(writes - short) if writes >= short else part_of(0),
        )
    )
    return ResponseUsage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(
            cached_tokens=draw(part_of(input_tokens - min(writes, input_tokens))),
            cache_write_tokens=writes,
            cache_write_tokens_details=ttl,
        ),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=draw(part_of(output_tokens))),
        total_tokens=input_tokens + output_tokens,
    )


@given(usage=responses_usages(), form=st.sampled_from(FORMS))
def test_openai_responses_sdk_properties(usage: ResponseUsage, form: str) -> None:
    details, ttl = usage.input_tokens_details, usage.input_tokens_details.cache_write_tokens_details
    long_ttl = ttl.ttl_12h_tokens if ttl else 0
    response = as_form(responses_response(usage), form)
    if (
        details.cached_tokens + details.cache_write_tokens > usage.input_tokens
        or usage.output_tokens_details.reasoning_tokens > usage.output_tokens
        or (
            ttl is not None and ttl.ttl_30m_tokens + ttl.ttl_12h_tokens > details.cache_write_tokens
        )
    ):
        with pytest.raises(ValueError, match="inconsistent"):
            usage_from_openai(response)
        return
    v1 = usage_from_openai(response)
    check_invariants(v1)
    assert v1["input_tokens"] + v1["output_tokens"] == usage.total_tokens
    assert v1 == {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": details.cached_tokens,
        "cache_write_tokens": details.cache_write_tokens,
        "cache_write_1h_tokens": long_ttl,
        "reasoning_tokens": usage.output_tokens_details.reasoning_tokens,
    }


@st.composite
def anthropic_usages(draw: st.DrawFn) -> Usage:
    output = draw(counts)
    writes = draw(maybe)
    if draw(st.booleans()):
        short = draw(part_of(writes or 0, over=0) if writes is not None else counts)
        rest = max((writes or 0) - short, 0)
        long_ttl = draw(part_of(rest) if writes is not None else counts)
        breakdown = CacheCreation(
            ephemeral_5m_input_tokens=short, ephemeral_1h_input_tokens=long_ttl
        )
    else:
        breakdown = None
    return Usage(
        input_tokens=draw(counts),
        cache_creation_input_tokens=writes,
        cache_read_input_tokens=draw(maybe),
        cache_creation=breakdown,
        output_tokens=output,
        output_tokens_details=draw(
            st.none() | st.builds(AnthropicOutputTokensDetails, thinking_tokens=part_of(output))
        ),
        server_tool_use=draw(
            st.none()
            | st.builds(ServerToolUsage, web_search_requests=counts, web_fetch_requests=counts)
        ),
        service_tier=draw(st.sampled_from([None, "standard", "priority", "batch"])),
        inference_geo=draw(st.sampled_from([None, "global", "us"])),
        speed=draw(st.sampled_from([None, "standard", "fast"])),
    )


@given(usage=anthropic_usages(), form=st.sampled_from(FORMS))
def test_anthropic_sdk_properties(usage: Usage, form: str) -> None:
    ttl = usage.cache_creation
    parts = ttl.ephemeral_5m_input_tokens + ttl.ephemeral_1h_input_tokens if ttl else 0
    writes = usage.cache_creation_input_tokens
    thinking = usage.output_tokens_details.thinking_tokens if usage.output_tokens_details else None
    response = as_form(anthropic_message(usage), form)
    if (writes is not None and parts > writes) or (thinking or 0) > usage.output_tokens:
        with pytest.raises(ValueError, match="inconsistent"):
            usage_from_anthropic(response)
        return
    v1 = usage_from_anthropic(response)
    check_invariants(v1)
    total_writes = writes if writes is not None else parts
    reads = usage.cache_read_input_tokens or 0
    # Nothing lost or counted twice: the v1 totals are the sum of Anthropic's four counts.
    assert v1["input_tokens"] + v1["output_tokens"] == (
        usage.input_tokens + total_writes + reads + usage.output_tokens
    )
    assert (v1["cache_read_tokens"], v1["cache_write_tokens"]) == (reads, total_writes)
    assert v1["cache_write_1h_tokens"] == (ttl.ephemeral_1h_input_tokens if ttl else 0)
    assert v1.get("reasoning_tokens") == thinking


def modality_counts() -> st.SearchStrategy[list[genai.ModalityTokenCount] | None]:
    kinds = st.sampled_from(["TEXT", "IMAGE", "AUDIO", "VIDEO", "DOCUMENT"])
    return st.none() | st.lists(st.builds(modality, kinds, counts), max_size=3)


@st.composite
def gemini_usages(draw: st.DrawFn) -> genai.GenerateContentResponseUsageMetadata:
    prompt, candidates, thoughts, tool = draw(maybe), draw(maybe), draw(maybe), draw(maybe)
    return genai.GenerateContentResponseUsageMetadata(
        prompt_token_count=prompt,
        prompt_tokens_details=draw(modality_counts()),
        cached_content_token_count=draw(st.none() | part_of(prompt or 0)),
        cache_tokens_details=draw(modality_counts()),
        candidates_token_count=candidates,
        candidates_tokens_details=draw(modality_counts()),
        thoughts_token_count=thoughts,
        tool_use_prompt_token_count=tool,
        tool_use_prompt_tokens_details=draw(modality_counts()),
        # As documented: the sum of prompt, candidates, tool use prompt and thoughts.
        total_token_count=sum(c or 0 for c in (prompt, candidates, thoughts, tool)),
        traffic_type=draw(st.none() | st.sampled_from(list(genai.TrafficType))),
    )


@given(usage=gemini_usages(), form=st.sampled_from(FORMS))
def test_gemini_sdk_properties(
    usage: genai.GenerateContentResponseUsageMetadata, form: str
) -> None:
    response = as_form(gemini_response(usage), form)
    cached, prompt = usage.cached_content_token_count or 0, usage.prompt_token_count or 0
    if cached > prompt:
        with pytest.raises(ValueError, match="inconsistent"):
            usage_from_gemini(response)
        return
    v1 = usage_from_gemini(response)
    check_invariants(v1)
    assert v1["input_tokens"] + v1["output_tokens"] == usage.total_token_count
    assert v1["cache_read_tokens"] == cached
    assert v1["reasoning_tokens"] == (usage.thoughts_token_count or 0)
    assert v1["input_tokens"] == prompt + (usage.tool_use_prompt_token_count or 0)
    assert (v1["cache_write_tokens"], v1["cache_write_1h_tokens"]) == (0, 0)
