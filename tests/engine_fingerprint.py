"""A deterministic engine run reduced to comparable arrays (used with and without JIT).

``python tests/engine_fingerprint.py OUT.npz`` runs a small fixed workload (embeddings,
retrieval, budgets, bad events) through the engine and saves every output column.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.evalset import load_eval_sets
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.synth import (
    SynthConfig,
    generate_bad_events,
    generate_eval_set,
    generate_events,
    write_jsonl,
)

MODEL = "text-embedding-3-small"


def fingerprint() -> dict[str, np.ndarray]:
    """Every numeric and string output of a 600-event run, as arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eval.jsonl"
        write_jsonl(path, generate_eval_set(n=150, dim=32, seed=9, embedding_model=MODEL))
        eval_sets = load_eval_sets(path)
    events = list(
        generate_events(
            SynthConfig(
                n_events=600, seed=9, n_tenants=5, dim=32, embedding_model=MODEL, rate_per_s=0.5
            )
        )
    )
    events += [raw for raw, _ in generate_bad_events(seed=9)][:20]
    budgets = BudgetConfig.model_validate(
        {
            "default": [
                {"limit_usd": 0.5, "window": "1h", "soft": [0.5]},
                {"limit_usd": 2.0, "window": "30d", "soft": [0.8]},
            ]
        }
    )
    engine = Engine(
        EngineConfig(
            prices=PriceTable(),
            budgets=budgets,
            eval_sets=eval_sets,
            drift_min_count=3,
            window_ms=600_000,
        )
    )
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(events), 150):
        res = engine.process(events[i : i + 150])
        for table in ("calls", "usage"):
            for name, col in getattr(res, table).items():
                arr = np.asarray(col)
                if arr.dtype == object:
                    arr = arr.astype(str)
                out.setdefault(f"{table}.{name}", []).append(arr)
        out.setdefault("alerts", []).append(
            np.array([a.alert_id + a.status for a in res.alerts], str)
        )
    out.setdefault("alerts", []).append(
        np.array([a.alert_id + a.status for a in engine.finish().alerts], str)
    )
    return {k: np.concatenate(v) for k, v in out.items()}


if __name__ == "__main__":
    np.savez(sys.argv[1], **fingerprint())
