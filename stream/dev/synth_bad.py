"""Synthetic events the decoder must reject, one or more for every reason code.

Job
---
:func:`generate_bad_events` yields events of every rejection class, each broken exactly one
way from a fully populated valid event, with the reason code the decoder must give (a key
of :data:`~llmops_stream.stream.core.decode.REJECT_REASONS`).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from llmops_stream.stream.core.decode import MAX_MESSAGE_BYTES

from .synth_format import _format_times
from .synth_population import _DAY_MS, DEFAULT_START_MS
from .synth_world import _N_BASE, _b64_rows, _World

__all__ = ["generate_bad_events"]

"""Size limit behind ``too_large`` (1 MiB)."""


def _iso_z(ms: int) -> str:
    """One epoch-ms instant as RFC 3339 UTC with ``Z``."""
    return str(_format_times(np.array([ms]), np.array([0]))[0])


def _base_event(rng: np.random.Generator, seq: int, world: _World) -> dict[str, Any]:
    """A fully populated valid event (every optional field), to be broken one way."""
    ts = DEFAULT_START_MS + int(rng.integers(0, _DAY_MS))
    vector = world.sample(np.array([int(rng.integers(0, _N_BASE))]), rng)
    return {
        "schema_version": 1,
        "event_id": f"bad-{seq:04d}-{rng.bytes(4).hex()}",
        "ts": _iso_z(ts),
        "tenant_id": "acme",
        "app": "doc-qa",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "served_model": "gpt-4o-mini-2024-07-18",
        "usage": {
            "input_tokens": 1200,
            "output_tokens": 300,
            "cache_read_tokens": 512,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
        },
        "status": "ok",
        "latency_ms": 812.5,
        "ttft_ms": 240.0,
        "prompt_id": "doc-qa/answer",
        "prompt_version": "v3",
        "route": {"tier": "small", "escalated": False},
        "context_window": 128000,
        "embedding": _b64_rows(vector)[0],
        "embedding_model": "text-embedding-3-small",
        "retrieval": {
            "index_version": "doc-qa-kb-v7",
            "chunks": [
                {
                    "chunk_id": f"doc-qa-doc-{k:05d}#0",
                    "doc_id": f"doc-qa-doc-{k:05d}",
                    "embedded_at": _iso_z(ts - 3 * _DAY_MS),
                    "source_updated_at": _iso_z(ts - 9 * _DAY_MS),
                    "score": round(0.9 - 0.1 * k, 2),
                }
                for k in range(3)
            ],
        },
    }


def generate_bad_events(seed: int = 0) -> list[tuple[bytes, str]]:
    """Events that must be rejected, each broken exactly one way, with the expected reason
    code (a key of :data:`REJECT_REASONS`). Every code appears at least once."""
    rng = np.random.default_rng([seed, 0xBAD])
    world = _World(0, 384, "text-embedding-3-small")
    cases: list[tuple[bytes, str]] = []
    seq = 0

    def base() -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return _base_event(rng, seq, world)

    def mutated(reason: str, path: str, value: Any = ..., *, delete: bool = False) -> None:
        """Set (or delete) a dotted path of a fresh base event and record the case."""
        ev = base()
        *parents, leaf = path.split(".")
        node = ev
        for key in parents:
            node = node[key]
        if delete:
            del node[leaf]
        else:
            node[leaf] = value
        cases.append((orjson.dumps(ev), reason))

    # invalid_json
    good = orjson.dumps(base())
    cases.append((good[: len(good) // 2], "invalid_json"))  # truncated
    cases.append((b"not json at all", "invalid_json"))
    cases.append((good + b" trailing", "invalid_json"))
    cases.append((b"", "invalid_json"))
    cases.append((b"[" + orjson.dumps(base()) + b"]", "invalid_json"))  # not an object
    cases.append((orjson.dumps(base()).replace(b'"status":"ok"', b'"status":ok'), "invalid_json"))

    # invalid_utf8: well-formed JSON structure, bytes that are not UTF-8 inside strings.
    raw = orjson.dumps(base())
    cases.append((raw.replace(b'"app":"doc-qa"', b'"app":"doc-\xff\xfeqa"'), "invalid_utf8"))
    raw = orjson.dumps(base())
    cases.append(
        (raw.replace(b'"tenant_id":"acme"', b'"tenant_id":"ac\xc3\x28me"'), "invalid_utf8")
    )

    # missing_field
    for path in ("event_id", "ts", "tenant_id", "model", "usage", "usage.input_tokens",
                 "usage.output_tokens"):  # fmt: skip
        mutated("missing_field", path, delete=True)

    # wrong_type
    mutated("wrong_type", "usage.input_tokens", "1200")
    mutated("wrong_type", "usage.output_tokens", 300.5)
    mutated("wrong_type", "tenant_id", 42)
    mutated("wrong_type", "model", ["gpt-4o-mini"])
    mutated("wrong_type", "usage", [1200, 300])
    mutated("wrong_type", "latency_ms", "812ms")
    mutated("wrong_type", "route", "small")
    mutated("wrong_type", "ts", True)  # neither a string nor an integer

    # negative_tokens (subsets dropped where a negative total would also break them)
    mutated("negative_tokens", "usage", {"input_tokens": -7, "output_tokens": 300})
    mutated("negative_tokens", "usage", {"input_tokens": 1200, "output_tokens": -1})
    mutated("negative_tokens", "usage.cache_read_tokens", -int(rng.integers(1, 500)))
    mutated("negative_tokens", "usage.reasoning_tokens", -int(rng.integers(1, 500)))

    # inconsistent_tokens
    mutated("inconsistent_tokens", "usage.cache_read_tokens", 1201)
    ev = base()
    ev["usage"].update(cache_read_tokens=800, cache_write_tokens=600)  # 1400 > 1200
    cases.append((orjson.dumps(ev), "inconsistent_tokens"))
    mutated("inconsistent_tokens", "usage.reasoning_tokens", 301)

    # bad_embedding
    mutated("bad_embedding", "embedding", "@@not*base64@@")
    ev = base()
    ev["embedding"] = ev["embedding"][:-8]  # cut mid-way: invalid length/padding
    cases.append((orjson.dumps(ev), "bad_embedding"))
    # valid base64 of 1537 bytes: not a whole number of float32
    mutated("bad_embedding", "embedding", base64.b64encode(bytes(1537)).decode())
    mutated("bad_embedding", "embedding", [0.1, "x", 0.3])

    # embedding_not_finite: float32 NaN / inf bytes in base64, and a JSON array with a number
    # that overflows float32 (JSON has no NaN literal).
    for bad_value in (np.nan, np.inf, -np.inf):
        vec = world.sample(np.array([0]), rng)[0]
        vec[int(rng.integers(0, 384))] = bad_value
        mutated("embedding_not_finite", "embedding", _b64_rows(vec[None, :])[0])
    vec_list = world.sample(np.array([1]), rng)[0].tolist()
    vec_list[7] = 1e39
    mutated("embedding_not_finite", "embedding", vec_list)

    # too_large
    mutated("too_large", "notes", "x" * (MAX_MESSAGE_BYTES + 1024))

    # bad_timestamp
    mutated("bad_timestamp", "ts", "1970-01-01T00:00:01Z")
    mutated("bad_timestamp", "ts", "2200-01-01T00:00:00Z")
    mutated("bad_timestamp", "ts", DEFAULT_START_MS // 1000)  # epoch seconds, not ms
    mutated("bad_timestamp", "ts", 7_258_118_400_000)  # 2200-01-01 in ms
    mutated("bad_timestamp", "ts", "yesterday at noon")
    mutated("bad_timestamp", "ts", "2026-11-01T10:00:00")  # no offset
    # ts_in_future: a valid instant, but beyond the wall clock plus the allowed skew
    mutated("ts_in_future", "ts", "2099-01-01T00:00:00Z")

    # invalid_value
    mutated("invalid_value", "status", "success")
    mutated("invalid_value", "event_id", "e" * 129)
    mutated("invalid_value", "tenant_id", "t" * 129)
    mutated("invalid_value", "tenant_id", "")
    mutated("invalid_value", "latency_ms", -5.0)
    return cases
