"""Usage normalisers: responses shaped as the providers document them map to the v1 usage
convention (input includes cache reads/writes, output includes reasoning, long-TTL writes are
a part of the writes), the events built from them pass the decoder with exactly those counts,
and for any consistent provider counts the v1 invariants hold and no token is lost or counted
twice. The same against the providers' SDK types: ``test_normalize_sdk.py``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

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

# --------------------------------------------------------------------------- payloads

OPENAI_CHAT = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "o4-mini-2025-04-16",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The answer is 42.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2006,
        "completion_tokens": 1300,
        "total_tokens": 3306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 1024,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_6ec83003ad",
}

OPENAI_RESPONSES = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "In a peaceful grove...", "annotations": []}
            ],
        }
    ],
    "usage": {
        "input_tokens": 3328,
        "input_tokens_details": {"cached_tokens": 3072},
        "output_tokens": 452,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 3780,
    },
}

ANTHROPIC_CACHED = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 4000,
        "output_tokens": 393,
        "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
        "server_tool_use": None,
        "service_tier": "standard",
    },
}

ANTHROPIC_PLAIN = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "Hi, I'm Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 2095, "output_tokens": 503},
}

GEMINI = {
    "candidates": [
        {
            "content": {"parts": [{"text": "Here is the summary."}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 12000,
        "candidatesTokenCount": 350,
        "totalTokenCount": 13880,
        "cachedContentTokenCount": 8192,
        "thoughtsTokenCount": 1230,
        "toolUsePromptTokenCount": 300,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12000}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 8192}],
    },
    "modelVersion": "gemini-2.5-flash-preview-09-2025",
    "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
}

# The google-genai SDK's response.model_dump(): snake_case names, unset fields as None.
GEMINI_SDK_DUMP = {
    "candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}}],
    "model_version": "gemini-2.5-pro",
    "usage_metadata": {
        "prompt_token_count": 900,
        "candidates_token_count": 40,
        "cached_content_token_count": None,
        "thoughts_token_count": 200,
        "tool_use_prompt_token_count": None,
        "total_token_count": 1140,
    },
}

# Responses API with prompt cache writes (``prompt_cache_options.ttl``), split by TTL.
OPENAI_RESPONSES_CACHE_WRITE = {
    "id": "resp_0d3e62f0a1c2b7e9",
    "object": "response",
    "created_at": 1790000000,
    "status": "completed",
    "model": "gpt-5.5-2026-04-23",
    "output": [],
    "usage": {
        "input_tokens": 64000,
        "input_tokens_details": {
            "cached_tokens": 20000,
            "cache_write_tokens": 40000,
            "cache_write_tokens_details": {"ttl_30m_tokens": 4000, "ttl_12h_tokens": 36000},
        },
        "output_tokens": 700,
        "output_tokens_details": {"reasoning_tokens": 512},
        "total_tokens": 64700,
    },
}

# Anthropic with a 1 h cache write and a thinking-token count.
ANTHROPIC_1H = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-opus-4-7",
    "content": [{"type": "text", "text": "Done."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 50,
        "cache_creation_input_tokens": 30000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 30000},
        "output_tokens": 1200,
        "output_tokens_details": {"thinking_tokens": 800},
        "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
        "service_tier": "standard",
        "inference_geo": "global",
    },
}

CASES: list[tuple[str, Any, dict[str, Any], dict[str, int], str]] = [
    (
        "openai-chat",
        event_from_openai,
        OPENAI_CHAT,
        {
            "input_tokens": 2006,
            "output_tokens": 1300,
            "cache_read_tokens": 1920,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 1024,
        },
        "o4-mini-2025-04-16",
    ),
    (
        "openai-responses",
        event_from_openai,
        OPENAI_RESPONSES,
        {
            "input_tokens": 3328,
            "output_tokens": 452,
            "cache_read_tokens": 3072,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 0,
        },
        "gpt-4.1-2025-04-14",
    ),
    (
        "openai-responses-cache-write",
        event_from_openai,
        OPENAI_RESPONSES_CACHE_WRITE,
        {
            "input_tokens": 64000,
            "output_tokens": 700,
            "cache_read_tokens": 20000,
            "cache_write_tokens": 40000,
            "cache_write_1h_tokens": 36000,
            "reasoning_tokens": 512,
        },
        "gpt-5.5-2026-04-23",
    ),
    (
        "anthropic-1h-write",
        event_from_anthropic,
        ANTHROPIC_1H,
        {
            "input_tokens": 50 + 30000,
            "output_tokens": 1200,
            "cache_read_tokens": 0,
            "cache_write_tokens": 30000,
            "cache_write_1h_tokens": 30000,
            "reasoning_tokens": 800,
        },
        "claude-opus-4-7",
    ),
    (
        "anthropic-cached",
        event_from_anthropic,
        ANTHROPIC_CACHED,
        {
            "input_tokens": 21 + 188086 + 4000,
            "output_tokens": 393,
            "cache_read_tokens": 4000,
            "cache_write_tokens": 188086,
            "cache_write_1h_tokens": 0,
        },
        "claude-sonnet-4-20250514",
    ),
    (
        "anthropic-plain",
        event_from_anthropic,
        ANTHROPIC_PLAIN,
        {
            "input_tokens": 2095,
            "output_tokens": 503,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
        },
        "claude-3-5-haiku-20241022",
    ),
    (
        "gemini",
        event_from_gemini,
        GEMINI,
        {
            "input_tokens": 12000 + 300,
            "output_tokens": 350 + 1230,
            "cache_read_tokens": 8192,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 1230,
        },
        "gemini-2.5-flash-preview-09-2025",
    ),
    (
        "gemini-sdk-dump",
        event_from_gemini,
        GEMINI_SDK_DUMP,
        {
            "input_tokens": 900,
            "output_tokens": 240,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 200,
        },
        "gemini-2.5-pro",
    ),
]
IDS = [c[0] for c in CASES]


def decoded_usage(events: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Decode the events and return each one's token columns (all must be accepted)."""
    batch, rejected = decode_batch([orjson.dumps(e) for e in events])
    assert len(rejected) == 0, list(zip(rejected.reason, rejected.detail, strict=True))
    assert batch.n == len(events)
    names = (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "reasoning_tokens",
    )
    return [{k: int(getattr(batch, k)[i]) for k in names} for i in range(batch.n)]


