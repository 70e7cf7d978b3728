"""The pieces of ``report --html``: time buckets, dense grids, shares, alert episodes, the
SVG inlining, the output path checks, and a page built from a report without time series
(no ClickHouse needed: the page's only query then is the time span of the data)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from llmops_stream.stream.clickhouse import html_charts as charts
from llmops_stream.stream.clickhouse.html_data import (
    MAX_POINTS,
    Thresholds,
    alert_types,
    bucket_label,
    check_target,
    dense,
    episodes,
    grid,
    pick_bucket,
    share,
    worst_status,
    write_page,
)
from llmops_stream.stream.clickhouse.html_report import build_page
from llmops_stream.stream.core.errors import ConfigError

EVIL = 'ac<script>$x$</script>&"co"'


def test_pick_bucket_keeps_charts_under_max_points() -> None:
    assert pick_bucket(0) == 60
    assert pick_bucket(60 * MAX_POINTS) == 60
    assert pick_bucket(60 * MAX_POINTS + 1) == 300
    assert pick_bucket(22 * 3600) == 900  # the demo's day: 15 min, the alert window
    assert pick_bucket(22 * 3600, max_points=60) == 1800
    for span in (1, 7_000, 86_400 * 3, 86_400 * 400, 86_400 * 5000):
        bucket = pick_bucket(span)
        assert span / bucket <= MAX_POINTS
    assert pick_bucket(86_400 * 5000) % 86_400 == 0


@pytest.mark.parametrize(
    ("seconds", "label"),
    [
        (60, "1 min"),
        (900, "15 min"),
        (3600, "1 h"),
        (21_600, "6 h"),
        (86_400, "1 day"),
        (604_800, "7 days"),
        (45, "45 s"),
    ],
)
def test_bucket_label(seconds: int, label: str) -> None:
    assert bucket_label(seconds) == label


def test_grid_is_aligned_and_covers_both_ends() -> None:
    assert grid(1000, 2000, 900) == [900, 1800]
    assert grid(900, 900, 900) == [900]
    assert grid(1799, 1800, 900) == [900, 1800]


def test_dense_sums_per_bucket_and_fills_gaps() -> None:
    times = [0, 60, 120]
    assert dense([(0, 1.0), (120, 2.0), (0, 0.5)], times, 0) == [1.5, 0, 2.0]
    filled = dense([(60, 3.0), (999, 7.0)], times, math.nan)  # off-grid rows are ignored
    assert math.isnan(filled[0]) and filled[1] == 3.0 and math.isnan(filled[2])


def test_share_is_nan_below_the_minimum_count() -> None:
    assert share(1, 4) == 0.25
    assert math.isnan(share(0, 0))
    assert math.isnan(share(5, 10, min_den=20))
    assert share(5, 20, min_den=20) == 0.25


def test_worst_status_per_tenant() -> None:
    states = [
        ("a", "d", "24h", 1.0, 10.0, "ok"),
        ("a", "h", "1h", 9.0, 10.0, "warn"),
        ("a", "m", "month", 1.0, 10.0, "ok"),
        ("b", "d", "24h", 12.0, 10.0, "exceeded"),
        ("b", "h", "1h", 9.0, 10.0, "warn"),
        ("c", "d", "24h", 0.0, 10.0, "ok"),
    ]
    assert worst_status(states) == {"a": "warn", "b": "exceeded", "c": "ok"}


def _alert(alert_id: str, status: str, kind: str, at: str, tenant: str = "t") -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "status": status,
        "type": kind,
        "severity": "critical" if kind == "budget" else "warning",
        "tenant_id": tenant,
        "emitted_at": at,
    }


def test_episodes_pair_firing_and_resolved() -> None:
    alerts = [
        _alert("1", "firing", "drift", "2026-11-28T01:00:00.000Z"),
        _alert("2", "firing", "budget", "2026-11-28T02:00:00.000Z"),
        _alert("1", "resolved", "drift", "2026-11-28T03:30:00.000Z"),
        _alert("3", "resolved", "freshness", "2026-11-28T04:00:00.000Z"),  # firing not kept
    ]
    got = {a["alert_id"]: end for a, end in episodes(alerts)}
    assert got == {
        "1": datetime(2026, 11, 28, 3, 30, tzinfo=UTC),
        "2": None,
        "3": datetime(2026, 11, 28, 4, tzinfo=UTC),
    }


def test_alert_types_known_first_then_others() -> None:
    alerts = [
        _alert(str(i), "firing", k, "2026-11-28T01:00:00Z")
        for i, k in enumerate(["model", "zeta", "budget", "drift", "budget", "alpha"])
    ]
    assert alert_types(alerts) == ["budget", "drift", "model", "alpha", "zeta"]


def test_output_path_errors_are_config_errors(tmp_path: Path) -> None:
    assert check_target(str(tmp_path / "r.html")) == tmp_path / "r.html"
    with pytest.raises(ConfigError, match="is a directory"):
        check_target(str(tmp_path))
    with pytest.raises(ConfigError, match="no such directory"):
        check_target(str(tmp_path / "missing" / "r.html"))
    with pytest.raises(ConfigError, match="cannot write the HTML report"):
        write_page(tmp_path / "missing" / "r.html", "<p>x</p>")
    assert write_page(tmp_path / "r.html", "<p>é</p>") == len("<p>é</p>".encode())
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == "<p>é</p>"


def test_short_cuts_long_labels() -> None:
    assert charts.short("acme") == "acme"
    cut = charts.short("x" * 50, limit=10)
    assert len(cut) == 10 and cut.endswith("…")


def test_inline_svg_prefixes_ids_and_drops_prolog_size_and_namespaces() -> None:
    doc = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n'
        '  "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
        '<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="10pt" height="5pt" '
        'viewBox="0 0 10 5" xmlns="http://www.w3.org/2000/svg">'
        '<defs><path id="m1" d="M0 0"/><clipPath id="c1"/></defs>'
        '<use xlink:href="#m1"/><g clip-path="url(#c1)"/><a href="#elsewhere"/></svg>'
    )
    svg = charts.inline_svg(doc, "k-")
    assert svg.startswith('<svg viewBox="0 0 10 5">')
    assert 'id="k-m1"' in svg and 'xlink:href="#k-m1"' in svg
    assert 'id="k-c1"' in svg and "url(#k-c1)" in svg
    assert 'href="#elsewhere"' in svg  # not an id of this SVG: left alone
    assert "http" not in svg
    with pytest.raises(ValueError, match="not an SVG"):
        charts.inline_svg("<html/>", "k-")


def test_real_chart_ids_are_prefixed_and_every_reference_resolves() -> None:
    svg = charts.budget_chart(
        [
            charts.BudgetBar("t · d (24h)", 12.0, 10.0, "exceeded"),
            charts.BudgetBar("u · h (1h)", 3.0, 10.0, "ok"),
        ],
        prefix="bud-",
    )
    ids = re.findall(r'\bid="([^"]+)"', svg)
    assert ids and all(i.startswith("bud-") for i in ids)
    assert len(ids) == len(set(ids))
    refs = re.findall(r'(?:href="#|url\(#)([^")]+)', svg)
    assert refs and set(refs) <= set(ids)
    assert "120%" in svg and "exceeded" in svg


class _FakeClient:
    """Answers the one query a page without usage rows makes: the data's time span."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def query(self, sql: str) -> Any:
        self.queries.append(sql)
        assert "count()" in sql and "llm_usage_1m" in sql, sql
        return type("Result", (), {"result_rows": [(0, 0, 0)]})()


