"""The columnar fast path of decode_batch (numba scanner, msgspec for what it declines)
gives exactly the per-message msgspec result: every CallBatch column, the interned codes
and the Rejected lists, on valid, bad and mutated events."""

from __future__ import annotations

import base64
import copy
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core import json_scan
from llmops_stream.stream.core.decode import CallBatch, decode_batch
from llmops_stream.stream.core.interning import Interners
from llmops_stream.stream.core.json_scan import scan_calls
from llmops_stream.stream.dev.synth import SynthConfig, generate_events
from llmops_stream.stream.dev.synth_bad import generate_bad_events

SYNTH = list(generate_events(SynthConfig(n_events=400, seed=5, embedding_share=0.3)))
BAD = [raw for raw, _ in generate_bad_events(seed=5)]


def _same_column(name: str, a: Any, b: Any) -> None:
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, name
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=name)  # NaN-aware
            assert (np.signbit(a) == np.signbit(b)).all(), name
        else:
            assert a.tolist() == b.tolist(), name
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), name
        for k in a:
            _same_column(f"{name}.{k}", a[k], b[k])
    else:
        assert a == b, name


def assert_same(messages: list[bytes]) -> None:
    for with_interners in (False, True):
        ia, ib = (Interners(), Interners()) if with_interners else (None, None)
        fast, rej_fast = decode_batch(messages, ia, fast=True)
        slow, rej_slow = decode_batch(messages, ib, fast=False)
        assert rej_fast == rej_slow
        for name in CallBatch.__dataclass_fields__:
            _same_column(name, getattr(fast, name), getattr(slow, name))
        if ia is not None and ib is not None:
            assert ia.sizes() == ib.sizes()


def test_synthetic_and_bad_events_agree() -> None:
    assert_same(SYNTH)
    assert_same(BAD)
    mixed = [m for pair in zip(SYNTH, BAD * 20, strict=False) for m in pair]
    assert_same(mixed)


def test_empty_and_single() -> None:
    assert_same([])
    assert_same(SYNTH[:1])
    assert_same(BAD[:1])


def _accepted(messages: list[bytes]) -> np.ndarray:
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum([len(m) for m in messages], out=offsets[1:])
    buf = np.frombuffer(b"".join(messages), dtype=np.uint8)
    return scan_calls(buf, offsets, 1 << 20).ok


def test_typical_traffic_takes_the_fast_path() -> None:
    plain = list(generate_events(SynthConfig(n_events=3000, seed=1, embedding_share=0.0)))
    assert _accepted(plain).mean() >= 0.95
    assert _accepted(SYNTH).mean() >= 0.95  # base64 embeddings included


def test_declines_what_it_must() -> None:
    base = orjson.loads(SYNTH[0])
    cases = [
        {**base, "event_id": "caf\u00e9"},
        {**base, "tenant_id": "a\\b"},
        {**base, "embedding": [0.5, 1.0]},
        {**base, "latency_ms": 0.1234567890123456789},
        {**base, "usage": {**base["usage"], "input_tokens": 1.0}},
        {**base, "model": None},
    ]
    msgs = [orjson.dumps(c) for c in cases]
    msgs.append(SYNTH[0][:-1] + b',"event_id":"x"}')  # a duplicate key
    msgs.append(SYNTH[0] + b"x")
    msgs.append(b"[" + SYNTH[0] + b"]")
    assert not _accepted(msgs).any()
    assert _accepted([SYNTH[0] + b" \n", b" " + SYNTH[0]]).all()
    assert_same(msgs)


# --- mutated messages -------------------------------------------------------------------

_KEYS = [
    "event_id",
    "ts",
    "tenant_id",
    "model",
    "usage",
    "provider",
    "app",
    "served_model",
    "status",
    "route",
    "latency_ms",
    "ttft_ms",
    "context_window",
    "embedding",
    "embedding_model",
    "retrieval",
    "schema_version",
    "prompt_id",
    "unknown",
]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2**31, 2**31 + 1, 10**12, 10**12 + 1, -1, 1795428000123]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 1e3, 1.0, 2.5e-3, 1e22, 1e23, -0.0, 12.25]),
    st.text(max_size=6),
    st.sampled_from(
        [
            "",
            "ok",
            "cache_hit",
            "bogus",
            "2026-11-01T00:00:00Z",
            "2026-11-01T00:00:00.5+02:00",
            "1999-01-01T00:00:00Z",
            "x" * 129,
            "a\\b",
            "\u00e9",
            base64.b64encode(np.arange(3, dtype="<f4").tobytes()).decode(),
            "AAAA=",
        ]
    ),
    st.lists(st.integers(-3, 3), max_size=3),
    st.fixed_dictionaries({"tier": st.text(max_size=3)}),
    st.just({"input_tokens": 5, "output_tokens": 3, "cache_read_tokens": 9}),
    st.just({"chunks": [{"embedded_at": 1795428000123, "score": 1e400}]}),
    st.just({"index_version": "v", "chunks": [{"embedded_at": "bad", "x": {"y": ["\\u00e9"]}}]}),
)

