"""Synthetic traffic: determinism, v1 validity (checked by an independent validator written
from SPEC §3), realism properties (Zipf tenants, growing drift, staleness, caching, model
mix, retries) and the bad-event catalogue."""

import base64
import binascii
import json
import math
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.synth import (
    REJECT_REASONS,
    SYNTH_MODELS,
    UNKNOWN_MODEL,
    SynthConfig,
    generate_bad_events,
    generate_eval_set,
    generate_events,
    write_jsonl,
)

MIN_TS = 946_684_800_000  # 2000-01-01
MAX_TS = 4_102_444_800_000  # 2100-01-01
DAY = 86_400_000
STATUSES = {"ok", "error", "rate_limited", "timeout", "cache_hit"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
TOKEN_FIELDS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
)  # fmt: skip


# --------------------------------------------------------------------------- v1 validator


class Reject(Exception):  # noqa: N818 - a control-flow signal carrying the reason code
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_time(v: object) -> int:
    """Epoch ms of a v1 time value, else Reject(bad_timestamp)."""
    if is_int(v):
        ms = int(v)  # type: ignore[call-overload]
    elif isinstance(v, str) and RFC3339.match(v):
        try:
            ms = int(datetime.fromisoformat(v).timestamp() * 1000)
        except ValueError as exc:
            raise Reject("bad_timestamp") from exc
    elif isinstance(v, str):
        raise Reject("bad_timestamp")
    else:
        raise Reject("wrong_type")
    if not MIN_TS <= ms < MAX_TS:
        raise Reject("bad_timestamp")
    return ms


def check_embedding(v: object) -> np.ndarray:
    if isinstance(v, str):
        try:
            raw = binascii.a2b_base64(v, strict_mode=True)
        except binascii.Error as exc:
            raise Reject("bad_embedding") from exc
        if not raw or len(raw) % 4:
            raise Reject("bad_embedding")
        vec = np.frombuffer(raw, dtype="<f4")
    elif isinstance(v, list):
        if not v or not all(is_number(x) for x in v):
            raise Reject("bad_embedding")
        with np.errstate(over="ignore"):
            vec = np.array(v, dtype=np.float64).astype(np.float32)
    else:
        raise Reject("wrong_type")
    if not np.isfinite(vec).all():
        raise Reject("embedding_not_finite")
    return vec


