"""The public test helpers: a clock that never goes back, sources and sinks that keep order."""

import pytest

from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.testing import T0_MS, ListSink, ManualClock, MemorySource, run_engine


def test_manual_clock_moves_only_forward() -> None:
    clock = ManualClock()
    assert clock() == T0_MS
    assert clock.advance(1500) == T0_MS + 1500
    clock.set(T0_MS + 2000)
    assert clock() == T0_MS + 2000
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="does not go back"):
        clock.set(T0_MS)


def test_source_batches_and_sink_rows_keep_stream_order() -> None:
    events = [
        {"event_id": f"e{i}", "ts": T0_MS - i, "tenant_id": f"t{i % 2}", "model": "m",
         "usage": {"input_tokens": 1, "output_tokens": 1}}
        for i in range(5)
    ]  # fmt: skip
    source = MemorySource(events)
    source.append(b"not json")
    assert [len(b) for b in source.batches(2)] == [2, 2, 2]
    sink = ListSink()
    run_engine(Engine(EngineConfig(prices=PriceTable(use_library=False)), ManualClock()), source,
               sink, batch_size=2)  # fmt: skip
    assert [c["event_id"] for c in sink.calls] == [f"e{i}" for i in range(5)]
    assert [r["reason"] for r in sink.rejected] == ["invalid_json"]
    assert sink.alerts_of("t0") == [] and sink.latest_states() == {}
