"""Share windows against a dict-based per-event reference, across batch splits and restarts."""

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.alerts import Alert
from llmops_stream.stream.core.timeutil import ms_to_iso
from llmops_stream.stream.core.windows import ShareWindows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_drift import ref_bin, ref_rank_value  # noqa: E402
from reference_freshness import RefShareWindows  # noqa: E402

T0 = 1_780_000_000_000
WINDOW = 60_000
LATENESS = 10_000


@st.composite
def stream(draw: st.DrawFn) -> dict[str, Any]:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(0, 300))
    rng = np.random.default_rng(seed)
    tenants = np.array(["acme", "globex", "initech"], dtype=object)[rng.integers(0, 3, n)]
    apps = np.array(["chat", "search", None], dtype=object)[rng.integers(0, 3, n)]
    # a drifting clock with jitter: out-of-order events, some late beyond the lateness
    ts = T0 + np.sort(rng.integers(0, 6 * WINDOW, n)) + rng.integers(-40_000, 5_000, n)
    den = rng.random(n) < 0.8
    num = den & (rng.random(n) < rng.choice([0.05, 0.3, 0.7]))
    n_lags = rng.integers(0, 3, n) * num
    lag_event = np.repeat(np.arange(n), n_lags).astype(np.int64)
    lag_ms = rng.integers(-1_000, 10 * 86_400_000, lag_event.shape[0]).astype(np.int64)
    cuts = np.sort(
        rng.choice(
            np.arange(1, max(n, 2)), size=min(int(rng.integers(0, 8)), max(n - 1, 0)), replace=False
        )
    )
    return {
        "tenants": tenants,
        "apps": apps,
        "ts": ts.astype(np.int64),
        "num": num,
        "den": den,
        "lag_ms": lag_ms,
        "lag_event": lag_event,
        "cuts": [int(c) for c in cuts],
        "threshold": draw(st.sampled_from([0.0, 0.1, 0.25, 0.5])),
        "min_count": draw(st.sampled_from([0, 1, 3, 10])),
        "close_each_batch": draw(st.booleans()),
    }


def make(case: dict[str, Any], *, with_lags: bool = True) -> ShareWindows:
    return ShareWindows(
        alert_type="freshness",
        metric="stale_query_share",
        window_ms=WINDOW,
        threshold=case["threshold"],
        min_count=case["min_count"],
        lateness_ms=LATENESS,
        numerator_name="stale",
        denominator_name="retrieval",
        lag_quantiles=with_lags,
    )


def feed(
    windows: ShareWindows, case: dict[str, Any], start: int, stop: int, *, with_lags: bool
) -> list[Alert]:
    sl = slice(start, stop)
    kwargs: dict[str, Any] = {}
    if with_lags:
        mine = (case["lag_event"] >= start) & (case["lag_event"] < stop)
        kwargs = {"lag_ms": case["lag_ms"][mine], "lag_event": case["lag_event"][mine] - start}
    windows.add(
        case["tenants"][sl],
        case["apps"][sl],
        case["ts"][sl],
        case["num"][sl],
        case["den"][sl],
        **kwargs,
    )
    return windows.close(windows.watermark) if case["close_each_batch"] else []


def run(
    case: dict[str, Any], *, with_lags: bool, restart_at: int | None = None
) -> tuple[list[Alert], int]:
    windows = make(case, with_lags=with_lags)
    bounds = [0, *case["cuts"], len(case["ts"])]
    alerts: list[Alert] = []
    for b, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        alerts += feed(windows, case, start, stop, with_lags=with_lags)
        if restart_at == b:
            windows = ShareWindows.restore(windows.snapshot())
    alerts += windows.close(None)
    return alerts, windows.late_events


def reference(case: dict[str, Any]) -> RefShareWindows:
    ref = RefShareWindows(WINDOW, case["threshold"], case["min_count"], LATENESS)
    lags: dict[int, list[int]] = {}
    for lag, owner in zip(case["lag_ms"].tolist(), case["lag_event"].tolist(), strict=True):
        lags.setdefault(owner, []).append(lag)
    for i in range(len(case["ts"])):
        ref.add_event(
            case["tenants"][i],
            case["apps"][i],
            int(case["ts"][i]),
            num=int(case["num"][i]),
            den=int(case["den"][i]),
            lags=lags.get(i, []),
        )
    return ref


