"""Budget tracker: semantics against a reference model, edge cases, config errors, kernels."""

import json
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core import budgets as bm
from llmops_stream.stream.core.alerts import Alert
from llmops_stream.stream.core.budgets import (
    BudgetConfig,
    BudgetRule,
    BudgetState,
    BudgetTracker,
    load_budgets,
    parse_budgets,
)
from llmops_stream.stream.core.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_budgets import ReferenceBudgets  # noqa: E402

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000


def month_index(ms: int) -> int:
    """Calendar month (UTC) of an epoch-ms instant as ``year*12 + month-1`` (reference)."""
    dt = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    return dt.year * 12 + dt.month - 1


def month_start_ms(index: int) -> int:
    """Epoch ms of the first instant of calendar month ``index`` (reference)."""
    year, month0 = divmod(index, 12)
    return int(datetime(year, month0 + 1, 1, tzinfo=UTC).timestamp() * 1000)


def ms(text: str) -> int:
    """Epoch ms of an ISO time (UTC)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


Event = tuple[str, int, float, str, str]  # tenant, ts_ms, cost_usd, app, event_id


def columns(events: list[Event]) -> tuple[np.ndarray, ...]:
    """Events as the column arrays :meth:`BudgetTracker.apply` takes."""
    return (
        np.array([e[0] for e in events], dtype=object),
        np.array([e[1] for e in events], dtype=np.int64),
        np.array([e[2] for e in events], dtype=np.float64),
        np.array([e[3] for e in events], dtype=object),
        np.array([e[4] for e in events], dtype=object),
    )


def run(tracker: BudgetTracker, events: list[Event]) -> bm.BudgetResult:
    return tracker.apply(*columns(events))


def comparable(alert: Alert) -> dict[str, Any]:
    """An alert without its wall-clock field."""
    d = msgspec.structs.asdict(alert)
    d.pop("emitted_at")
    return d


def state_map(states: list[BudgetState]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s.tenant_id, s.budget_id): msgspec.structs.asdict(s) for s in states}


def column_rows(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Columns (``state_columns``) back to one dict per state, plain Python values."""
    names = list(cols)
    return [
        dict(zip(names, vals, strict=True))
        for vals in zip(*(cols[k].tolist() for k in names), strict=True)
    ]


def config(data: dict[str, Any]) -> BudgetConfig:
    return parse_budgets(data)


# --------------------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "budgets.json"
    p.write_text(text, encoding="utf-8")
    return p


def test_load_budgets_fills_ids_and_sorts_soft(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        json.dumps(
            {
                "default": [{"limit_usd": 5, "window": "month"}],
                "tenants": {
                    "acme": [
                        {"limit_usd": 50, "window": "24h", "soft": [0.8, 0.5], "hard": 1.0},
                        {"limit_usd": 50, "window": "1h", "id": "burst"},
                    ],
                    "free": [],
                },
            }
        ),
    )
    cfg = load_budgets(p)
    acme = cfg.rules_for("acme")
    assert [r.id for r in acme] == ["24h-50", "burst"]
    assert acme[0].soft == [0.5, 0.8]
    assert [r.id for r in cfg.rules_for("someone-else")] == ["month-5"]
    assert cfg.rules_for("free") == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"default": [{"limit_usd": 5, "window": "2h"}]}', "default.0.window"),
        ('{"default": [{"limit_usd": 5, "window": "1h", "soft": [1.0]}]}', "below hard"),
        ('{"default": [{"limit_usd": 5, "window": "1h", "soft": [1.2], "hard": 1.1}]}', "soft"),
        ('{"default": [{"limit_usd": 5, "window": "1h", "soft": [0.5, 0.5]}]}', "distinct"),
        ('{"default": [{"limit_usd": 5, "window": "1h", "soft": [-0.1]}]}', "> 0"),
        ('{"default": [{"limit_usd": -5, "window": "1h"}]}', "default.0.limit_usd"),
        ('{"default": [{"limit_usd": 0, "window": "1h"}]}', "limit_usd"),
        ('{"default": [{"limit_usd": NaN, "window": "1h"}]}', "limit_usd"),
        ('{"default": [{"limit_usd": 5, "window": "1h", "hard": 0}]}', "hard"),
        ('{"default": [{"limit_usd": 1e12, "window": "month"}]}', "too large"),
        ('{"default": [{"limit_usd": 5, "window": "1h", "sof": [0.5]}]}', "sof"),
        ('{"default": [{"window": "1h"}]}', "limit_usd"),
        ('{"defaults": []}', "defaults"),
        (
            '{"tenants": {"acme": [{"limit_usd": 5, "window": "1h"},'
            ' {"limit_usd": 5, "window": "1h", "soft": [0.5]}]}}',
            "tenants.acme: duplicate budget id '1h-5'",
        ),
        ('{"default": [{"limit_usd": 5, "window": "1h",}]}', "invalid JSON at line 1"),
        ("", "invalid JSON"),
    ],
)
def test_config_errors_are_one_actionable_line(tmp_path: Path, text: str, fragment: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_budgets(p)
    msg = str(info.value)
    assert msg.startswith(f"budget file {p}: ")
    assert fragment in msg
    assert "\n" not in msg


def test_missing_budget_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"budget file .*nope\.json: not found"):
        load_budgets(tmp_path / "nope.json")