class _Text(HTMLParser):
    """Section ids → their text, and the number of <svg> elements in each."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.text: dict[str, list[str]] = {}
        self.svgs: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
        if tag == "svg":
            self.svgs[self.section] = self.svgs.get(self.section, 0) + 1

    def handle_data(self, data: str) -> None:
        self.text.setdefault(self.section, []).append(data)


def _tenant(calls: int, cost: float, rejected: int = 0) -> dict[str, Any]:
    fields = (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "scored_calls",
        "uncovered_calls",
        "retrieval_calls",
        "stale_calls",
        "duplicates",
    )
    return {"calls": calls, "cost_usd": cost, "rejected": rejected, **dict.fromkeys(fields, 3)}


def test_page_without_time_series_escapes_tenants_and_draws_budgets_and_alerts() -> None:
    rep = {
        "tenants": {EVIL: _tenant(1234, 5678.123456), "b": _tenant(5, 0.5), "": _tenant(0, 0, 2)},
        "alerts": [
            _alert("1", "firing", "budget", "2026-11-28T01:00:00.000Z", EVIL),
            _alert("1", "resolved", "budget", "2026-11-28T02:00:00.000Z", EVIL),
            _alert("2", "firing", "drift", "2026-11-28T01:30:00.000Z", "b"),
            _alert("3", "firing", "custom-kind", "2026-11-28T01:40:00.000Z", "b"),
        ],
    }
    states = [(EVIL, "daily", "24h", 12.0, 10.0, "exceeded"), ("b", "d", "24h", 1.0, 10.0, "ok")]
    th = Thresholds(drift=0.15, stale=0.2, drift_min_count=50, stale_min_count=20, window_s=900)
    client = _FakeClient()
    page = build_page(client, "db1", rep=rep, states=states, thresholds=th)
    assert len(client.queries) == 1
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;") >= 3  # table, budget bars, timeline rows
    parsed = _Text()
    parsed.feed(page)
    assert parsed.svgs == {"budgets": 1, "alerts": 1}
    totals = "|".join(parsed.text["totals"])
    assert f"{EVIL}|1,234|5,678.1235|" in totals
    assert "(unreadable)|0|0.0000|" in totals
    assert "total|1,239|5,678.6235|" in totals
    alerts_text = parsed.text["alerts"]
    assert f"{EVIL} (1)" in alerts_text  # its row, verbatim: "$x$" is no math
    assert f"{EVIL} · daily (24h)" in parsed.text["budgets"]
    for kind in ("budget", "drift", "custom-kind"):
        assert kind in alerts_text  # in the legend and the counts table
    assert "No data: no calls recorded yet." in "".join(parsed.text["cost"])
    assert "No data: no calls recorded yet." in "".join(parsed.text["shares"])