def comparable(alert: Alert) -> tuple[Any, ...]:
    return (
        alert.window_start,
        alert.tenant_id,
        alert.app,
        alert.alert_id,
        alert.value,
        alert.threshold,
        tuple(sorted(alert.details.items())),
    )


@settings(deadline=None, max_examples=60)
@given(stream())
def test_matches_reference_whatever_the_split(case: dict[str, Any]) -> None:
    alerts, late = run(case, with_lags=True)
    ref = reference(case)
    expected = ref.alerts()
    assert late == ref.late_events
    assert len(alerts) == len(expected)
    # alerts come out per closed window; each window's alerts sorted by tenant, app
    assert [a.window_start for a in alerts] == sorted(a.window_start for a in alerts)
    by_key = {(a.window_start, a.tenant_id, a.app): a for a in alerts}
    for exp in expected:
        got = by_key[(ms_to_iso(exp["start"]), exp["tenant"], exp["app"])]
        assert got.type == "freshness" and got.metric == "stale_query_share"
        assert got.value == exp["value"] and got.threshold == case["threshold"]
        assert got.window_end == ms_to_iso(exp["start"] + WINDOW)
        assert got.details["stale"] == exp["numerator"]
        assert got.details["retrieval"] == exp["denominator"]
        assert got.details["lag_count"] == len(exp["lags"])
        for name, q in (("lag_p50_ms", 0.5), ("lag_p90_ms", 0.9), ("lag_p99_ms", 0.99)):
            if exp["lags"]:
                assert ref_bin(got.details[name]) == ref_bin(ref_rank_value(exp["lags"], q))
            else:
                assert got.details[name] is None
    # one batch, or another split, or a restart in the middle: the same alerts
    whole = make(case)
    whole.add(
        case["tenants"],
        case["apps"],
        case["ts"],
        case["num"],
        case["den"],
        lag_ms=case["lag_ms"],
        lag_event=case["lag_event"],
    )
    single = whole.close(None)
    assert sorted(map(comparable, single)) == sorted(map(comparable, alerts))
    restarted, late_restarted = run(case, with_lags=True, restart_at=len(case["cuts"]) // 2)
    assert list(map(comparable, restarted)) == list(map(comparable, alerts))
    assert late_restarted == late


@settings(deadline=None, max_examples=25)
@given(stream())
def test_without_lags_details_have_no_quantiles(case: dict[str, Any]) -> None:
    alerts, _ = run(case, with_lags=False)
    expected = reference(case).alerts()
    assert len(alerts) == len(expected)
    for alert in alerts:
        assert set(alert.details) == {"stale", "retrieval", "window_ms"}


def test_threshold_min_count_and_ids() -> None:
    def drift_windows(threshold: float, min_count: int) -> ShareWindows:
        return ShareWindows(
            alert_type="drift",
            metric="uncovered_share",
            window_ms=WINDOW,
            threshold=threshold,
            min_count=min_count,
        )

    tenants = np.array(["t"] * 4, dtype=object)
    apps = np.array(["a"] * 4, dtype=object)
    ts = np.full(4, T0, dtype=np.int64)
    num = np.array([1, 0, 0, 0], dtype=np.int64)
    den = np.array([1, 1, 1, 1], dtype=np.int64)
    w = drift_windows(0.25, 4)  # share == threshold: no alert
    w.add(tenants, apps, ts, num, den)
    assert w.close(None) == []
    w = drift_windows(0.2, 5)  # too few
    w.add(tenants, apps, ts, num, den)
    assert w.close(None) == []
    first = drift_windows(0.2, 4)
    first.add(tenants, apps, ts, num, den)
    [alert] = first.close(None)
    assert alert.type == "drift" and alert.severity == "warning" and alert.value == 0.25
    assert alert.details == {"numerator": 1, "denominator": 4, "window_ms": WINDOW}
    again = drift_windows(0.2, 4)
    again.add(tenants[:2], apps[:2], ts[:2], num[:2], den[:2])
    again.add(tenants[2:], apps[2:], ts[2:], num[2:], den[2:])
    assert [a.alert_id for a in again.close(None)] == [alert.alert_id]


def test_watermark_closing_and_late_events() -> None:
    w = ShareWindows(
        alert_type="drift",
        metric="m",
        window_ms=WINDOW,
        threshold=0.0,
        min_count=1,
        lateness_ms=LATENESS,
    )
    one = np.array(["t"], dtype=object)
    yes = np.array([True])
    assert w.watermark is None
    w.add(one, one, np.array([T0], dtype=np.int64), yes, yes)
    assert w.open_windows == [T0 - T0 % WINDOW]
    end = T0 - T0 % WINDOW + WINDOW
    assert w.close(end + LATENESS - 1) == []  # not yet
    assert len(w.close(end + LATENESS)) == 1
    assert w.open_windows == []
    w.add(one, one, np.array([T0 + 1], dtype=np.int64), yes, yes)  # its window has closed
    assert w.late_events == 1 and w.open_windows == [] and w.watermark == T0 + 1
    w.add(one, one, np.array([T0], dtype=np.int64), yes, np.array([True]))
    assert w.late_events == 2
    assert w.close(None) == []


def test_validation() -> None:
    w = ShareWindows(alert_type="drift", metric="m", threshold=0.1, min_count=1)
    one = np.array(["t"], dtype=object)
    ts = np.array([T0], dtype=np.int64)
    with pytest.raises(ValueError):
        w.add(one, one, ts.astype(np.float64), np.array([1]), np.array([1]))
    with pytest.raises(ValueError):
        w.add(one, one, ts, np.array([2]), np.array([1]))  # numerator > denominator
    with pytest.raises(ValueError):
        w.add(one, one, ts, np.array([0.5]), np.array([1]))
    with pytest.raises(ValueError):
        w.add(one, one, ts, np.array([-1]), np.array([1]))
    with pytest.raises(ValueError):
        w.add(one, one[:0], ts, np.array([1]), np.array([1]))
    with pytest.raises(ValueError):
        w.add(one, one, ts, np.array([1]), np.array([1]), lag_ms=np.array([1], np.int64))
    lags = {"lag_ms": np.array([1], np.int64), "lag_event": np.array([0], np.int64)}
    with pytest.raises(ValueError, match="lag_quantiles"):
        w.add(one, one, ts, np.array([1]), np.array([1]), **lags)
    with_lags = ShareWindows(
        alert_type="drift", metric="m", threshold=0.1, min_count=1, lag_quantiles=True
    )
    with pytest.raises(ValueError, match="index the batch"):
        with_lags.add(
            one,
            one,
            ts,
            np.array([1]),
            np.array([1]),
            lag_ms=lags["lag_ms"],
            lag_event=lags["lag_ms"],
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
        )
    for bad in (
        {"alert_type": "budget"},
        {"window_ms": 0},
        {"lateness_ms": -1},
        {"min_count": -1},
        {"threshold": float("nan")},
    ):
        kwargs: dict[str, Any] = {
            "alert_type": "drift",
            "metric": "m",
            "threshold": 0.1,
            "min_count": 1,
        }
        kwargs.update(bad)
        with pytest.raises(ValueError):
            ShareWindows(**kwargs)
    with pytest.raises(ValueError):
        ShareWindows.restore(w.snapshot(), window_ms=5)
    with pytest.raises(ValueError):
        ShareWindows.restore(b"\x90")
    empty = np.zeros(0, dtype=object)
    w.add(empty, empty, np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool))
    assert w.watermark is None


def test_restore_with_overrides() -> None:
    w = ShareWindows(alert_type="drift", metric="m", window_ms=WINDOW, threshold=0.9, min_count=1)
    one = np.array(["t"], dtype=object)
    w.add(one, one, np.array([T0], dtype=np.int64), np.array([True]), np.array([True]))
    restored = ShareWindows.restore(w.snapshot(), threshold=0.95, severity="critical")
    assert restored.watermark == T0 and restored.threshold == 0.95
    [alert] = restored.close(None)
    assert alert.severity == "critical" and alert.threshold == 0.95