def test_thresholds_in_units() -> None:
    rule = BudgetRule(limit_usd=50, window="24h", soft=[0.5, 0.8])
    assert rule.threshold_units() == [250 * 10**9, 400 * 10**9, 500 * 10**9]
    assert rule.levels == [0.5, 0.8, 1.0]


# --------------------------------------------------------------------------- edge cases

BASIC = {
    "default": [{"limit_usd": 50, "window": "24h", "soft": [0.5, 0.8]}],
    "tenants": {"free": [], "acme": [{"limit_usd": 10, "window": "month", "soft": [0.5]}]},
}
T0 = ms("2026-03-10T12:00:00")


def test_empty_batch() -> None:
    tr = BudgetTracker(config(BASIC))
    res = run(tr, [])
    assert res.alerts == [] and res.states == []
    assert tr.states() == []


def test_one_event_state() -> None:
    tr = BudgetTracker(config(BASIC))
    res = run(tr, [("t1", T0, 1.25, "chat", "e1")])
    assert res.alerts == []
    assert res.states == [
        BudgetState(
            tenant_id="t1",
            budget_id="24h-50",
            window="24h",
            limit_usd=50.0,
            spend_usd=1.25,
            remaining_usd=48.75,
            status="ok",
            as_of_ms=T0,
            period_start_ms=T0 - DAY,
        )
    ]
    assert tr.states() == res.states
    run(tr, [("acme", T0 + 5, 2.0, "chat", "e2")])
    (acme,) = [s for s in tr.states() if s.tenant_id == "acme"]
    assert acme.period_start_ms == ms("2026-03-01T00:00:00")
    assert (acme.spend_usd, acme.remaining_usd, acme.as_of_ms) == (2.0, 8.0, T0 + 5)


def test_exactly_at_threshold_alerts_just_below_does_not() -> None:
    tr = BudgetTracker(config(BASIC))
    res = run(tr, [("t1", T0, 24.9999999999, "chat", "e1")])
    assert res.alerts == [] and res.states[0].status == "ok"
    res = run(tr, [("t1", T0 + 1, 0.0000000001, "rag", "e2")])
    (alert,) = res.alerts
    assert (alert.value, alert.threshold, alert.severity) == (25.0, 25.0, "warning")
    assert alert.app == "rag" and alert.details["event_id"] == "e2"
    assert alert.details["status"] == "warn" and res.states[0].status == "warn"
    res = run(tr, [("t1", T0 + 2, 25.0, "chat", "e3")])
    assert [a.details["level"] for a in res.alerts] == [0.8, 1.0]
    assert res.states[0].status == "exceeded" and res.states[0].remaining_usd == 0.0


def test_one_event_crossing_several_levels() -> None:
    tr = BudgetTracker(config(BASIC))
    res = run(tr, [("t1", T0, 70.0, "chat", "big")])
    assert [(a.details["level"], a.details["kind"], a.severity) for a in res.alerts] == [
        (0.5, "soft", "warning"),
        (0.8, "soft", "warning"),
        (1.0, "hard", "critical"),
    ]
    assert len({a.alert_id for a in res.alerts}) == 3
    assert all(a.details["event_id"] == "big" and a.value == 70.0 for a in res.alerts)
    assert all(a.details["status"] == "exceeded" for a in res.alerts)
    assert res.alerts[0].window_start == "2026-03-09T12:00:00.000Z"
    assert res.alerts[0].window_end == "2026-03-10T12:00:00.000Z"
    # Already fired: more spend in the same window does not alert again.
    assert run(tr, [("t1", T0 + 1000, 70.0, "chat", "more")]).alerts == []


