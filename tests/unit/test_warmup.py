"""The warm-up batch goes through every path it claims to compile."""

from __future__ import annotations

import numpy as np

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.decode import MAX_MESSAGE_BYTES
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.json_scan import scan_calls
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.core.warmup import _sample_events, warm_up


def test_sample_takes_the_scanner_msgspec_dedup_rejects_and_budgets() -> None:
    events = _sample_events()
    offsets = np.zeros(len(events) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in events], out=offsets[1:])
    scan = scan_calls(np.frombuffer(b"".join(events), np.uint8), offsets, MAX_MESSAGE_BYTES)
    assert scan.ok[:8].all() and not scan.ok[8:].any()  # the last two go to msgspec

    budgets = BudgetConfig.model_validate(
        {"default": [{"id": "d", "limit_usd": 0.001, "window": "1h", "soft": [0.5]}]}
    )
    config = EngineConfig(prices=PriceTable(), budgets=budgets)
    engine = Engine(config, wall=lambda: 1_767_225_700_000)
    out = engine.process(events)
    assert out.stats["duplicates"] == 2  # warm-7 repeats warm-0, and so does the escaped one
    assert out.stats["rejected:missing_field"] == 1
    assert {a.type for a in out.alerts} == {"budget"}
    assert out.stats["retrieval"] == out.stats["valid"]


def test_warm_up_runs_and_reports_seconds() -> None:
    assert 0 < warm_up() < 600
