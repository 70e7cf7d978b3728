"""Compile (or load from numba's on-disk cache) every kernel of the engine's hot path once,
before real traffic arrives.

The first run after an install or upgrade compiles the kernels: the JSON scanner alone
takes 20-60 s on a small machine. Without a warm-up that pause lands, unexplained, in the
middle of a user's first batch (a stalled progress bar, a worker late for its group). The
CLI calls :func:`warm_up` under a visible status line instead; with the cache in place it
takes a fraction of a second. The tests call it once per session, so no subprocess a test
starts meets an empty cache (and several of them never compile the same kernel at once).
"""

from __future__ import annotations

import time

import msgspec

from .budgets import BudgetConfig
from .engine import Engine, EngineConfig
from .pricing import PriceTable

_T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _sample_events() -> list[bytes]:
    """A few events touching every path: retrieval chunks, a retry, a budget crossing, an
    event the scanner declines (escaped string) and one the decoder rejects."""
    events: list[dict[str, object]] = []
    for i in range(8):
        events.append(
            {
                "event_id": f"warm-{i % 7}",  # the last one repeats the first: dedup
                "ts": _T0_MS + i * 1000 if i % 2 else "2026-01-01T00:00:01.5Z",
                "tenant_id": "warm-up",
                "app": "warm",
                "provider": "openai",
                "model": "gpt-4o-mini",
                "served_model": "gpt-4o-mini-2024-07-18",
                "usage": {"input_tokens": 1000 * (i + 1), "output_tokens": 200},
                "latency_ms": 812.5,
                "status": "ok",
                "retrieval": {
                    "index_version": "v1",
                    "chunks": [{"chunk_id": "c", "embedded_at": "2025-06-01T00:00:00Z"}],
                },
            }
        )
    raw = [msgspec.json.encode(e) for e in events]
    raw.append(raw[0].replace(b'"warm"', b'"w\\u0061rm"'))  # declined by the scanner
    raw.append(b'{"event_id": "x"}')  # rejected: missing fields
    return raw


def warm_up() -> float:
    """Run a tiny batch through an engine with a budget; returns the seconds it took."""
    started = time.perf_counter()
    budgets = BudgetConfig.model_validate(
        {"default": [{"id": "d", "limit_usd": 0.001, "window": "1h", "soft": [0.5]}]}
    )
    engine = Engine(EngineConfig(prices=PriceTable(), budgets=budgets), wall=lambda: _T0_MS)
    events = _sample_events()
    engine.process(events[:5])
    engine.process(events[5:])
    engine.tick()
    return time.perf_counter() - started