# --------------------------------------------------------------------------- usage mapping


@pytest.mark.parametrize(("name", "make", "response", "usage", "served"), CASES, ids=IDS)
def test_usage_mapping(
    name: str, make: Any, response: dict[str, Any], usage: dict[str, int], served: str
) -> None:
    normalise = {
        event_from_openai: usage_from_openai,
        event_from_anthropic: usage_from_anthropic,
        event_from_gemini: usage_from_gemini,
    }[make]
    assert normalise(response) == usage
    # The usage sub-object alone gives the same result.
    sub = response.get("usage") or response.get("usageMetadata") or response["usage_metadata"]
    assert normalise(sub) == usage


@pytest.mark.parametrize(("name", "make", "response", "usage", "served"), CASES, ids=IDS)
def test_events_pass_decoder_with_exact_tokens(
    name: str, make: Any, response: dict[str, Any], usage: dict[str, int], served: str
) -> None:
    event = make(response, tenant_id="acme", app="doc-qa", latency_ms=812.5)
    assert event["served_model"] == served
    assert event["model"] == served  # no requested model given: the served one
    assert event["tenant_id"] == "acme" and event["schema_version"] == 1
    (columns,) = decoded_usage([event])
    expected = {"reasoning_tokens": 0, **usage}  # an absent count decodes as 0
    assert columns == expected


def test_decoded_batch_of_all_providers() -> None:
    events = [
        make(resp, tenant_id=f"t{i}", model="requested-model")
        for i, (_, make, resp, _, _) in enumerate(CASES)
    ]
    columns = decoded_usage(events)
    for (_, _, _, usage, _), col in zip(CASES, columns, strict=True):
        assert col == {"reasoning_tokens": 0, **usage}


def test_requested_model_served_model_and_provider() -> None:
    event = event_from_openai(OPENAI_CHAT, tenant_id="acme", model="o4-mini")
    assert (event["model"], event["served_model"], event["provider"]) == (
        "o4-mini",
        "o4-mini-2025-04-16",
        "openai",
    )
    event = event_from_gemini(GEMINI, tenant_id="acme", model="gemini-2.5-flash")
    assert (event["model"], event["served_model"], event["provider"]) == (
        "gemini-2.5-flash",
        "gemini-2.5-flash-preview-09-2025",
        "google",
    )
    event = event_from_anthropic(ANTHROPIC_PLAIN, tenant_id="acme", provider="bedrock")
    assert event["provider"] == "bedrock"
    assert event_from_anthropic(ANTHROPIC_PLAIN, tenant_id="a")["provider"] == "anthropic"