def validate(raw: bytes) -> dict[str, Any]:
    """The decoded event, or Reject(reason) per the v1 field rules."""
    if len(raw) > (1 << 20):
        raise Reject("too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reject("invalid_utf8") from exc

    def no_constants(name: str) -> None:
        raise ValueError(name)  # NaN / Infinity literals are not JSON

    try:
        ev = json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise Reject("invalid_json") from exc
    if not isinstance(ev, dict):
        raise Reject("invalid_json")

    for key in ("event_id", "ts", "tenant_id", "model", "usage"):
        if key not in ev:
            raise Reject("missing_field")
    usage = ev["usage"]
    if not isinstance(usage, dict):
        raise Reject("wrong_type")
    for key in ("input_tokens", "output_tokens"):
        if key not in usage:
            raise Reject("missing_field")
    for key in ("event_id", "tenant_id", "model"):
        if not isinstance(ev[key], str):
            raise Reject("wrong_type")
    for key in TOKEN_FIELDS:
        if key in usage and not is_int(usage[key]):
            raise Reject("wrong_type")
    for key in ("provider", "app", "served_model", "prompt_id", "prompt_version",
                "embedding_model", "status"):  # fmt: skip
        if ev.get(key) is not None and not isinstance(ev[key], str):
            raise Reject("wrong_type")
    for key in ("latency_ms", "ttft_ms"):
        if ev.get(key) is not None and not is_number(ev[key]):
            raise Reject("wrong_type")
    for key in ("schema_version", "context_window"):
        if ev.get(key) is not None and not is_int(ev[key]):
            raise Reject("wrong_type")
    route = ev.get("route")
    if route is not None and not (
        isinstance(route, dict)
        and isinstance(route.get("tier", ""), str)
        and isinstance(route.get("escalated", False), bool)
    ):
        raise Reject("wrong_type")
    retrieval = ev.get("retrieval")
    if retrieval is not None:
        if not isinstance(retrieval, dict) or not isinstance(retrieval.get("chunks", []), list):
            raise Reject("wrong_type")
        for chunk in retrieval.get("chunks", []):
            if not isinstance(chunk, dict):
                raise Reject("wrong_type")

    counts = {k: usage.get(k, 0) for k in TOKEN_FIELDS}
    if any(c < 0 for c in counts.values()):
        raise Reject("negative_tokens")
    if counts["cache_read_tokens"] + counts["cache_write_tokens"] > counts["input_tokens"]:
        raise Reject("inconsistent_tokens")
    if counts["reasoning_tokens"] > counts["output_tokens"]:
        raise Reject("inconsistent_tokens")

    if ev.get("status") is not None and ev["status"] not in STATUSES:
        raise Reject("invalid_value")
    for key in ("event_id", "tenant_id"):
        if not 1 <= len(ev[key]) <= 128:
            raise Reject("invalid_value")
    for key in ("latency_ms", "ttft_ms"):
        if ev.get(key) is not None and ev[key] < 0:
            raise Reject("invalid_value")
    if ev.get("schema_version") not in (None, 1):
        raise Reject("invalid_value")

    parse_time(ev["ts"])
    for chunk in (retrieval or {}).get("chunks", []):
        parse_time(chunk["embedded_at"])
        if chunk.get("source_updated_at") is not None:
            parse_time(chunk["source_updated_at"])
    if ev.get("embedding") is not None:
        check_embedding(ev["embedding"])
    # after every decode check, as the engine rejects it once decoded: the default skew
    if parse_time(ev["ts"]) > time.time() * 1000 + 900_000:
        raise Reject("ts_in_future")
    return ev


def reason_of(raw: bytes) -> str | None:
    try:
        validate(raw)
    except Reject as r:
        return r.reason
    return None


# --------------------------------------------------------------------------- fixtures

N = 12_000


@pytest.fixture(scope="module")
def raw_events() -> list[bytes]:
    return list(generate_events(SynthConfig(n_events=N, seed=7, array_embedding_share=0.1)))


@pytest.fixture(scope="module")
def events(raw_events: list[bytes]) -> list[dict[str, Any]]:
    return [validate(raw) for raw in raw_events]


def time_ms(v: str | int) -> int:
    return v if isinstance(v, int) else int(datetime.fromisoformat(v).timestamp() * 1000)


def vector(ev: dict[str, Any]) -> np.ndarray:
    emb = ev["embedding"]
    if isinstance(emb, str):
        return np.frombuffer(base64.b64decode(emb), dtype="<f4")
    return np.array(emb, dtype=np.float32)


# --------------------------------------------------------------------------- tests


def test_deterministic_per_seed() -> None:
    cfg = SynthConfig(n_events=5000, seed=11)
    first = list(generate_events(cfg))
    assert first == list(generate_events(SynthConfig(n_events=5000, seed=11)))
    assert first != list(generate_events(SynthConfig(n_events=5000, seed=12)))
    assert len(first) == 5000
    assert list(generate_events(SynthConfig(n_events=0))) == []


def test_every_event_is_valid_v1(raw_events: list[bytes], events: list[dict[str, Any]]) -> None:
    assert len(events) == N
    for raw in raw_events[:50]:
        assert not raw.endswith(b"\n")
    embedded = [ev for ev in events if "embedding" in ev]
    assert abs(len(embedded) / N - 0.5) < 0.03
    for ev in embedded[:500]:
        v = vector(ev)
        assert v.shape == (384,)
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-3
        assert ev["embedding_model"] == "text-embedding-3-small"
    kinds = Counter(type(ev["embedding"]).__name__ for ev in embedded)
    assert kinds["list"] / len(embedded) == pytest.approx(0.1, abs=0.03)


def test_time_formats_and_spacing(events: list[dict[str, Any]]) -> None:
    forms = Counter(
        "int" if isinstance(ev["ts"], int) else ev["ts"][-6:] if "+" in ev["ts"] else "Z"
        for ev in events
    )
    assert set(forms) == {"int", "Z", "+00:00", "+02:00"}
    assert forms["Z"] > forms["+00:00"] > forms["+02:00"] > 0
    ts = np.array([time_ms(ev["ts"]) for ev in events])
    assert ts[0] == 1_793_491_200_000 and ts.min() == ts[0]
    # 2000 events/s, i.e. 0.5 ms apart on average, slightly out of order (producer jitter).
    assert (ts[-1000:].mean() - ts[0]) == pytest.approx((N - 500) * 0.5, abs=30)
    assert (np.diff(ts) < 0).any()


def test_tenant_volumes_are_zipf(events: list[dict[str, Any]]) -> None:
    counts = Counter(ev["tenant_id"] for ev in events)
    assert len(counts) >= 45
    ranked = np.array(sorted(counts.values(), reverse=True), dtype=float)
    expected_top = 1 / sum(1 / k**1.1 for k in range(1, 51))
    assert ranked[0] / N == pytest.approx(expected_top, rel=0.15)
    assert counts["acme"] == ranked[0]  # rank 0 is the biggest tenant
    ranks = np.arange(1, 21)
    slope = np.polyfit(np.log(ranks), np.log(ranked[:20]), 1)[0]
    assert -1.4 < slope < -0.8


def test_model_mix_and_prices(events: list[dict[str, Any]]) -> None:
    models = Counter(ev["model"] for ev in events)
    assert set(models) <= {*SYNTH_MODELS, UNKNOWN_MODEL}
    assert len(models) >= 8
    assert models[UNKNOWN_MODEL] / N == pytest.approx(0.01, abs=0.006)
    table = PriceTable()
    for model in SYNTH_MODELS:
        assert table.resolve(model) is not None, model
    assert table.resolve(UNKNOWN_MODEL, "self-hosted") is None


def test_status_mix_and_token_rules(events: list[dict[str, Any]]) -> None:
    status = Counter(ev.get("status", "ok") for ev in events)
    assert status["ok"] / N == pytest.approx(0.95, abs=0.015)
    assert status["cache_hit"] / N == pytest.approx(0.02, abs=0.006)
    assert all(status[s] > 0 for s in STATUSES)
    assert any("status" not in ev for ev in events)  # the default is used too
    for ev in events:
        usage = ev["usage"]
        if ev.get("status") == "rate_limited":
            assert usage["input_tokens"] == usage["output_tokens"] == 0
        if ev.get("status") in ("error", "timeout"):
            assert usage["output_tokens"] == 0


def test_caching_and_reasoning(events: list[dict[str, Any]]) -> None:
    read = [ev for ev in events if ev["usage"].get("cache_read_tokens", 0) > 0]
    write = [ev for ev in events if ev["usage"].get("cache_write_tokens", 0) > 0]
    reasoning = [ev for ev in events if ev["usage"].get("reasoning_tokens", 0) > 0]
    assert 0.1 < len(read) / N < 0.45
    assert 0.005 < len(write) / N < 0.1
    assert {ev.get("provider", "anthropic") for ev in write} == {"anthropic"}
    for ev in read:
        if ev["model"].startswith(("gpt", "o3", "o4")):
            assert ev["usage"]["cache_read_tokens"] % 128 == 0  # OpenAI caches in 128s
    reasoning_models = {ev["model"] for ev in reasoning}
    assert {"o3-mini", "o4-mini", "gemini-2.5-pro"} <= reasoning_models
    assert "gpt-4o-mini" not in reasoning_models
    # Some calls to the long-context model cross its 200k-token price tier.
    assert any(
        ev["model"].startswith("gemini") and ev["usage"]["input_tokens"] > 200_000 for ev in events
    )


def test_versions_change_over_the_run(events: list[dict[str, Any]]) -> None:
    half = N // 2
    early = {(ev["app"], ev.get("prompt_version")) for ev in events[:half]}
    late = {(ev["app"], ev.get("prompt_version")) for ev in events[half:]}
    assert late - early, "some prompt version appears only later in the run"
    index = Counter(ev["retrieval"]["index_version"] for ev in events if "retrieval" in ev)
    assert len(index) > 20
    served = [ev.get("served_model") for ev in events if ev["model"] == "gpt-4o"]
    first, second = served[: len(served) // 2], served[len(served) // 2 :]
    assert "gpt-4o-2024-11-20" not in first  # the silent upstream change ...
    assert "gpt-4o-2024-11-20" in second  # ... shows up part-way through
    assert any(ev.get("route", {}).get("escalated") for ev in events)
    assert any(k in ev for ev in events for k in ("trace_id", "request_id", "user_id"))


def test_retrieval_and_staleness(events: list[dict[str, Any]]) -> None:
    queries = [ev for ev in events if "retrieval" in ev]
    assert len(queries) / N == pytest.approx(0.4, abs=0.03)
    stale_queries = 0
    too_old = 0
    for ev in queries:
        chunks = ev["retrieval"]["chunks"]
        assert 3 <= len(chunks) <= 8
        scores = [c["score"] for c in chunks]
        assert scores == sorted(scores, reverse=True)
        ts = time_ms(ev["ts"])
        stale = False
        for c in chunks:
            embedded, source = time_ms(c["embedded_at"]), time_ms(c["source_updated_at"])
            assert embedded <= ts and source <= ts
            outdated, old = source > embedded, ts - embedded > 30 * DAY
            too_old += old
            stale |= outdated or old
        stale_queries += stale
    assert stale_queries / len(queries) == pytest.approx(0.1, abs=0.03)
    assert too_old > 0


def test_duplicates_are_exact_retries(
    raw_events: list[bytes], events: list[dict[str, Any]]
) -> None:
    ids = Counter(ev["event_id"] for ev in events)
    repeated = {i for i, c in ids.items() if c > 1}
    assert sum(ids.values()) - len(ids) == pytest.approx(N * 0.005, abs=30)
    by_id: dict[str, bytes] = {}
    for raw, ev in zip(raw_events, events, strict=True):
        if ev["event_id"] in repeated:
            assert by_id.setdefault(ev["event_id"], raw) == raw


def test_drift_share_grows_over_the_run() -> None:
    """Uncovered share (nearest eval vector below the eval set's own low-percentile
    leave-one-out similarity) rises from ~5 % early to ~40 % late."""
    eval_vecs = np.stack(
        [vector(orjson.loads(line)) for line in generate_eval_set(n=800, dim=384, seed=99)]
    )
    sims = eval_vecs @ eval_vecs.T
    np.fill_diagonal(sims, -1.0)
    threshold = np.percentile(sims.max(axis=1), 2)
    cfg = SynthConfig(n_events=8000, seed=5, embedding_share=1.0, retrieval_share=0.0)
    vecs = np.stack([vector(orjson.loads(raw)) for raw in generate_events(cfg)])
    uncovered = (vecs @ eval_vecs.T).max(axis=1) < threshold
    quarters = [float(q.mean()) for q in np.array_split(uncovered, 4)]
    assert quarters == sorted(quarters)
    assert 0.02 < quarters[0] < 0.15
    assert 0.3 < quarters[-1] < 0.5


def test_eval_set_lines(tmp_path: Path) -> None:
    lines = list(generate_eval_set(n=300, dim=64, seed=1, embedding_model="m-1"))
    assert lines == list(generate_eval_set(n=300, dim=64, seed=1, embedding_model="m-1"))
    docs = [orjson.loads(line) for line in lines]
    assert len({d["id"] for d in docs}) == 300
    assert {d["embedding_model"] for d in docs} == {"m-1"}
    assert {vector(d).shape for d in docs} == {(64,)}
    path = tmp_path / "eval.jsonl"
    assert write_jsonl(path, lines) == 300
    assert path.read_bytes().splitlines() == lines
    # A dimension whose rows do not split into whole base64 quanta (e.g. 10 floats).
    odd = [vector(orjson.loads(x)) for x in generate_eval_set(n=3, dim=10, seed=1)]
    assert all(
        v.shape == (10,) and math.isclose(float(np.linalg.norm(v)), 1, rel_tol=1e-4) for v in odd
    )


def test_bad_events_cover_every_reason_and_validate_as_labelled() -> None:
    bad = generate_bad_events(seed=3)
    # invalid_otlp is a span record's reason (stream/core/otlp.py): no call event has it
    assert {reason for _, reason in bad} == set(REJECT_REASONS) - {"invalid_otlp"}
    assert all(isinstance(raw, bytes) for raw, _ in bad)
    for raw, reason in bad:
        assert reason_of(raw) == reason, (reason, raw[:200])
    assert [r for _, r in bad] == [r for _, r in generate_bad_events(seed=3)]
    sizes = {reason: max(len(raw) for raw, r in bad if r == reason) for _, reason in bad}
    assert sizes["too_large"] > (1 << 20)
    assert all(size < (1 << 20) for reason, size in sizes.items() if reason != "too_large")


def test_reject_reasons_are_documented() -> None:
    assert set(REJECT_REASONS) == {
        "invalid_json", "invalid_utf8", "missing_field", "wrong_type", "negative_tokens",
        "inconsistent_tokens", "bad_embedding", "embedding_not_finite", "too_large",
        "bad_timestamp", "ts_in_future", "invalid_value", "invalid_otlp",
    }  # fmt: skip
    assert all(desc and "\n" not in desc for desc in REJECT_REASONS.values())


@pytest.mark.parametrize(
    "kwargs",
    [{"n_events": -1}, {"n_events": 1, "rate_per_s": 0}, {"n_events": 1, "embedding_share": 1.5},
     {"n_events": 1, "n_tenants": 0}, {"n_events": 1, "stale_share": -0.1}],
)  # fmt: skip
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SynthConfig(**kwargs)