def test_sliding_rearms_after_expiry_and_alerts_again() -> None:
    cfg = config({"default": [{"limit_usd": 10, "window": "1h"}]})
    tr = BudgetTracker(cfg)
    first = run(tr, [("t", T0, 10.0, "a", "e1")]).alerts
    assert len(first) == 1
    # Still in the window: no new alert however much is added.
    assert run(tr, [("t", T0 + 30 * MIN, 1.0, "a", "e2")]).alerts == []
    # The first minute leaves the window: spend 1 < 10, the level re-arms ...
    res = run(tr, [("t", T0 + 61 * MIN, 0.0, "a", "e3")])
    assert res.alerts == [] and res.states[0].spend_usd == 1.0
    assert res.states[0].status == "ok"
    # ... so crossing again is a new alert, with a different id.
    second = run(tr, [("t", T0 + 62 * MIN, 9.0, "a", "e4")]).alerts
    assert len(second) == 1 and second[0].alert_id != first[0].alert_id
    assert second[0].value == 10.0
    assert second[0].window_end == "2026-03-10T13:02:00.000Z"


def test_sliding_no_rearm_while_spend_stays_above() -> None:
    tr = BudgetTracker(config({"default": [{"limit_usd": 10, "window": "1h"}]}))
    assert len(run(tr, [("t", T0, 6.0, "a", "1"), ("t", T0 + 30 * MIN, 6.0, "a", "2")]).alerts)
    # 6 expires, 6 stays: 6 < 10 re-arms; then +5 -> 11 alerts again.
    res = run(tr, [("t", T0 + 61 * MIN, 5.0, "a", "3")])
    assert len(res.alerts) == 1 and res.alerts[0].value == 11.0
    # Expiry leaving 11 - 0 >= 10 (nothing expired): no re-arm, no alert.
    assert run(tr, [("t", T0 + 62 * MIN, 1.0, "a", "4")]).alerts == []


def test_late_and_out_of_order_events_in_sliding_window() -> None:
    tr = BudgetTracker(config({"default": [{"limit_usd": 100, "window": "1h"}]}))
    run(tr, [("t", T0, 1.0, "a", "1"), ("t", T0 + 59 * MIN, 2.0, "a", "2")])
    # Out of order but inside the window: counted.
    res = run(tr, [("t", T0 + 10 * MIN, 4.0, "a", "3")])
    assert res.states[0].spend_usd == 7.0 and res.states[0].as_of_ms == T0 + 59 * MIN
    # Its bucket already left the window: not counted.
    res = run(tr, [("t", T0 + 59 * MIN - HOUR, 100.0, "a", "4")])
    assert res.states[0].spend_usd == 7.0 and res.alerts == []
    # The watermark moves on: the first bucket (1.0) expires.
    res = run(tr, [("t", T0 + 60 * MIN, 0.0, "a", "5")])
    assert res.states[0].spend_usd == 6.0


def test_calendar_month_rollover_resets_and_ignores_earlier_period() -> None:
    tr = BudgetTracker(config({"default": [{"limit_usd": 10, "window": "month", "soft": [0.5]}]}))
    jan = run(tr, [("t", ms("2024-01-31T23:59:59"), 12.0, "a", "1")])
    assert len(jan.alerts) == 2
    assert jan.alerts[0].window_start == "2024-01-01T00:00:00.000Z"
    assert jan.alerts[0].window_end == "2024-02-01T00:00:00.000Z"
    feb = run(tr, [("t", ms("2024-02-01T00:00:00"), 6.0, "a", "2")])
    assert [a.details["level"] for a in feb.alerts] == [0.5]
    assert feb.alerts[0].alert_id != jan.alerts[0].alert_id
    assert feb.alerts[0].window_end == "2024-03-01T00:00:00.000Z"  # leap year February
    assert feb.states[0].spend_usd == 6.0
    assert feb.states[0].period_start_ms == ms("2024-02-01T00:00:00")
    late = run(tr, [("t", ms("2024-01-20T00:00:00"), 50.0, "a", "3")])
    assert late.alerts == [] and late.states[0].spend_usd == 6.0


