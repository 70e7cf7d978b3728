"""The engine on the stream's clock, driven by a controllable wall clock: what a tenant that
lies about its clock, one that is refused, and one that goes quiet see."""

from typing import Any

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import ModelPrice, PriceTable
from llmops_stream.stream.testing import T0_MS, ListSink, ManualClock, MemorySource, run_engine

MIN = 60_000
HOUR = 3_600_000
PRICES = PriceTable(
    {"m": ModelPrice(input=0.2, output=0.0, cache_read=0.2, cache_write=0.2)}, use_library=False
)
CAP = BudgetConfig.model_validate(
    {"default": [{"limit_usd": 1.0, "window": "1h", "soft": [0.5], "hard": 1.0, "id": "h"}]}
)


def call(i: int, ts: int, tenant: str = "acme", **kw: Any) -> dict[str, Any]:
    """A 0.2 USD call (1M input tokens at 0.2 USD per million)."""
    return {
        "event_id": kw.pop("event_id", f"{tenant}-{i}"),
        "ts": ts,
        "tenant_id": tenant,
        "model": "m",
        "usage": {"input_tokens": 1_000_000, "output_tokens": 0},
        **kw,
    }


def engine(wall: ManualClock, **kw: Any) -> Engine:
    return Engine(EngineConfig(prices=PRICES, budgets=CAP, **kw), wall)


def state(sink: ListSink, tenant: str = "acme") -> dict[str, Any]:
    return sink.latest_states()[(tenant, "h")]


def test_an_event_dated_2099_does_not_switch_the_cap_off() -> None:
    wall = ManualClock(T0_MS + HOUR)
    eng, sink = engine(wall), ListSink()
    events = [call(i, T0_MS + i * MIN) for i in range(3)]
    events.append(call(3, 4_070_908_800_000))  # 2099-01-01
    events += [call(i, T0_MS + i * MIN) for i in range(4, 14)]
    run_engine(eng, MemorySource(events), sink, batch_size=4)
    assert [r["reason"] for r in sink.rejected] == ["ts_in_future"]
    assert "2099-01-01" in sink.rejected[0]["detail"]
    st = state(sink)
    assert st["status"] == "exceeded" and round(st["spend_usd"], 6) == 2.6
    hard = [a for a in sink.alerts if a.severity == "critical"]
    assert [a.status for a in hard] == ["firing"]
    assert eng.clock.value == T0_MS + 13 * MIN


def test_future_skew_bound_is_inclusive_and_configurable() -> None:
    wall = ManualClock(T0_MS)
    eng, sink = engine(wall, max_future_skew_ms=60_000), ListSink()
    run_engine(eng, MemorySource([call(0, T0_MS + 60_000), call(1, T0_MS + 60_001)]), sink)
    assert [c["event_id"] for c in sink.calls] == ["acme-0"]
    assert [r["event_id"] for r in sink.rejected] == ["acme-1"]


def test_retries_after_a_skewed_event_are_still_deduplicated() -> None:
    """An event 14 min ahead (allowed) moves the clock, but not past retries' horizon."""
    wall = ManualClock(T0_MS)
    eng, sink = engine(wall), ListSink()
    first = [call(0, T0_MS - MIN), call(1, T0_MS + 14 * MIN)]
    retry = [call(0, T0_MS - MIN)]
    run_engine(eng, MemorySource(first + retry), sink, batch_size=1)
    assert len(sink.calls) == 2
    dup_rows = [u for u in sink_usage(eng, first + retry) if u]
    assert dup_rows == [1]


def sink_usage(_eng: Engine, events: list[dict[str, Any]]) -> list[int]:
    """Duplicates counted per usage row, by a fresh engine over ``events``."""
    eng = engine(ManualClock(T0_MS))
    out = eng.process(MemorySource(events).events)
    return [int(x) for x in out.usage["duplicates"]]


