"""bench/faust_baseline.py (baseline (c) of SPEC §6) imports, builds its faust app, and keeps
budget spend the way its docstring says. The benchmark itself runs outside the test suite."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import faust_baseline as fb  # noqa: E402
from llmops_stream.stream.core.budgets import parse_budgets  # noqa: E402

MIN = 60_000
T0 = int(datetime(2026, 11, 29, 23, 0, tzinfo=UTC).timestamp() * 1000)
HOURLY, DAILY = parse_budgets(fb.BUDGETS).default


def test_app_has_the_agent_the_table_and_the_topics(tmp_path: Path) -> None:
    cfg = {
        "bootstrap": "127.0.0.1:9", "group": "g", "topic": "calls", "alerts": "alerts",
        "partitions": 3, "budgets": fb.BUDGETS, "datadir": str(tmp_path),
    }  # fmt: skip
    app = fb.build_app(cfg)  # builds only: nothing connects before the worker starts
    (agent,) = app.agents.values()
    assert agent.channel.get_topic_name() == "calls"
    table = app.tables["budget-spend"]
    assert table.partitions == 3
    assert table.changelog_topic.get_topic_name() == "g-budget-spend-changelog"


def test_sliding_window_expires_by_the_minute_on_the_tenant_clock() -> None:
    assert (HOURLY.window, DAILY.window) == ("1h", "day")
    state: dict[str, object] = {"spend": 0.0, "fired": {}}
    assert fb.charge(HOURLY, state, T0, 0.3) == (True, None)
    assert fb.charge(HOURLY, state, T0 + 30 * MIN, 0.2) == (True, None)
    assert state["spend"] == 0.5
    # an hour after the first minute, its bucket has left the window
    assert fb.charge(HOURLY, state, T0 + 60 * MIN, 0.1) == (True, None)
    assert round(float(state["spend"]), 9) == 0.3
    # a call older than the window is not counted
    assert fb.charge(HOURLY, state, T0 - 1, 5.0) == (False, None)
    assert round(float(state["spend"]), 9) == 0.3


def test_calendar_window_ends_at_utc_midnight() -> None:
    state: dict[str, object] = {"spend": 0.0, "fired": {}}
    assert fb.charge(DAILY, state, T0 + 59 * MIN, 3.0) == (True, None)
    state["fired"] = {"0.5": T0 + 59 * MIN}  # as the agent records a crossing
    counted, ended = fb.charge(DAILY, state, T0 + 61 * MIN, 1.0)  # 00:01 the next day
    assert counted and ended is not None
    assert (ended["period"], ended["spend"], ended["fired"]) == (
        "2026-11-29",
        3.0,
        {"0.5": T0 + 59 * MIN},
    )
    assert (state["period"], state["spend"], state["fired"]) == ("2026-11-30", 1.0, {})
    # a late call of the ended day is not counted in the new one
    assert fb.charge(DAILY, state, T0, 2.0) == (False, None)
    assert state["spend"] == 1.0
    alert = fb.budget_alert("acme", "", DAILY, 0.5, ended, T0 + 59 * MIN, "resolved", "e1")
    assert (alert.window_start, alert.window_end) == (
        "2026-11-29T00:00:00.000Z",
        "2026-11-30T00:00:00.000Z",
    )


def test_month_period_rolls_over_the_year() -> None:
    dec = int(datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp() * 1000)
    jan = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert fb.period_of("month", dec) == ("2026-12", jan - 31 * 86_400_000, jan)