def test_calendar_day_window() -> None:
    tr = BudgetTracker(config({"default": [{"limit_usd": 1, "window": "day"}]}))
    a = run(tr, [("t", ms("2026-12-31T23:00:00"), 1.0, "a", "1")]).alerts
    b = run(tr, [("t", ms("2027-01-01T00:30:00"), 1.0, "a", "2")]).alerts
    assert len(a) == len(b) == 1
    assert b[0].window_start == "2027-01-01T00:00:00.000Z"
    assert b[0].window_end == "2027-01-02T00:00:00.000Z"


def test_tenants_default_and_empty_rules() -> None:
    tr = BudgetTracker(config(BASIC))
    res = run(tr, [("free", T0, 1000.0, "a", "1"), ("new", T0, 30.0, "a", "2")])
    assert {s.tenant_id for s in res.states} == {"new"}
    assert [a.tenant_id for a in res.alerts] == ["new"]
    assert {s.tenant_id for s in tr.states()} == {"new"}


def test_no_rules_at_all() -> None:
    tr = BudgetTracker(BudgetConfig())
    res = run(tr, [("t", T0, 5.0, "a", "1")])
    assert res.alerts == [] and res.states == [] and tr.states() == []


def test_alert_ids_identical_across_runs() -> None:
    rng = random.Random(7)
    events = [
        (f"t{rng.randrange(3)}", T0 + rng.randrange(0, 3 * DAY), rng.uniform(0, 20), "a", f"e{i}")
        for i in range(300)
    ]
    ids = []
    for _ in range(2):
        tr = BudgetTracker(config(BASIC))
        ids.append([a.alert_id for a in run(tr, events).alerts])
    assert ids[0] and ids[0] == ids[1]


def test_huge_costs_are_capped_and_sums_do_not_overflow() -> None:
    cfg = config(
        {
            "default": [
                {"limit_usd": 1e8, "window": "month", "id": "m"},
                {"limit_usd": 1e8, "window": "1h", "id": "h"},
            ]
        }
    )
    tr = BudgetTracker(cfg)
    res = run(tr, [("t", T0 + i, 1e12, "a", f"e{i}") for i in range(3)])
    assert [a.details["budget_id"] for a in res.alerts] == ["m", "h"]
    st = {s.budget_id: s for s in tr.states()}
    assert st["m"].spend_usd == 3 * 2**62 / 10**10  # three capped events, exact
    assert st["h"].spend_usd == 2**62 / 10**10  # one bucket, capped
    assert st["m"].status == st["h"].status == "exceeded"


def test_apply_rejects_bad_input() -> None:
    tr = BudgetTracker(config(BASIC))
    with pytest.raises(ValueError, match="finite"):
        run(tr, [("t", T0, -1.0, "a", "1")])
    with pytest.raises(ValueError, match="finite"):
        run(tr, [("t", T0, float("nan"), "a", "1")])
    cols = columns([("t", T0, 1.0, "a", "1")])
    with pytest.raises(ValueError, match="same length"):
        tr.apply(cols[0], cols[1], np.zeros(2), cols[3], cols[4])


def test_memory_follows_traffic_not_window_size() -> None:
    cfg = config(
        {"default": [{"limit_usd": 50, "window": "24h"}, {"limit_usd": 50, "window": "30d"}]}
    )
    tr = BudgetTracker(cfg)
    n = 20_000
    names = np.array([f"tenant-{i}" for i in range(n)], dtype=object)
    ts = T0 + np.arange(n, dtype=np.int64) * 7
    tr.apply(names, ts, np.full(n, 0.01), names, names)
    # One bucket per budget: a few pool rows each, nowhere near 1440 per tenant.
    assert tr.memory_bytes() < 600 * n
    # A busy tenant over 30 days: buckets expire, regions get reclaimed.
    tr2 = BudgetTracker(cfg)
    for day in range(30):
        k = 1440
        t = np.array(["busy"] * k, dtype=object)
        tr2.apply(t, T0 + day * DAY + np.arange(k, dtype=np.int64) * MIN, np.full(k, 0.001), t, t)
    qcnt = tr2._slots[: tr2._nslots, bm._S_QCNT]
    assert qcnt.tolist() == [1440, 720]
    assert tr2._pool.shape[0] < 4 * (2048 + 1024) + 2 * tr2._headroom + bm._MIN_POOL


