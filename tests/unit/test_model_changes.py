"""Upstream model changes (``stream/core/model_changes.py``): one alert per affected tenant
when a new served model takes over, resolved once it settles or is superseded — checked
against the per-event reference, over batch splits, restarts and a controllable clock."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.alerts import Alert
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.model_changes import ServedModels
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.core.timeutil import iso_to_ms
from llmops_stream.stream.files.replay import build_engine_config
from llmops_stream.stream.runtime.settings import Settings
from llmops_stream.stream.testing import T0_MS, ListSink, ManualClock, MemorySource, run_engine
from tests.reference_model_changes import Call, Emitted, reference_alerts

MIN = 60_000


def _feed(models: ServedModels, calls: list[Call], sizes: list[int]) -> list[Alert]:
    """``calls`` through ``models`` in batches of ``sizes`` (cycled), settling after each."""
    out: list[Alert] = []
    i = k = 0
    while i < len(calls):
        batch = calls[i : i + max(sizes[k % len(sizes)], 1)]
        k += 1
        i += len(batch)

        def col(name: str, batch: list[Call] = batch) -> np.ndarray:
            arr = np.empty(len(batch), dtype=object)
            arr[:] = [getattr(c, name) for c in batch]
            return arr

        out += models.add(
            col("tenant"), col("provider"), col("model"), col("served"),
            np.array([c.ts for c in batch], np.int64), np.array([c.clock for c in batch], np.int64),
        )  # fmt: skip
        out += models.advance(batch[-1].clock)
    return out


def _as_emitted(alerts: list[Alert]) -> list[Emitted]:
    return [
        Emitted(
            a.status,
            a.tenant_id,
            a.details["provider"],
            a.details["model"],
            a.details["old_served_model"],
            a.details["new_served_model"],
            a.details["first_seen"],
            iso_to_ms(a.emitted_at),
        )  # fmt: skip
        for a in alerts
    ]


def _calls(spec: list[tuple[str, str]], *, start: int = T0_MS, step: int = 1000) -> list[Call]:
    """(tenant, served) pairs for provider openai, model gpt-4o, one per ``step`` ms."""
    return [
        Call(t, "openai", "gpt-4o", s, start + i * step, start + i * step)
        for i, (t, s) in enumerate(spec)
    ]


OLD, NEW = "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"


def test_a_switch_alerts_once_per_affected_tenant_and_resolves_when_settled() -> None:
    models = ServedModels(min_calls=5, settle_ms=3_600_000)
    before = _calls([(t, OLD) for t in "abc" * 10])
    after = _calls([(t, NEW) for t in "ab" * 10], start=T0_MS + 10 * MIN)
    alerts = _feed(models, before + after, [7])
    firing = [a for a in alerts if a.status == "firing"]
    assert sorted(a.tenant_id for a in firing) == ["a", "b"]  # c was never served the new one
    assert {a.type for a in firing} == {"model"}
    first_new = after[0].ts
    for a in firing:
        assert a.details["old_served_model"] == OLD
        assert a.details["new_served_model"] == NEW
        assert a.details["first_seen"] == first_new
    # c's next call is served by the new model: c is affected too, once.
    late = _calls([("c", NEW), ("c", NEW), ("a", NEW)], start=T0_MS + 20 * MIN)
    more = _feed(models, late, [1])
    assert [(a.status, a.tenant_id) for a in more] == [("firing", "c")]
    assert len({a.alert_id for a in firing + more}) == 3
    # An hour of stream time after the takeover, each of the three resolves, same id.
    # 9 calls to none: the first count with 9 >= 3 * sqrt(9)
    takeover = after[8].clock
    assert models.advance(takeover + 3_600_000 - 1) == []
    resolved = models.advance(takeover + 3_600_000)
    assert sorted(a.tenant_id for a in resolved) == ["a", "b", "c"]
    assert {a.status for a in resolved} == {"resolved"}
    assert {a.alert_id for a in resolved} == {a.alert_id for a in firing + more}
    # After it settled, a newcomer served the new model is not alerted: it is the baseline.
    assert _feed(models, _calls([("d", NEW)], start=T0_MS + 25 * 3_600_000), [1]) == []


def test_a_canary_below_min_calls_or_a_minority_does_not_alert() -> None:
    models = ServedModels(min_calls=5, settle_ms=3_600_000)
    canary = [("a", OLD)] * 3 + [("a", NEW)] * 4 + [("a", OLD)] * 30 + [("a", NEW)] * 2
    assert _feed(models, _calls(canary), [3]) == []
    # A steady minority (1 in 3) never takes over, however long it lasts.
    models = ServedModels(min_calls=5, settle_ms=3_600_000)
    minority = [("a", NEW) if i % 3 == 2 else ("a", OLD) for i in range(300)]
    assert _feed(models, _calls(minority), [17]) == []


def test_a_challenger_needs_a_clear_majority() -> None:
    models = ServedModels(min_calls=2, settle_ms=3_600_000)
    tie = [("a", OLD), ("a", NEW), ("a", OLD), ("a", OLD), ("a", NEW)]  # 2 new vs 2 old
    assert _feed(models, _calls(tie), [5]) == []
    # 13 new vs 2 old: ahead by 11 < 3 * sqrt(15); 14 vs 2: ahead by 12 >= 3 * sqrt(16).
    assert _feed(models, _calls([("a", NEW)] * 11, start=T0_MS + MIN), [4]) == []
    assert len(_feed(models, _calls([("a", NEW)], start=T0_MS + 2 * MIN), [1])) == 1


def test_a_partial_rollout_alerts_once_and_the_rest_does_not_take_back_over() -> None:
    models = ServedModels(min_calls=20, settle_ms=10**12)
    rng = np.random.default_rng(7)
    spec = [("a", OLD)] * 200 + [("a", NEW if rng.random() < 0.6 else OLD) for _ in range(20_000)]
    alerts = _feed(models, _calls(spec), [500])
    assert [(a.status, a.details["new_served_model"]) for a in alerts] == [("firing", NEW)]


def test_a_rollback_resolves_the_change_and_alerts_the_way_back() -> None:
    models = ServedModels(min_calls=3, settle_ms=24 * 3_600_000)
    spec = [("a", OLD)] * 5 + [("a", NEW)] * 10 + [("a", OLD)] * 10
    alerts = _feed(models, _calls(spec), [4])
    got = [(a.status, a.details["old_served_model"], a.details["new_served_model"]) for a in alerts]
    assert got == [("firing", OLD, NEW), ("resolved", OLD, NEW), ("firing", NEW, OLD)]
    assert alerts[0].alert_id == alerts[1].alert_id != alerts[2].alert_id


def test_pairs_are_apart_and_calls_without_served_model_are_ignored() -> None:
    models = ServedModels(min_calls=2, settle_ms=3_600_000)
    calls = [
        Call("a", "openai", "gpt-4o", OLD, T0_MS, T0_MS),
        Call("a", "azure", "gpt-4o", NEW, T0_MS + 1, T0_MS + 1),  # another provider: baseline
        Call("a", "openai", "gpt-4o-mini", NEW, T0_MS + 2, T0_MS + 2),  # another model
        Call("a", "openai", "gpt-4o", "", T0_MS + 3, T0_MS + 3),
        Call("a", "openai", "gpt-4o", "", T0_MS + 4, T0_MS + 4),
    ]
    assert _feed(models, calls, [5]) == []
    assert len(models) == 3


_TENANTS = st.sampled_from(["a", "b", "c", "d"])
_SERVED = st.sampled_from(["", "s1", "s2", "s3"])
_PAIRS = st.sampled_from([("openai", "gpt-4o"), ("", "gpt-4o"), ("google", "gemini")])


@settings(max_examples=200, deadline=None)
@given(
    spec=st.lists(st.tuples(_TENANTS, _PAIRS, _SERVED, st.integers(-5_000, 60_000)), max_size=120),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    min_calls=st.integers(1, 6),
    cut=st.integers(0, 120),
)
def test_batches_and_a_restart_give_what_the_reference_gives(
    spec: list[tuple[str, tuple[str, str], str, int]], sizes: list[int], min_calls: int, cut: int
) -> None:
    calls, clock = [], T0_MS
    for tenant, (provider, model), served, dt in spec:
        ts = clock + dt  # some late (dt < 0): the clock does not go back
        clock = max(clock, ts)
        calls.append(Call(tenant, provider, model, served, ts, clock))
    settle = 10**12  # nothing settles mid-stream: the reference settles at the end only
    end = clock + settle
    want = reference_alerts(calls, min_calls=min_calls, settle_ms=settle, final_clock=end)
    models = ServedModels(min_calls=min_calls, settle_ms=settle)
    got = _feed(models, calls[:cut], sizes)
    # A restart from a snapshot in the middle changes nothing.
    models = ServedModels.restore(models.snapshot(), min_calls=min_calls, settle_ms=settle)
    got += _feed(models, calls[cut:], sizes[::-1])
    got += models.advance(clock + settle)

    # Pairs are independent and a batch is taken pair by pair: the order holds per pair.
    def per_pair(alerts: list[Emitted]) -> dict[tuple[str, str], list[Emitted]]:
        out: dict[tuple[str, str], list[Emitted]] = {}
        for a in alerts:
            out.setdefault((a.provider, a.model), []).append(a)
        return out

    assert per_pair(_as_emitted(got)) == per_pair(want)


def _event(i: int, tenant: str, served: str, ts: int) -> dict[str, object]:
    return {
        "event_id": f"e{i}",
        "ts": ts,
        "tenant_id": tenant,
        "model": "gpt-4o",
        "provider": "openai",
        "served_model": served,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def test_engine_switch_in_a_replay_gives_one_model_alert_per_tenant_then_resolves() -> None:
    wall = ManualClock(T0_MS + 3 * 3_600_000)
    config = EngineConfig(prices=PriceTable(use_library=False), model_min_calls=20)
    engine = Engine(config, wall)
    tenants = ["acme", "globex", "initech"]
    events = [_event(i, tenants[i % 3], OLD, T0_MS + i * 1000) for i in range(300)]
    # From here on the provider answers with the new snapshot, for acme and globex only
    # (initech stops calling).
    events += [_event(300 + i, tenants[i % 2], NEW, T0_MS + (300 + i) * 1000) for i in range(300)]
    sink = ListSink()
    run_engine(engine, MemorySource(events), sink, batch_size=64)
    model_alerts = [a for a in sink.alerts if a.type == "model"]
    assert sorted((a.status, a.tenant_id) for a in model_alerts) == [
        ("firing", "acme"),
        ("firing", "globex"),
    ]
    # The stream goes quiet; a day later by the wall clock, the change has settled.
    wall.advance(25 * 3_600_000)
    tick = engine.tick()
    resolved = [a for a in tick.alerts if a.type == "model"]
    assert sorted(a.tenant_id for a in resolved) == ["acme", "globex"]
    assert {a.alert_id for a in resolved} == {a.alert_id for a in model_alerts}
    # The state survives a checkpoint.
    again = Engine.restore(config, engine.snapshot(), wall)
    assert again.served_models.snapshot() == engine.served_models.snapshot()


def test_settings_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_MODEL_MIN_CALLS", "7")
    monkeypatch.setenv("LLMOPS_MODEL_SETTLE_H", "2")
    config = build_engine_config(Settings(), None)
    assert (config.model_min_calls, config.model_settle_ms) == (7, 7_200_000)
    engine = Engine(config)
    assert (engine.served_models.min_calls, engine.served_models.settle_ms) == (7, 7_200_000)


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["", "p", "q"]), st.sampled_from(["m1", "m2", "m3"])),
            max_size=25,
        ),
        max_size=4,
    )
)
def test_missing_providers_take_the_last_one_seen_with_the_model(
    batches: list[list[tuple[str, str]]],
) -> None:
    models = ServedModels(min_calls=1, settle_ms=1)
    last: dict[str, str] = {}  # reference: walk every row in arrival order
    for batch in batches:
        want = []
        for provider, model in batch:
            if provider:
                last[model] = provider
            want.append(provider or last.get(model, ""))
        provider = np.array([p for p, _ in batch], dtype=object)
        model = np.array([m for _, m in batch], dtype=object)
        assert models._fill_providers(provider, model).tolist() == want