def test_refused_tenant_returns_to_ok_while_others_keep_the_clock_moving() -> None:
    wall = ManualClock(T0_MS)
    eng, sink = engine(wall), ListSink()
    run_engine(eng, MemorySource([call(i, T0_MS + i * 1000) for i in range(12)]), sink)
    assert state(sink)["status"] == "exceeded"
    # acme is refused (sends nothing); globex's traffic goes on for 4 hours
    others = [call(i, T0_MS + 10 * MIN * i, tenant="globex") for i in range(1, 25)]
    wall.set(T0_MS + 4 * HOUR)
    run_engine(eng, MemorySource(others), sink, batch_size=3)
    st = state(sink)
    assert st["status"] == "ok" and st["spend_usd"] == 0.0
    resolved = [a for a in sink.alerts_of("acme") if a.status == "resolved"]
    assert {a.severity for a in resolved} == {"warning", "critical"}


def test_idle_stream_follows_the_wall_clock() -> None:
    """Nothing arrives at all: after the idle time, ticks move the clock with the wall, the
    window slides, and the change comes out of ``tick`` (for the worker to publish)."""
    wall = ManualClock(T0_MS)
    eng, sink = engine(wall, idle_ms=1000), ListSink()
    run_engine(eng, MemorySource([call(i, T0_MS - 59 * MIN + i) for i in range(6)]), sink)
    assert state(sink)["status"] == "exceeded"
    assert eng.tick().budget_states == {}  # not idle long enough yet: nothing moves
    wall.advance(500)
    assert eng.clock.value == T0_MS - 59 * MIN + 5
    wall.advance(2 * MIN)
    out = eng.tick()
    sink.add(out)
    assert eng.clock.value == wall()
    assert list(out.budget_states["status"]) == ["ok"]
    assert [a.status for a in out.alerts] == ["resolved", "resolved"]
    assert eng.tick().alerts == []  # resolved once


def test_old_events_count_in_their_own_minute_not_in_a_window_that_moved_on() -> None:
    wall = ManualClock(T0_MS)
    eng, sink = engine(wall), ListSink()
    old = T0_MS - 3 * HOUR
    run_engine(eng, MemorySource([call(0, T0_MS), call(1, old)]), sink)
    assert len(sink.calls) == 2  # both in the totals
    assert round(state(sink)["spend_usd"], 6) == 0.2  # the old one is not in the 1 h window
    minutes = set(eng.process(MemorySource([call(2, old + 5)]).events).usage["minute"])
    assert minutes == {(old - old % MIN) // 1000}


def retrieval_call(i: int, ts: int, tenant: str, stale: bool) -> dict[str, Any]:
    """A call that retrieved one chunk, outdated (its source changed after embedding) or not."""
    chunk = {"chunk_id": f"c{i}", "doc_id": "d", "embedded_at": ts - 10_000, "score": 0.9,
             "source_updated_at": ts - 5_000 if stale else ts - 20_000}  # fmt: skip
    return call(i, ts, tenant, retrieval={"index_version": "v1", "chunks": [chunk]})


def test_quiet_tenant_with_stale_retrieval_is_alerted_once() -> None:
    """12 retrieval calls per 15 min, all stale, for 3 hours: no 15-minute window reaches
    the minimum of 20, but the 30-minute span does — one firing, not one per window."""
    wall = ManualClock(T0_MS + 4 * HOUR)
    eng, sink = engine(wall), ListSink()
    events = [retrieval_call(i, T0_MS + i * 75_000, "quiet", True) for i in range(144)]
    events += [retrieval_call(i, T0_MS + i * 75_000, "tiny", True) for i in range(3)]
    run_engine(eng, MemorySource(events), sink, batch_size=10)
    fresh = [a for a in sink.alerts if a.type == "freshness"]
    assert [(a.tenant_id, a.status) for a in fresh] == [("quiet", "firing")]
    assert fresh[0].details["span_ms"] >= 30 * MIN


def test_windows_close_on_an_idle_stream() -> None:
    """Stale retrieval in one window, then silence: the wall clock closes the window."""
    wall = ManualClock(T0_MS)
    eng, sink = engine(wall), ListSink()
    events = [retrieval_call(i, T0_MS - 10 * MIN + i * 1000, "busy", True) for i in range(30)]
    run_engine(eng, MemorySource(events), sink)
    assert [a for a in sink.alerts if a.type == "freshness"] == []
    wall.advance(30 * MIN)
    sink.add(eng.tick())
    assert [(a.tenant_id, a.status) for a in sink.alerts if a.type == "freshness"] == [
        ("busy", "firing")
    ]