# --------------------------------------------------------------------------- properties

TENANTS = ["t0", "t1", "t2", "zz-unknown", "ünï\x00côde"]
BASES = [
    ms("2024-01-31T22:30:00"),
    ms("2024-02-28T23:00:00"),
    ms("2023-12-31T23:55:00"),
    ms("2026-06-30T23:59:00"),
]


@st.composite
def rules(draw: st.DrawFn, prefix: str) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 3))):
        hard = draw(st.sampled_from([0.9, 1.0, 1.5]))
        soft = draw(st.lists(st.sampled_from([0.1, 0.25, 0.5, 0.8]), unique=True, max_size=3))
        out.append(
            {
                "id": f"{prefix}{i}",
                "limit_usd": draw(st.sampled_from([0.3, 1.0, 2.5, 10.0])),
                "window": draw(st.sampled_from(["1h", "24h", "7d", "30d", "day", "month"])),
                "soft": [s for s in soft if s < hard],
                "hard": hard,
            }
        )
    return out


@st.composite
def configs(draw: st.DrawFn) -> BudgetConfig:
    tenants = {}
    for name in draw(st.lists(st.sampled_from(TENANTS[:3]), unique=True, max_size=2)):
        tenants[name] = draw(rules(name))
    return config({"default": draw(rules("d")), "tenants": tenants})


costs = st.one_of(
    st.just(0.0),
    st.floats(0, 3, allow_nan=False),
    st.sampled_from([0.25, 0.5, 1.0, 2.5, 4e8, 1e12]),
)
steps = st.one_of(
    st.integers(0, 5 * MIN),
    st.integers(0, 6 * HOUR),
    st.sampled_from([DAY, 8 * DAY, 31 * DAY]),
)
backs = st.one_of(st.just(0), st.integers(0, 2 * HOUR), st.sampled_from([2 * DAY, 40 * DAY]))


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    cursor = draw(st.sampled_from(BASES))
    events = []
    for i in range(draw(st.integers(0, 60))):
        cursor += draw(steps)
        events.append(
            (
                draw(st.sampled_from(TENANTS)),
                cursor - draw(backs),
                draw(costs),
                draw(st.sampled_from(["chat", "rag"])),
                f"e{i}",
            )
        )
    return events


def batches(events: list[Event], cuts: list[int]) -> Iterator[list[Event]]:
    edges = [0, *sorted(c % (len(events) + 1) for c in cuts), len(events)]
    for a, b in zip(edges, edges[1:], strict=False):
        yield events[a:b]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=configs(),
    events=streams(),
    cuts=st.lists(st.integers(0, 100), max_size=6),
    snap_at=st.integers(-1, 6),
)
def test_matches_reference_whatever_the_batches(
    cfg: BudgetConfig, events: list[Event], cuts: list[int], snap_at: int
) -> None:
    ref = ReferenceBudgets(cfg)
    tr = BudgetTracker(cfg)
    got: list[dict[str, Any]] = []
    want: list[dict[str, Any]] = []
    for k, batch in enumerate(batches(events, cuts)):
        if k == snap_at:
            tr = BudgetTracker.restore(cfg, tr.snapshot())
        res = run(tr, batch)
        got.extend(comparable(a) for a in res.alerts)
        for e in batch:
            want.extend(comparable(a) for a in ref.process(*e))
        assert got == want
        touched = {e[0] for e in batch}
        assert state_map(res.states) == ref.states(touched)
        assert column_rows(res.state_columns()) == [msgspec.structs.asdict(s) for s in res.states]
    assert state_map(tr.states()) == ref.states()
    assert column_rows(tr.state_columns()) == [msgspec.structs.asdict(s) for s in tr.states()]
    assert len({(a["alert_id"]) for a in got}) == len(got)


