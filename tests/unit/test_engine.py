"""Engine: results do not depend on batch boundaries or restarts; bad events stay local."""

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.evalset import load_eval_sets
from llmops_stream.stream.core.pricing import ModelPrice, PriceTable
from llmops_stream.stream.dev.synth import (
    SynthConfig,
    generate_bad_events,
    generate_eval_set,
    generate_events,
    write_jsonl,
)

MODEL = "text-embedding-3-small"
BUDGETS = BudgetConfig.model_validate(
    {
        "default": [
            {"limit_usd": 2.0, "window": "1h", "soft": [0.5], "hard": 1.0},
            {"limit_usd": 5.0, "window": "day", "soft": [0.8]},
        ]
    }
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], Any]:
    path = Path(tmp_path_factory.mktemp("eval")) / "eval.jsonl"
    write_jsonl(path, generate_eval_set(n=300, dim=384, seed=4, embedding_model=MODEL))
    events = list(
        generate_events(
            SynthConfig(
                n_events=4000,
                seed=4,
                n_tenants=6,
                rate_per_s=2.0,
                embedding_share=0.5,
                embedding_model=MODEL,
            )
        )
    )
    bad = [raw for raw, _ in generate_bad_events(seed=1)]
    for i, raw in enumerate(bad):
        events.insert((i * 131) % len(events), raw)
    return events, load_eval_sets(path)


def config(eval_sets: Any) -> EngineConfig:
    return EngineConfig(
        prices=PriceTable(), budgets=BUDGETS, eval_sets=eval_sets, drift_min_count=5
    )


def run(
    events: list[bytes], cuts: list[int], eval_sets: Any, restart_at: int | None = None
) -> dict[str, Any]:
    engine = Engine(config(eval_sets))
    out: dict[str, Any] = {"calls": [], "alerts": [], "stats": Counter(), "usage": Counter()}
    stored: list[tuple[str, str, int]] = []  # what llm_calls would hold: tenant, id, offset
    bounds = [0, *cuts, len(events)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if restart_at is not None and a == restart_at:
            engine = Engine.restore(config(eval_sets), engine.snapshot())
            # as the worker does: the dedup ids are read back from the stored calls
            span = engine.dedup_rebuild_range(0)
            if span is not None:
                rows = [r for r in stored if span[0] <= r[2] < span[1]]
                missing = engine.dedup_rebuild(
                    0,
                    np.array([r[0] for r in rows], dtype=object),
                    np.array([r[1] for r in rows], dtype=object),
                    np.array([r[2] for r in rows], dtype=np.int64),
                )
                assert missing == 0
        res = engine.process(events[a:b], offsets=np.arange(a, b))
        stored += zip(
            res.calls["tenant_id"],
            res.calls["event_id"],
            res.calls["kafka_offset"].tolist(),
            strict=True,
        )
        out["calls"] += list(
            zip(
                res.calls["event_id"],
                res.calls["cost_usd"].round(12),
                res.calls["uncovered"],
                res.calls["stale"],
                strict=True,
            )
        )
        out["alerts"] += [(a.alert_id, a.status) for a in res.alerts]
        out["stats"].update(res.stats)
        for i in range(len(res.usage["minute"])):
            out["usage"][(res.usage["minute"][i], res.usage["tenant_id"][i])] += int(
                res.usage["calls"][i]
            )
    out["alerts"] += [(a.alert_id, a.status) for a in engine.finish().alerts]
    return out


def test_batch_split_and_restart_do_not_change_results(setup: Any) -> None:
    events, eval_sets = setup
    whole = run(events, [], eval_sets)
    rng = np.random.default_rng(0)
    cuts = sorted(rng.choice(np.arange(1, len(events)), size=7, replace=False).tolist())
    split = run(events, cuts, eval_sets)
    restarted = run(events, cuts, eval_sets, restart_at=cuts[3])
    for other in (split, restarted):
        assert other["calls"] == whole["calls"]
        assert sorted(other["alerts"]) == sorted(whole["alerts"])
        assert other["stats"] == whole["stats"]
        assert other["usage"] == whole["usage"]
    assert whole["alerts"], "budgets are small enough to be crossed"
    assert len(set(whole["alerts"])) == len(whole["alerts"])
    # every input is accounted for exactly once
    s = whole["stats"]
    assert s["valid"] + s["duplicates"] + s["rejected"] == len(events)
    assert s["rejected"] == len(generate_bad_events(seed=1))


def test_pricing_edge_cases_and_unknowns() -> None:
    def ev(i: int, **kw: Any) -> bytes:
        base = {
            "event_id": f"e{i}",
            "ts": 1795428000000 + i,
            "tenant_id": "nobody-configured",
            "model": "my-model",
            "usage": {"input_tokens": 1000, "output_tokens": 10},
        }
        base.update(kw)
        return orjson.dumps(base)

    prices = PriceTable(
        {
            "my-model": ModelPrice(
                input=1.0, output=2.0, cache_read=0.1, cache_write=1.25, context_window=None
            )
        }
    )
    engine = Engine(EngineConfig(prices=prices))
    out = engine.process(
        [
            ev(0),
            ev(1, status="cache_hit"),
            ev(2, model="no-such-model-anywhere"),
            ev(
                3,
                usage={
                    "input_tokens": 10**12,
                    "output_tokens": 10**12,
                    "cache_read_tokens": 4 * 10**11,
                    "cache_write_tokens": 10**11,
                },
            ),
            ev(0),  # retry of e0
        ]
    )
    cost = out.calls["cost_usd"].tolist()
    assert cost[0] == pytest.approx((1000 * 1.0 + 10 * 2.0) / 1e6, rel=1e-12)
    assert cost[1] == 0.0 and cost[2] == 0.0
    assert out.calls["unpriced"].tolist() == [0, 0, 1, 0]
    assert cost[3] == pytest.approx((5e11 * 1.0 + 4e11 * 0.1 + 1e11 * 1.25 + 1e12 * 2.0) / 1e6)
    assert out.stats["duplicates"] == 1 and out.stats["unpriced"] == 1
    assert out.budget_states == {} and out.alerts == []


def test_empty_batch() -> None:
    engine = Engine(EngineConfig(prices=PriceTable()))
    out = engine.process([])
    assert out.stats["events"] == 0 and len(out.calls["event_id"]) == 0
    assert len(out.usage["minute"]) == 0
