"""Share alerts against a per-event, window-by-window reference, across batch cuts, close
calls and restarts; plus the findings of the review as named tests."""

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.alerts import Alert, alert_id
from llmops_stream.stream.core.clock import NO_TIME
from llmops_stream.stream.core.timeutil import MS_PER_HOUR, ms_to_iso
from llmops_stream.stream.core.windows import ShareWindows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_drift import ref_bin, ref_rank_value  # noqa: E402
from reference_windows import RefShareWindows  # noqa: E402

WINDOW = 60_000
T0 = 1_780_000_000_000 // WINDOW * WINDOW
QUARTER = 15 * 60_000
Q0 = 1_780_000_000_000 // QUARTER * QUARTER
LAG_NAMES = ("lag_p50_ms", "lag_p90_ms", "lag_p99_ms")


# ---------------------------------------------------------------------- random streams


@st.composite
def stream(draw: st.DrawFn) -> dict[str, Any]:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(0, 250))
    rng = np.random.default_rng(seed)
    tenants = np.array(["acme", "globex", "initech"], dtype=object)[rng.integers(0, 3, n)]
    apps = np.array(["chat", "search", None], dtype=object)[rng.integers(0, 3, n)]
    # event time drifts forward with jitter: out of order, some late, a few far ahead
    base = np.sort(rng.integers(0, 12 * WINDOW, n))
    ts = T0 + base + rng.integers(-90_000, 5_000, n)
    ahead = rng.random(n) < 0.02
    ts[ahead] += rng.integers(1, 6, int(ahead.sum())) * 3 * WINDOW
    # the clock before each event: the engine's (max of earlier events) plus idle ticks
    ticks = np.cumsum(np.where(rng.random(n) < 0.05, rng.integers(0, 4 * WINDOW, n), 0))
    clock = np.maximum.accumulate(np.concatenate([[T0 - WINDOW], ts[:-1] + ticks[:-1]]))[:n]
    den = (rng.random(n) < 0.85) * rng.integers(1, 3, n)
    share = rng.choice([0.05, 0.3, 0.7])
    phase = (base // (3 * WINDOW)) % 2 == 1  # drift comes and goes
    num = np.minimum(den, rng.binomial(den, np.where(phase, share, 0.05)))
    n_lags = rng.integers(0, 3, n) * (num > 0)
    lag_event = np.repeat(np.arange(n), n_lags).astype(np.int64)
    lag_ms = rng.integers(-1_000, 10 * 86_400_000, lag_event.shape[0]).astype(np.int64)
    return {
        "tenants": tenants,
        "apps": apps,
        "ts": ts.astype(np.int64),
        "clock": clock.astype(np.int64),
        "num": num.astype(np.int64),
        "den": den.astype(np.int64),
        "lag_ms": lag_ms,
        "lag_event": lag_event,
        "rng": int(rng.integers(0, 2**32)),
        "threshold": draw(st.sampled_from([0.0, 0.1, 0.25, 0.5])),
        "hysteresis": draw(st.sampled_from([0.0, 0.0, 0.05, 0.2])),
        "min_count": draw(st.sampled_from([0, 1, 3, 6, 10])),
        "lateness": draw(st.sampled_from([0, 10_000, 70_000])),
        "max_windows": draw(st.sampled_from([1, 2, 4, 8])),
        "lags": draw(st.booleans()),
    }


def plan(case: dict[str, Any], seed: int) -> list[tuple[str, Any]]:
    """Batch cuts, close calls (with a clock no later than the next event's clock_before)
    and snapshot/restore points, ending with close(final clock) and close(None)."""
    rng = np.random.default_rng(seed)
    n = len(case["ts"])
    steps: list[tuple[str, Any]] = []
    cuts = sorted(set(rng.integers(0, n + 1, int(rng.integers(0, 20))).tolist()) | {0, n})
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        steps.append(("add", (start, stop)))
        low = int(case["clock"][stop - 1])
        high = int(case["clock"][stop]) if stop < n else low + 3 * WINDOW
        for _ in range(int(rng.integers(0, 3))):
            steps.append(("close", int(rng.integers(low, high + 1))))
            low = steps[-1][1]
        if rng.random() < 0.3:
            steps.append(("restart", None))
    last = int(case["clock"][-1]) if n else T0
    # the final clock is the latest of all: other plans end on it and must see as much
    latest = max([last, *(arg for kind, arg in steps if kind == "close")])
    steps.append(("close", latest + int(rng.integers(0, 12)) * WINDOW))
    steps.append(("close", None))
    return steps


def make(case: dict[str, Any]) -> ShareWindows:
    return ShareWindows(
        alert_type="freshness",
        metric="stale_query_share",
        window_ms=WINDOW,
        threshold=case["threshold"],
        min_count=case["min_count"],
        lateness_ms=case["lateness"],
        max_window_ms=case["max_windows"] * WINDOW,
        numerator_name="stale",
        denominator_name="retrieval",
        lag_quantiles=case["lags"],
        hysteresis=case["hysteresis"],
    )


def run(case: dict[str, Any], steps: list[tuple[str, Any]]) -> tuple[list[Alert], int]:
    windows = make(case)
    alerts: list[Alert] = []
    for kind, arg in steps:
        if kind == "add":
            start, stop = arg
            sl = slice(start, stop)
            kwargs: dict[str, Any] = {}
            if case["lags"]:
                mine = (case["lag_event"] >= start) & (case["lag_event"] < stop)
                kwargs = {
                    "lag_ms": case["lag_ms"][mine],
                    "lag_event": case["lag_event"][mine] - start,
                }
            windows.add(
                case["tenants"][sl],
                case["apps"][sl],
                case["ts"][sl],
                case["num"][sl],
                case["den"][sl],
                clock_before=case["clock"][sl],
                **kwargs,
            )
        elif kind == "close":
            alerts += windows.close(arg)
        else:
            windows = ShareWindows.restore(windows.snapshot())
    return alerts, windows.late_events


def run_reference(
    case: dict[str, Any], steps: list[tuple[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    ref = RefShareWindows(
        window_ms=WINDOW,
        threshold=case["threshold"],
        min_count=case["min_count"],
        lateness_ms=case["lateness"],
        max_window_ms=case["max_windows"] * WINDOW,
        hysteresis=case["hysteresis"],
    )
    lags: dict[int, list[int]] = {}
    if case["lags"]:
        for lag, owner in zip(case["lag_ms"].tolist(), case["lag_event"].tolist(), strict=True):
            lags.setdefault(owner, []).append(lag)
    out: list[dict[str, Any]] = []
    for kind, arg in steps:
        if kind == "add":
            for i in range(*arg):
                ref.add_event(
                    case["tenants"][i],
                    case["apps"][i],
                    int(case["ts"][i]),
                    clock_before=int(case["clock"][i]),
                    num=int(case["num"][i]),
                    den=int(case["den"][i]),
                    lags=lags.get(i, []),
                )
        elif kind == "close":
            out += ref.close(arg)
    return out, ref.late_events


def expected_alert(case: dict[str, Any], exp: dict[str, Any]) -> tuple[Any, ...]:
    details: dict[str, Any] = {
        "stale": exp["numerator"],
        "retrieval": exp["denominator"],
        "window_ms": WINDOW,
        "span_ms": exp["span_end"] - exp["span_start"],
        "episode_start": ms_to_iso(exp["episode"]),
    }
    if exp["reason"] is not None:
        details["reason"] = exp["reason"]
    if case["lags"]:
        details["lag_count"] = len(exp["lags"])
        for name, q in zip(LAG_NAMES, (0.5, 0.9, 0.99), strict=True):
            details[name] = ref_bin(ref_rank_value(exp["lags"], q)) if exp["lags"] else None
    ident = alert_id("freshness", "stale_query_share", exp["tenant"], exp["app"], exp["episode"])
    return (
        ident,
        exp["status"],
        exp["tenant"],
        exp["app"],
        exp["value"],
        case["threshold"],
        ms_to_iso(exp["span_start"]),
        ms_to_iso(exp["span_end"]),
        ms_to_iso(exp["span_end"]),
        details,
    )


def comparable(alert: Alert) -> tuple[Any, ...]:
    details = dict(alert.details)
    for name in LAG_NAMES:  # quantiles are bin midpoints: compare bins
        if details.get(name) is not None:
            details[name] = ref_bin(details[name])
    return (
        alert.alert_id,
        alert.status,
        alert.tenant_id,
        alert.app,
        alert.value,
        alert.threshold,
        alert.window_start,
        alert.window_end,
        alert.emitted_at,
        details,
    )


@settings(deadline=None, max_examples=80)
@given(stream(), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_matches_reference_whatever_the_cuts(case: dict[str, Any], seed: int, other: int) -> None:
    steps, again = plan(case, seed), plan(case, other)
    # both plans end on the same clock, the latest either reaches
    final = max(arg for kind, arg in steps + again if kind == "close" and arg is not None)
    steps[-2] = again[-2] = ("close", final)
    alerts, late = run(case, steps)
    expected, ref_late = run_reference(case, steps)
    assert late == ref_late
    assert [comparable(a) for a in alerts] == [expected_alert(case, e) for e in expected]
    assert all(a.type == "freshness" and a.metric == "stale_query_share" for a in alerts)
    # other cuts, other close calls, other restarts, same final clock: the same alerts
    assert [comparable(a) for a in run(case, again)[0]] == [comparable(a) for a in alerts]
    # one batch, closed only at the end
    whole = [("add", (0, len(case["ts"]))), steps[-2], steps[-1]]
    assert [comparable(a) for a in run(case, whole)[0]] == [comparable(a) for a in alerts]


# ---------------------------------------------------------------------- helpers


def drift(**kwargs: Any) -> ShareWindows:
    params: dict[str, Any] = {
        "alert_type": "drift",
        "metric": "uncovered_share",
        "window_ms": QUARTER,
        "threshold": 0.15,
        "min_count": 50,
        "lateness_ms": 60_000,
    }
    params.update(kwargs)
    return ShareWindows(**params)


def feed(
    w: ShareWindows,
    tenant: str,
    ts: int,
    scored: int,
    uncovered: int,
    *,
    clock: int | None = None,
    app: str = "chat",
) -> None:
    """``scored`` events of one tenant at ``ts``, ``uncovered`` of them uncovered."""
    n = scored
    w.add(
        np.array([tenant] * n, dtype=object),
        np.array([app] * n, dtype=object),
        np.full(n, ts, dtype=np.int64),
        np.arange(n) < uncovered,
        np.ones(n, dtype=bool),
        clock_before=np.full(n, ts if clock is None else clock, dtype=np.int64),
    )


def quarters(
    w: ShareWindows, tenant: str, first: int, count: int, scored: int, uncovered: int
) -> list[Alert]:
    """Traffic in ``count`` consecutive quarters, closing as the clock moves on."""
    out: list[Alert] = []
    for k in range(first, first + count):
        feed(w, tenant, Q0 + k * QUARTER + 1_000, scored, uncovered)
        out += w.close(Q0 + k * QUARTER + 1_000)
    return out


# ---------------------------------------------------------------------- the findings


def test_a_far_future_event_moves_nothing() -> None:
    w = drift(min_count=1)
    feed(w, "acme", Q0 + 75 * 365 * 24 * MS_PER_HOUR, 1, 1, clock=Q0)  # dated ~2101
    feed(w, "acme", Q0 + 10, 10, 5, clock=Q0)  # on time: not late
    assert w.late_events == 0
    [alert] = w.close(Q0 + QUARTER + 60_000)
    assert alert.status == "firing" and alert.value == 0.5
    assert alert.window_start == ms_to_iso(Q0)
    # the far window stays open until the clock itself gets there
    assert w.open_windows == [Q0 + 75 * 365 * 24 * MS_PER_HOUR]


def test_b_persisting_drift_fires_once_and_resolves_once() -> None:
    w = drift()
    alerts = quarters(w, "acme", 0, 24, 100, 40)  # six hours at 40 %
    alerts += quarters(w, "acme", 24, 8, 100, 2)  # then back to 2 %
    alerts += w.close(None)
    assert [a.status for a in alerts] == ["firing", "resolved"]
    fired, resolved = alerts
    assert fired.alert_id == resolved.alert_id
    assert fired.value == 0.4 and fired.details["span_ms"] == QUARTER
    assert fired.details["episode_start"] == ms_to_iso(Q0)
    assert resolved.window_start == ms_to_iso(Q0 + 24 * QUARTER)
    assert resolved.value == 0.02 and resolved.details["reason"] == "below_threshold"
    assert resolved.details["numerator"] == 2 and resolved.details["denominator"] == 100
    assert resolved.emitted_at == ms_to_iso(Q0 + 25 * QUARTER)


def test_b_share_hovering_at_the_threshold_does_not_flap_with_hysteresis() -> None:
    """A share alternating 17 % / 13 % around a 15 % threshold: without hysteresis every
    window flips the episode; with 0.05 share points it stays one episode."""
    shares = [17, 13] * 8 + [9]  # then clearly below: 9 % <= 15 % - 5 %
    for hysteresis, episodes in ((0.0, 8), (0.05, 1)):
        w = drift(hysteresis=hysteresis)
        alerts: list[Alert] = []
        for k, pct in enumerate(shares):
            alerts += quarters(w, "acme", k, 1, 100, pct)
        alerts += w.close(Q0 + (len(shares) + 1) * QUARTER)
        statuses = [a.status for a in alerts]
        assert statuses.count("firing") == episodes, hysteresis
        assert statuses.count("resolved") == episodes and statuses[-1] == "resolved"


@pytest.mark.parametrize("max_window_ms", [24 * MS_PER_HOUR, 2 * QUARTER])
def test_c_quiet_tenant_is_alerted_on_a_longer_span(max_window_ms: int) -> None:
    w = drift(max_window_ms=max_window_ms)
    feed(w, "tiny", Q0 + 5_000, 3, 3)  # three calls in total, all uncovered
    alerts = quarters(w, "quiet", 0, 24, 40, 20)  # 40 calls a quarter, half uncovered
    alerts += w.close(None)
    [alert] = alerts
    assert alert.tenant_id == "quiet" and alert.status == "firing" and alert.value == 0.5
    assert alert.window_start == ms_to_iso(Q0) and alert.window_end == ms_to_iso(Q0 + 2 * QUARTER)
    assert alert.details["span_ms"] == 2 * QUARTER
    assert alert.details["numerator"] == 40 and alert.details["denominator"] == 80
    assert alert.alert_id == alert_id("drift", "uncovered_share", "quiet", "chat", Q0 + QUARTER)


def test_d_traffic_stops_resolves_with_no_data_after_max_window() -> None:
    w = drift(max_window_ms=2 * MS_PER_HOUR)  # eight quarters
    [fired] = quarters(w, "acme", 0, 4, 30, 15)  # fires at quarter 1 (span 0..1)
    alerts: list[Alert] = []
    for k in range(4, 40):  # the clock moves on with no events at all
        alerts += w.close(Q0 + k * QUARTER + 60_000)
    [resolved] = alerts
    assert resolved.alert_id == fired.alert_id and resolved.status == "resolved"
    assert resolved.details["reason"] == "no_data"
    # evidence (quarters 2..3) leaves the 8-quarter span at the window starting quarter 10
    assert resolved.window_end == ms_to_iso(Q0 + 11 * QUARTER)
    assert resolved.window_start == ms_to_iso(Q0 + 3 * QUARTER)
    assert resolved.details["denominator"] == 30 and resolved.details["span_ms"] == 2 * MS_PER_HOUR


def test_e_windows_close_on_an_idle_stream() -> None:
    w = drift(min_count=10)
    feed(w, "acme", Q0 + 1_000, 20, 10)
    assert w.close(Q0 + QUARTER) == []  # lateness not yet over
    assert w.open_windows == [Q0]
    [alert] = w.close(Q0 + QUARTER + 60_000)
    assert alert.status == "firing" and w.open_windows == []
    feed(w, "acme", Q0 + 2_000, 1, 1, clock=Q0 + QUARTER + 60_000)  # its window has closed
    assert w.late_events == 1
    # late by the clock alone, before any close: the window ended more than lateness ago
    feed(w, "acme", Q0 + 5 * QUARTER, 1, 1, clock=Q0 + 6 * QUARTER + 60_000)
    assert w.late_events == 2 and w.open_windows == []
    feed(w, "acme", Q0 + 5 * QUARTER, 1, 1, clock=Q0 + 6 * QUARTER + 59_999)
    assert w.late_events == 2 and w.open_windows == [Q0 + 5 * QUARTER]


# ---------------------------------------------------------------------- edge cases


def test_empty_batch_and_one_event() -> None:
    w = drift(min_count=1, threshold=0.0)
    empty = np.zeros(0, dtype=object)
    w.add(
        empty,
        empty,
        np.zeros(0, np.int64),
        np.zeros(0, bool),
        np.zeros(0, bool),
        clock_before=np.zeros(0, np.int64),
    )
    assert w.open_windows == [] and w.close(None) == [] and w.close(Q0) == []
    feed(w, "acme", Q0, 1, 1)
    [alert] = w.close(None)
    assert alert.value == 1.0 and alert.window_end == ms_to_iso(Q0 + QUARTER)


@pytest.mark.parametrize("min_count", [0, 1])
def test_min_count_zero_or_one_judges_any_denominator(min_count: int) -> None:
    w = drift(min_count=min_count, threshold=0.5)
    feed(w, "acme", Q0, 1, 1)
    feed(w, "acme", Q0 + QUARTER, 1, 0)
    fired, resolved = w.close(None)
    assert fired.status == "firing" and fired.details["denominator"] == 1
    assert resolved.status == "resolved" and resolved.value == 0.0
    assert resolved.details["span_ms"] == QUARTER


def test_share_equal_to_threshold_does_not_fire() -> None:
    w = drift(min_count=4, threshold=0.25)
    feed(w, "acme", Q0, 4, 1)
    assert w.close(None) == []


def test_huge_clock_jumps_cost_no_loop_per_window() -> None:
    w = drift(min_count=10, window_ms=60_000, max_window_ms=MS_PER_HOUR)
    feed(w, "acme", Q0, 20, 20)
    for t in range(200):
        feed(w, f"t{t}", Q0 + 30_000, 20, 20)
    began = time.perf_counter()
    alerts = w.close(Q0 + 30 * 365 * 24 * MS_PER_HOUR)  # thirty years of one-minute windows
    alerts += w.close(NO_TIME)  # a clock before the first event is harmless too
    assert time.perf_counter() - began < 1.0
    assert [a.status for a in alerts] == ["firing"] * 201 + ["resolved"] * 201
    # the no-data resolution happens when the evidence left the hour, not at the jump
    assert {a.window_end for a in alerts[201:]} == {ms_to_iso(Q0 + MS_PER_HOUR + 60_000)}
    # after the jump nothing old is left as evidence
    assert len(w._hist) == 0
    feed(w, "acme", Q0 + 40 * 365 * 24 * MS_PER_HOUR, 5, 5)
    assert w.close(None) == []


def test_restore_with_overrides() -> None:
    w = drift(min_count=1, threshold=0.9)
    feed(w, "acme", Q0, 10, 10)
    assert w.close(Q0 + QUARTER + 60_000)[0].status == "firing"
    feed(w, "acme", Q0 + QUARTER, 10, 9)
    restored = ShareWindows.restore(
        w.snapshot(), threshold=0.95, severity="critical", max_window_ms=MS_PER_HOUR
    )
    assert restored.threshold == 0.95 and restored.max_window_ms == MS_PER_HOUR
    [alert] = restored.close(None)
    assert alert.status == "resolved" and alert.severity == "critical"
    assert alert.threshold == 0.95 and alert.value == 0.9
    with pytest.raises(ValueError):
        ShareWindows.restore(w.snapshot(), window_ms=5)
    with pytest.raises(ValueError):
        ShareWindows.restore(b"\x90")


def test_snapshot_forgets_pairs_gone_quiet() -> None:
    w = drift(min_count=1, max_window_ms=QUARTER)
    for t in range(50):
        feed(w, f"t{t}", Q0, 1, 0)
    w.close(Q0 + 3 * QUARTER)
    feed(w, "kept", Q0 + 3 * QUARTER, 1, 0)
    restored = ShareWindows.restore(w.snapshot())
    assert restored._tenant_list == ["kept"]


def test_validation() -> None:
    w = drift(min_count=1)
    one = np.array(["t"], dtype=object)
    ts = np.array([Q0], dtype=np.int64)
    c = {"clock_before": ts}
    with pytest.raises(ValueError):
        w.add(one, one, ts.astype(np.float64), np.array([1]), np.array([1]), **c)
    with pytest.raises(ValueError, match="exceed"):
        w.add(one, one, ts, np.array([2]), np.array([1]), **c)
    with pytest.raises(ValueError):
        w.add(one, one, ts, np.array([0.5]), np.array([1]), **c)
    with pytest.raises(ValueError):
        w.add(one, one, ts, np.array([-1]), np.array([1]), **c)
    with pytest.raises(ValueError):
        w.add(one, one[:0], ts, np.array([1]), np.array([1]), **c)
    with pytest.raises(ValueError, match="clock_before"):
        w.add(one, one, ts, np.array([1]), np.array([1]), clock_before=np.array([1.0]))
    two = np.array(["t", "t"], dtype=object)
    with pytest.raises(ValueError, match="non-decreasing"):
        w.add(
            two,
            two,
            np.array([Q0, Q0]),
            np.ones(2, bool),
            np.ones(2, bool),
            clock_before=np.array([Q0, Q0 - 1]),
        )
    with pytest.raises(ValueError, match="2\\*\\*62"):
        w.add(one, one, np.array([2**62 + 1]), np.array([1]), np.array([1]), **c)
    with pytest.raises(ValueError):
        w.add(one, one, ts, np.array([1]), np.array([1]), lag_ms=np.array([1], np.int64), **c)
    lags = {"lag_ms": np.array([1], np.int64), "lag_event": np.array([0], np.int64)}
    with pytest.raises(ValueError, match="lag_quantiles"):
        w.add(one, one, ts, np.array([1]), np.array([1]), **lags, **c)
    with_lags = drift(min_count=1, lag_quantiles=True)
    with pytest.raises(ValueError, match="index the batch"):
        with_lags.add(
            one,
            one,
            ts,
            np.array([1]),
            np.array([1]),
            lag_ms=lags["lag_ms"],
            lag_event=np.array([1], np.int64),
            **c,
        )
    with pytest.raises(ValueError, match="int64"):
        with_lags.add(
            one,
            one,
            ts,
            np.array([1]),
            np.array([1]),
            lag_ms=np.ones(1),
            lag_event=lags["lag_event"],
            **c,
        )
    for bad in (
        {"alert_type": "budget"},
        {"window_ms": 0},
        {"lateness_ms": -1},
        {"min_count": -1},
        {"threshold": float("nan")},
        {"max_window_ms": QUARTER - 1},
    ):
        with pytest.raises(ValueError):
            drift(**bad)
    assert w.open_windows == [] and w.late_events == 0