@settings(max_examples=60, deadline=None)
@given(events=streams(), cuts=st.lists(st.integers(0, 100), max_size=4))
def test_snapshot_round_trip_is_stable(events: list[Event], cuts: list[int]) -> None:
    cfg = config(BASIC | {"default": [*BASIC["default"], {"limit_usd": 3, "window": "7d"}]})
    tr = BudgetTracker(cfg)
    for batch in batches(events, cuts):
        run(tr, batch)
        snap = tr.snapshot()
        again = BudgetTracker.restore(cfg, snap)
        assert again.snapshot() == snap
        assert again.states() == tr.states()


# --------------------------------------------------------------------------- restore


def test_restore_with_edited_config() -> None:
    old = config(
        {
            "default": [
                {"limit_usd": 10, "window": "24h", "id": "a", "soft": [0.5]},
                {"limit_usd": 10, "window": "month", "id": "b"},
                {"limit_usd": 10, "window": "1h", "id": "gone"},
            ]
        }
    )
    tr = BudgetTracker(old)
    assert len(run(tr, [("t", T0, 6.0, "x", "1")]).alerts) == 1  # "a" at 0.5
    new = config(
        {
            "default": [
                {"limit_usd": 10, "window": "24h", "id": "a", "soft": [0.2, 0.5]},
                {"limit_usd": 10, "window": "day", "id": "b"},
                {"limit_usd": 10, "window": "7d", "id": "fresh"},
            ]
        }
    )
    tr2 = BudgetTracker.restore(new, tr.snapshot())
    # "a" kept its spend; its new 0.2 level counts as already reached (no alert for old spend).
    assert [(s.budget_id, s.spend_usd) for s in tr2.states()] == [("a", 6.0)]
    res = run(tr2, [("t", T0 + 1, 4.0, "x", "2")])
    assert [(a.details["budget_id"], a.details["level"]) for a in res.alerts] == [("a", 1.0)]
    st = {s.budget_id: s.spend_usd for s in res.states}
    assert st == {"a": 10.0, "b": 4.0, "fresh": 4.0}


def test_restore_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a budget snapshot"):
        BudgetTracker.restore(config(BASIC), b"not an npz")


# --------------------------------------------------------------------------- kernels


def test_month_bounds_match_datetime() -> None:
    rng = np.random.default_rng(3)
    samples = rng.integers(ms("1900-01-01T00:00:00"), ms("2300-01-01T00:00:00"), 3000)
    edges = [
        ms("2024-02-29T23:59:59.999"),
        ms("2024-03-01T00:00:00"),
        0,
        -1,
        ms("2000-02-29T12:00"),
    ]
    for ts in [*samples.tolist(), *edges]:
        idx = month_index(ts)
        want = (month_start_ms(idx), month_start_ms(idx + 1))
        assert bm._month_bounds(ts) == want, ts
        assert bm._month_bounds.py_func(ts) == want, ts


def _dispatchers() -> dict[str, Any]:
    return {k: v for k, v in vars(bm).items() if hasattr(v, "py_func") and k.startswith("_")}


def test_every_kernel_is_covered_by_the_pure_python_run() -> None:
    assert set(_dispatchers()) == {
        "_month_bounds",
        "_queue_cap_for",
        "_repack",
        "_reserve",
        "_bucket_add",
        "_apply_kernel",
        "_gather_buckets",
        "_scatter_buckets",
    }