_RAW_NUMBERS = [b"1.0", b"1e3", b"-0", b"1E+2", b"123456789012345678901", b"0.1e-30", b"01"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    event = orjson.loads(draw(st.sampled_from(SYNTH)))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(_KEYS))
        action = draw(st.sampled_from(["set", "drop", "nested"]))
        if action == "drop":
            event.pop(key, None)
        elif action == "set":
            # a copy: st.just hands out the same dict every time, which a later mutation
            # would change for every example (or make refer to itself)
            event[key] = copy.deepcopy(draw(_VALUES))
        elif isinstance(event.get("usage"), dict):
            sub = draw(st.sampled_from(["input_tokens", "output_tokens", "reasoning_tokens"]))
            event["usage"][sub] = copy.deepcopy(draw(_VALUES))
    raw = orjson.dumps(event)
    kind = draw(st.sampled_from(["none", "dup", "number", "escape", "ws", "cut", "byte"]))
    if kind == "dup":  # a repeated key (orjson never writes one)
        raw = raw[:-1] + b',"' + draw(st.sampled_from(_KEYS)).encode() + b'":"v"}'
    elif kind == "number":
        raw = raw[:-1] + b',"latency_ms":' + draw(st.sampled_from(_RAW_NUMBERS)) + b"}"
    elif kind == "escape":
        raw = raw[:-1] + b',"extra":{"a":["\\"\\u00e9\\ud83d\\ude00",1e999,[{}]]}}'
    elif kind == "ws":
        raw = raw.replace(b",", b" ,\n\t").replace(b":", b"\r: ")
    elif kind == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif kind == "byte":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at:]
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=12), st.lists(st.sampled_from(SYNTH), max_size=4))
def test_mutated_messages_agree(messages: list[bytes], good: list[bytes]) -> None:
    assert_same(messages + good)


def test_a_batch_scanned_in_two_halves_on_two_threads_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # large enough to be split, with bad and declined messages spread over both halves
    messages = [m for i, m in enumerate(SYNTH * 12) if i % 50] + BAD * 3
    messages = messages[::2] + messages[1::2]
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum([len(m) for m in messages], out=offsets[1:])
    buf = np.frombuffer(b"".join(messages), dtype=np.uint8)
    monkeypatch.setattr(json_scan, "_workers", lambda: 2)
    monkeypatch.setattr(json_scan, "_SPLIT_MIN", 10**9)
    whole = scan_calls(buf, offsets, 1 << 20)
    monkeypatch.setattr(json_scan, "_SPLIT_MIN", 2)
    halves = scan_calls(buf, offsets, 1 << 20)
    assert whole.ok.sum() > len(SYNTH) and (~whole.ok).sum() >= len(BAD)
    for name in whole.__dataclass_fields__:
        a, b = getattr(whole, name), getattr(halves, name)
        ok = whole.ok
        if name in ("ints", "floats", "starts", "ends"):  # rows of declined ones are junk
            a, b = a[:, ok], b[:, ok]
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert_same(messages)  # and the whole decode agrees with msgspec on the split path


def test_a_valid_event_nested_too_deeply_is_rejected_not_the_batch() -> None:
    # an unknown field nested far beyond msgspec's recursion limit: it used to raise
    # RecursionError out of decode_batch, failing every event of the batch with it
    good = list(SYNTH[:3])
    deep = b'{"extra":' + b"[" * 5000 + b"]" * 5000 + b"," + good[0][1:]
    for fast in (True, False):
        batch, rejected = decode_batch([good[0], deep, good[1], good[2]], fast=fast)
        assert batch.src_index.tolist() == [0, 2, 3]
        assert rejected.index == [1] and rejected.reason == ["invalid_json"]
        assert "nested too deeply" in rejected.detail[0]
    assert_same([deep, *good])