def test_thinking_is_inside_anthropic_output() -> None:
    # Extended thinking is billed inside output_tokens; without the breakdown its share is
    # unknown, so no reasoning count is made up.
    usage = usage_from_anthropic({"usage": {"input_tokens": 50, "output_tokens": 4000}})
    assert usage["output_tokens"] == 4000
    assert "reasoning_tokens" not in usage
    detailed = usage_from_anthropic(
        {
            "input_tokens": 50,
            "output_tokens": 4000,
            "output_tokens_details": {"thinking_tokens": 3100},
        }
    )
    assert (detailed["output_tokens"], detailed["reasoning_tokens"]) == (4000, 3100)


def test_anthropic_write_breakdown_when_total_missing() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": None,
            "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 700},
        }
    )
    assert usage["cache_write_tokens"] == 1000
    assert usage["cache_write_1h_tokens"] == 700
    assert usage["input_tokens"] == 1010


def test_long_ttl_writes_with_and_without_the_total() -> None:
    # The 1 h (Anthropic) / 12 h (OpenAI) part is read whether or not the total is there.
    anthropic = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600},
    }
    assert usage_from_anthropic(anthropic)["cache_write_1h_tokens"] == 600
    openai = {
        "input_tokens": 900,
        "output_tokens": 1,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens_details": {"ttl_30m_tokens": 100, "ttl_12h_tokens": 500},
        },
    }
    usage = usage_from_openai(openai)
    assert (usage["cache_write_tokens"], usage["cache_write_1h_tokens"]) == (600, 500)
    # Chat Completions: writes without a TTL breakdown (30 min entries only).
    chat = {
        "prompt_tokens": 3000,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 1500},
    }
    usage = usage_from_openai(chat)
    assert (usage["cache_write_tokens"], usage["cache_write_1h_tokens"]) == (1500, 0)
    assert usage["input_tokens"] == 3000  # prompt_tokens already holds reads and writes


# --------------------------------------------------------------------------- null/missing