def test_kernels_pure_python_match_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same results with every kernel run as plain Python (as without numba's JIT)."""
    cfg = config(
        {
            "default": [
                {"limit_usd": 2, "window": "1h", "soft": [0.5]},
                {"limit_usd": 5, "window": "month", "soft": [0.8]},
            ],
            "tenants": {"t1": [{"limit_usd": 3, "window": "24h", "hard": 1.2, "soft": [0.1]}]},
        }
    )
    rng = random.Random(11)
    cursor = ms("2024-01-31T20:00:00")
    events = []
    for i in range(400):
        cursor += rng.choice([0, MIN, 7 * MIN, HOUR])
        late = rng.choice([0, 0, 0, 5 * MIN, 2 * HOUR])
        cost = rng.choice([0.0, 0.05, 0.3, 1e12])
        events.append((f"t{rng.randrange(4)}", cursor - late, cost, "a", f"e{i}"))

    def go() -> tuple[list[dict[str, Any]], list[BudgetState], bytes]:
        tr = BudgetTracker(cfg)
        out: list[dict[str, Any]] = []
        for batch in batches(events, [50, 51, 200, 333]):
            out.extend(comparable(a) for a in run(tr, batch).alerts)
        tr = BudgetTracker.restore(cfg, tr.snapshot())
        return out, tr.states(), tr.snapshot()

    compiled = go()
    for name, disp in _dispatchers().items():
        monkeypatch.setattr(bm, name, disp.py_func)
    plain = go()
    assert compiled[0] and plain == compiled


def test_repack_keeps_queues_and_reclaims_space() -> None:
    tr = BudgetTracker(config({"default": [{"limit_usd": 1e6, "window": "24h"}]}))
    rng = np.random.default_rng(5)
    for _ in range(5):
        n = 5000
        t = np.array([f"t{i}" for i in rng.integers(0, 50, n)], dtype=object)
        ts = T0 + rng.integers(0, DAY, n)
        tr.apply(t, ts, rng.uniform(0, 1, n), t, t)
    before = bm._gather_buckets(tr._slots, tr._nslots, tr._pool)
    spend = [s.spend_usd for s in tr.states()]
    for repack in (bm._repack, bm._repack.py_func):
        tr._pool = repack(tr._slots, tr._pool, tr._meta, tr._headroom)
        assert np.array_equal(bm._gather_buckets(tr._slots, tr._nslots, tr._pool), before)
        assert tr._meta[bm._META_USED] <= tr._pool.shape[0] - tr._headroom
    assert [s.spend_usd for s in tr.states()] == spend
    caps = tr._slots[: tr._nslots, bm._S_QCAP]
    cnts = tr._slots[: tr._nslots, bm._S_QCNT]
    assert np.all((caps > cnts) | (cnts == 0)) and np.all(caps <= 2 * cnts + 2)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 90 * MIN), st.integers(0, 70 * MIN), costs), max_size=200),
    st.lists(st.integers(0, 200), max_size=3),
)
def test_dense_out_of_order_sliding_matches_reference(
    moves: list[tuple[int, int, float]], cuts: list[int]
) -> None:
    """Many buckets per queue, most events late: exercises insertion, growth and expiry."""
    cfg = config(
        {
            "default": [
                {"limit_usd": 2, "window": "1h", "soft": [0.25, 0.5]},
                {"limit_usd": 9, "window": "24h"},
            ]
        }
    )
    cursor = T0
    events = []
    for i, (step, back, cost) in enumerate(moves):
        cursor += step // 20  # mostly small steps, so windows hold many buckets
        events.append(("t", cursor - back, cost, "a", f"e{i}"))
    ref = ReferenceBudgets(cfg)
    tr = BudgetTracker(cfg)
    got, want = [], []
    for batch in batches(events, cuts):
        got.extend(comparable(a) for a in run(tr, batch).alerts)
        for e in batch:
            want.extend(comparable(a) for a in ref.process(*e))
    assert got == want
    assert state_map(tr.states()) == ref.states()


@pytest.mark.parametrize("pure", [False, True])
def test_bucket_queue_stays_sorted_and_exact(pure: bool) -> None:
    add = bm._bucket_add.py_func if pure else bm._bucket_add
    tr = BudgetTracker(config({"default": [{"limit_usd": 1, "window": "24h"}]}))
    run(tr, [("t", 0, 0.0, "a", "e")])  # one slot, empty queue
    rng = random.Random(4)
    want: dict[int, int] = {}
    for _ in range(3000):
        b = rng.randrange(0, 1500)
        a = rng.choice([1, 5, 2**61, 2**62])
        grew = add(0, b, a, tr._slots, tr._pool, tr._meta)
        new = min(want.get(b, 0) + a, 2**62)
        assert grew == new - want.get(b, 0)
        want[b] = new
        if tr._pool.shape[0] - tr._meta[bm._META_USED] < tr._headroom:
            tr._pool = bm._repack(tr._slots, tr._pool, tr._meta, tr._headroom)
    got = bm._gather_buckets(tr._slots, tr._nslots, tr._pool)
    assert got.tolist() == [[b, v] for b, v in sorted(want.items())]
    assert tr._slots[0, bm._S_QFIRST] == min(want) and tr._slots[0, bm._S_QLAST] == max(want)