def test_null_and_missing_sub_objects() -> None:
    chat = {
        "model": "gpt-4o-mini",
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "total_tokens": 107,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
    assert usage_from_openai(chat) == {
        "input_tokens": 100,
        "output_tokens": 7,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
    }
    # An OpenAI-compatible server that only reports the totals.
    assert usage_from_openai({"prompt_tokens": 5, "completion_tokens": 1})["input_tokens"] == 5
    anthropic = {
        "input_tokens": 30,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
        "output_tokens": 9,
        "cache_creation": None,
    }
    assert usage_from_anthropic(anthropic) == {
        "input_tokens": 30,
        "output_tokens": 9,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
    }
    # Gemini omits zero counts (proto3 JSON): no cache, no thoughts, no tool use.
    assert usage_from_gemini(
        {"usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 2, "totalTokenCount": 10}}
    ) == {
        "input_tokens": 8,
        "output_tokens": 2,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "reasoning_tokens": 0,
    }
    # A blocked prompt: only the prompt is counted.
    assert usage_from_gemini({"usageMetadata": {"promptTokenCount": 8}})["output_tokens"] == 0


@pytest.mark.parametrize(
    ("func", "payload", "message"),
    [
        (usage_from_openai, {"id": "chatcmpl-1", "choices": []}, "no usage"),
        (usage_from_openai, {"model": "gpt-4o", "usage": None}, "no usage"),
        (usage_from_openai, {"usage": {"total_tokens": 5}}, "neither"),
        (usage_from_anthropic, {"type": "message", "content": []}, "no usage"),
        (usage_from_anthropic, {"usage": {}}, "neither"),
        (usage_from_gemini, {"candidates": []}, "no usage"),
        (usage_from_gemini, {"usageMetadata": None}, "no usage"),
        (usage_from_gemini, {"usageMetadata": {}}, "no promptTokenCount"),
        (usage_from_openai, {"usage": {"prompt_tokens": -1}}, ">= 0"),
        (usage_from_openai, {"usage": {"prompt_tokens": "12"}}, "integer"),
        (usage_from_openai, {"usage": {"prompt_tokens": 1.5}}, "integer"),
        (usage_from_openai, {"usage": {"prompt_tokens": True}}, "integer"),
        (
            usage_from_openai,
            {"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}}},
            "inconsistent",
        ),
        (
            usage_from_openai,
            {
                "usage": {
                    "completion_tokens": 10,
                    "completion_tokens_details": {"reasoning_tokens": 11},
                }
            },
            "inconsistent",
        ),
        (
            usage_from_openai,
            {
                "input_tokens": 100,
                "input_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 51},
            },
            "inconsistent",
        ),
        (
            usage_from_openai,
            {
                "input_tokens": 100,
                "input_tokens_details": {
                    "cache_write_tokens": 10,
                    "cache_write_tokens_details": {"ttl_30m_tokens": 5, "ttl_12h_tokens": 6},
                },
            },
            "by TTL",
        ),
        (
            usage_from_openai,
            {"input_tokens": 1, "input_tokens_details": {"cache_write_tokens": "7"}},
            "integer",
        ),
        (
            usage_from_anthropic,
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 11},
            },
            "by TTL",
        ),
        (
            usage_from_anthropic,
            {
                "input_tokens": 1,
                "output_tokens": 5,
                "output_tokens_details": {"thinking_tokens": 6},
            },
            "inconsistent",
        ),
        (
            usage_from_gemini,
            {"usageMetadata": {"promptTokenCount": 5, "cachedContentTokenCount": 6}},
            "inconsistent",
        ),
        (usage_from_openai, "not a response", "expected a dict"),
    ],
)
def test_bad_responses_raise(func: Any, payload: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        func(payload)


def test_whole_float_counts_accepted() -> None:
    assert usage_from_openai({"prompt_tokens": 12.0, "completion_tokens": 3})["input_tokens"] == 12


def test_sdk_objects_via_model_dump() -> None:
    class FakeSdkResponse:
        """Stands in for a pydantic SDK response: only model_dump() matters."""

        def model_dump(self) -> dict[str, Any]:
            return OPENAI_CHAT

    event = event_from_openai(FakeSdkResponse(), tenant_id="acme")
    assert event["usage"]["reasoning_tokens"] == 1024


def test_event_without_model_needs_model_argument() -> None:
    response = {"usage": {"input_tokens": 3, "output_tokens": 1}}
    with pytest.raises(ValueError, match="model="):
        event_from_anthropic(response, tenant_id="acme")
    assert event_from_anthropic(response, tenant_id="acme", model="claude-x")["model"] == "claude-x"
    assert "served_model" not in event_from_anthropic(response, tenant_id="a", model="m")


# --------------------------------------------------------------------------- call_event


def test_call_event_defaults_and_dropped_nones() -> None:
    before = datetime.now(UTC)
    event = call_event(
        tenant_id="acme",
        model="gpt-4o-mini",
        usage={"input_tokens": 1, "output_tokens": 2},
        app=None,
        status="ok",
    )
    assert re.fullmatch(r"[0-9a-f]{32}", event["event_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["ts"])
    ts = datetime.fromisoformat(event["ts"])
    assert before - timedelta(seconds=1) <= ts <= datetime.now(UTC)
    assert "app" not in event and event["status"] == "ok"
    other = call_event(tenant_id="acme", model="m", usage={"input_tokens": 1, "output_tokens": 0})
    assert other["event_id"] != event["event_id"]


def test_call_event_timestamps() -> None:
    usage = {"input_tokens": 1, "output_tokens": 1}
    plus2 = timezone(timedelta(hours=2))
    aware = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=plus2)
    assert call_event(tenant_id="a", model="m", usage=usage, ts=aware)["ts"] == (
        "2026-11-23T10:00:00.123Z"
    )
    assert call_event(tenant_id="a", model="m", usage=usage, ts=1795420000000)["ts"] == (
        1795420000000
    )
    with pytest.raises(ValueError, match="timezone"):
        call_event(tenant_id="a", model="m", usage=usage, ts=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="tenant_id"):
        call_event(tenant_id="", model="m", usage=usage)
    events = [
        call_event(tenant_id="a", model="m", usage=usage, ts=aware, event_id="req-1"),
        call_event(tenant_id="a", model="m", usage=usage, ts=1795420000000),
        call_event(tenant_id="a", model="m", usage=usage),
    ]
    batch, rejected = decode_batch([orjson.dumps(e) for e in events])
    assert len(rejected) == 0
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert int(batch.ts_ms[0]) == (aware - epoch) // timedelta(milliseconds=1)  # floored
    assert int(batch.ts_ms[1]) == 1795420000000


# --------------------------------------------------------------------------- properties

counts = st.integers(min_value=0, max_value=2_000_000)
maybe = st.none() | counts


@given(
    prompt=counts,
    cached_share=st.floats(0, 0.5),
    write_share=st.floats(0, 0.5),
    long_ttl_share=st.floats(0, 1),
    completion=counts,
    reasoning_share=st.floats(0, 1),
    responses_api=st.booleans(),
    details=st.booleans(),
)
def test_openai_invariants(
    *,
    prompt: int,
    cached_share: float,
    write_share: float,
    long_ttl_share: float,
    completion: int,
    reasoning_share: float,
    responses_api: bool,
    details: bool,
) -> None:
    cached, reasoning = int(prompt * cached_share), int(completion * reasoning_share)
    written = int(prompt * write_share)
    long_ttl = int(written * long_ttl_share)
    if responses_api:
        raw: dict[str, Any] = {"input_tokens": prompt, "output_tokens": completion}
        if details:
            raw["input_tokens_details"] = {
                "cached_tokens": cached,
                "cache_write_tokens": written,
                "cache_write_tokens_details": {
                    "ttl_30m_tokens": written - long_ttl,
                    "ttl_12h_tokens": long_ttl,
                },
            }
            raw["output_tokens_details"] = {"reasoning_tokens": reasoning}
    else:
        raw = {"prompt_tokens": prompt, "completion_tokens": completion}
        if details:
            raw["prompt_tokens_details"] = {"cached_tokens": cached, "cache_write_tokens": written}
            raw["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    raw["total_tokens"] = prompt + completion
    usage = usage_from_openai({"usage": raw})
    check_invariants(usage)
    assert usage["input_tokens"] + usage["output_tokens"] == raw["total_tokens"]
    assert usage["cache_read_tokens"] == (cached if details else 0)
    assert usage["cache_write_tokens"] == (written if details else 0)
    assert usage["cache_write_1h_tokens"] == (long_ttl if details and responses_api else 0)


@given(uncached=counts, write=maybe, read=maybe, output=counts)
def test_anthropic_invariants(
    uncached: int, write: int | None, read: int | None, output: int
) -> None:
    raw = {
        "input_tokens": uncached,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": output,
    }
    usage = usage_from_anthropic({"usage": raw})
    check_invariants(usage)
    # Nothing lost or counted twice: the v1 totals are the sum of Anthropic's four counts.
    assert usage["input_tokens"] + usage["output_tokens"] == sum(v or 0 for v in raw.values())
    assert usage["input_tokens"] - usage["cache_read_tokens"] - usage["cache_write_tokens"] == (
        uncached
    )


@given(
    prompt=counts,
    cached_share=st.floats(0, 1),
    candidates=maybe,
    thoughts=maybe,
    tool=maybe,
    snake=st.booleans(),
)
def test_gemini_invariants(
    *,
    prompt: int,
    cached_share: float,
    candidates: int | None,
    thoughts: int | None,
    tool: int | None,
    snake: bool,
) -> None:
    cached = int(prompt * cached_share)
    raw = {
        "promptTokenCount": prompt,
        "cachedContentTokenCount": cached or None,  # omitted when zero, as Gemini does
        "candidatesTokenCount": candidates,
        "thoughtsTokenCount": thoughts,
        "toolUsePromptTokenCount": tool,
    }
    total = sum(v or 0 for k, v in raw.items() if k != "cachedContentTokenCount")
    raw["totalTokenCount"] = total
    if snake:
        snake_raw = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in raw.items()}
        usage = usage_from_gemini({"usage_metadata": snake_raw})
    else:
        usage = usage_from_gemini(
            {"usageMetadata": {k: v for k, v in raw.items() if v is not None}}
        )
    check_invariants(usage)
    assert usage["input_tokens"] + usage["output_tokens"] == total
    assert usage["reasoning_tokens"] == (thoughts or 0)
    assert usage["cache_read_tokens"] == cached


def check_invariants(usage: dict[str, int]) -> None:
    """The v1 subset rules, and that the decoder accepts the usage as is."""
    assert usage["cache_read_tokens"] + usage["cache_write_tokens"] <= usage["input_tokens"]
    assert usage["cache_write_1h_tokens"] <= usage["cache_write_tokens"]
    assert usage.get("reasoning_tokens", 0) <= usage["output_tokens"]
    assert all(v >= 0 for v in usage.values())
    event = call_event(tenant_id="acme", model="m", usage=usage, ts=1795420000000)
    (columns,) = decoded_usage([event])
    assert columns == {"reasoning_tokens": 0, **usage}
