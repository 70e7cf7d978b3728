"""``llmops-stream report --html FILE``: one self-contained HTML page read back from ClickHouse.

The page needs no network to be viewed (no scripts, fonts or images by URL; the charts are
inline SVG drawn by html_charts.py from the sums of html_data.py) and shows, for the whole
time range in the database:

- cost over time, stacked per tenant and per model (the top few, the rest as "other"), from
  ``llm_usage_1m``;
- budget burn: each budget's current spend against its limit, coloured ok/warn/exceeded,
  from ``llm_budget_state``;
- the drift (uncovered) and stale-query shares over time against their alert thresholds
  (the ``drift_threshold`` and ``freshness_threshold`` settings), from ``llm_usage_1m``;
- the alerts of ``llm_alerts`` on a timeline, one row per tenant, one lane per type;
- the per-tenant totals of ``report --json``, formatted as ``report`` prints them.

Every string from the data (tenant ids, models, budget ids) is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops_stream.stream.clickhouse import html_charts as charts
from llmops_stream.stream.clickhouse.html_data import (
    COST_POINTS,
    SHARE_TENANTS,
    STATUS_RANK,
    TOP_N,
    ChartData,
    Thresholds,
    alert_types,
    bucket_label,
    check_target,
    dense,
    episodes,
    grid,
    parse_iso,
    pick_bucket,
    share,
    utc,
    worst_status,
    write_page,
)

if TYPE_CHECKING:
    from llmops_stream.stream.runtime.settings import Settings

__all__ = ["build_page", "check_target", "write_report"]

BUDGET_BARS = 20
TIMELINE_ROWS = 25
TABLE_ROWS = 1000


def write_report(
    target: Path,
    client: Any,
    settings: Settings,
    rep: dict[str, Any],
    states: Sequence[tuple[Any, ...]],
) -> int:
    """Build the page of ``settings.clickhouse_database`` and write it to ``target``; its
    size in bytes. The share thresholds are those of ``settings`` (the engine's)."""
    thresholds = Thresholds(
        drift=settings.drift_threshold,
        stale=settings.freshness_threshold,
        drift_min_count=settings.drift_min_count,
        stale_min_count=settings.freshness_min_count,
        window_s=settings.window_minutes * 60,
    )
    page = build_page(
        client, settings.clickhouse_database, rep=rep, states=states, thresholds=thresholds
    )
    return write_page(target, page)


def build_page(
    client: Any,
    database: str,
    *,
    rep: dict[str, Any],
    states: Sequence[tuple[Any, ...]],
    thresholds: Thresholds,
    now: datetime | None = None,
) -> str:
    """The whole HTML page for ``rep`` (:func:`report.build_report`), ``states``
    (:func:`report.budget_states`) and the time series of ``database``."""
    data = ChartData(client, database)
    span = data.span()
    edges = (span[0], span[1] + 60) if span else None  # the last minute's end
    empty = not rep["tenants"] and not rep["alerts"] and not states
    now = now or datetime.now(tz=UTC)
    when = (
        f"calls from {utc(edges[0]):%Y-%m-%d %H:%M} to {utc(edges[1]):%Y-%m-%d %H:%M} UTC"
        if edges
        else "no calls recorded"
    )
    body = [
        "<header><h1>LLM usage report</h1>",
        f'<p class="sub">database <b>{html.escape(database)}</b> · {when} · '
        f"generated {now:%Y-%m-%d %H:%M} UTC</p></header>",
    ]
    if empty:
        body.append(
            '<p class="empty banner">No data in this database yet: run '
            "<code>llmops-stream demo</code> or <code>llmops-stream replay FILE</code> first."
            "</p>"
        )
    body += [
        _kpis(rep, states),
        _cost_section(data, edges),
        _budget_section(states),
        _share_section(data, edges, thresholds, rep["alerts"]),
        _alert_section(rep["alerts"], edges),
        _totals_section(rep, states),
        "<footer>Costs in USD; times in UTC. Written by <code>llmops-stream report --html</code>"
        "; the figures are those of <code>report --json</code>.</footer>",
    ]
    return _PAGE.format(title=html.escape(f"LLM usage report · {database}"), body="\n".join(body))


def _section(key: str, title: str, note: str, content: str) -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{note_html}\n{content}</section>'


def _empty(text: str) -> str:
    return f'<p class="empty">{html.escape(text)}</p>'


def _figure(svg: str) -> str:
    return f'<figure class="chart">{svg}</figure>'


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def _tenants(n: int) -> str:
    return f"{n:,} tenant" + ("" if n == 1 else "s")


def _kpis(rep: dict[str, Any], states: Sequence[tuple[Any, ...]]) -> str:
    t = rep["tenants"].values()
    worst = list(worst_status(states).values())
    eps = episodes(rep["alerts"])
    cards = [
        ("calls", f"{sum(x['calls'] for x in t):,}"),
        ("cost USD", f"{sum(x['cost_usd'] for x in t):,.4f}"),
        ("tenants", f"{sum(1 for x in t if x['calls']):,}"),
        ("budgets exceeded", _tenants(worst.count("exceeded"))),
        ("budgets warn", _tenants(worst.count("warn"))),
        ("alerts fired", f"{len(eps):,}"),
        ("still firing", f"{sum(1 for _, end in eps if end is None):,}"),
        ("rejected", f"{sum(x['rejected'] for x in t):,}"),
        ("duplicates", f"{sum(x['duplicates'] for x in t):,}"),
    ]
    items = "".join(
        f'<div class="kpi"><span>{html.escape(k)}</span><b>{html.escape(v)}</b></div>'
        for k, v in cards
    )
    return f'<section id="summary" class="kpis">{items}</section>'


def _cost_section(data: ChartData, edges: tuple[int, int] | None) -> str:
    title = "Cost over time"
    if edges is None:
        return _section("cost", title, "", _empty("No data: no calls recorded yet."))
    bucket = pick_bucket(edges[1] - edges[0], COST_POINTS)
    starts = grid(edges[0], edges[1] - 1, bucket)
    # a step per bucket, closed by the end of the last bucket
    times = [utc(t) for t in [*starts, starts[-1] + bucket]]
    figures = []
    for column, noun in (("tenant_id", "tenant"), ("model", "model")):
        rows, count = data.cost_by(column, bucket)
        totals: dict[str, float] = {}
        for _t, top, key, usd in rows:
            if top:
                totals[key] = totals.get(key, 0.0) + usd
        series = [
            charts.Series(
                key, dense(((t, c) for t, top, k, c in rows if top and k == key), starts, 0)
            )
            for key in sorted(totals, key=lambda k: (-totals[k], k))
        ]
        if count > len(series):
            rest = dense(((t, c) for t, top, _k, c in rows if not top), starts, 0)
            plural = "s" if count - len(series) > 1 else ""
            label = f"other ({count - len(series)} {noun}{plural})"
            series.append(charts.Series(label, rest, other=True))
        series = [charts.Series(s.label, [*s.values, s.values[-1]], s.other) for s in series]
        figures.append(
            charts.cost_chart(
                times,
                series,
                f"Cost per {noun} (top {TOP_N} by cost)",
                f"USD per {bucket_label(bucket)}",
                prefix=f"cost-{noun}-",
            )
        )
    note = f"Stacked cost of all calls per {bucket_label(bucket)} (from llm_usage_1m)."
    return _section("cost", title, note, "".join(_figure(f) for f in figures))


def _budget_section(states: Sequence[tuple[Any, ...]]) -> str:
    title = "Budget burn against limits"
    if not states:
        return _section("budgets", title, "", _empty("No data: no budget state recorded."))

    def burn(row: tuple[Any, ...]) -> float:
        return float(row[3]) / float(row[4]) if row[4] > 0 else math.inf

    ranked = sorted(
        states, key=lambda r: (-STATUS_RANK.get(r[5], 0), -burn(r), str(r[0]), str(r[1]))
    )
    bars = [
        charts.BudgetBar(
            f"{tenant or '(unreadable)'} · {budget} ({window})", spend, limit, str(status)
        )
        for tenant, budget, window, spend, limit, status in ranked[:BUDGET_BARS]
    ]
    counts = {s: sum(1 for r in states if r[5] == s) for s in ("exceeded", "warn", "ok")}
    note = (
        f"{len(states)} budgets in their current window or period: {counts['exceeded']} "
        f"exceeded, {counts['warn']} warn, {counts['ok']} ok"
        + (
            f"; the {BUDGET_BARS} with the highest burn shown."
            if len(states) > BUDGET_BARS
            else "."
        )
    )
    return _section("budgets", title, note, _figure(charts.budget_chart(bars)))


def _share_section(
    data: ChartData,
    edges: tuple[int, int] | None,
    th: Thresholds,
    alerts: Sequence[dict[str, Any]],
) -> str:
    title = "Drift and stale retrieval against their thresholds"
    if edges is None:
        return _section("shares", title, "", _empty("No data: no calls recorded yet."))
    # never finer than the engine's alert window: the shares the alerts judge
    bucket = max(pick_bucket(edges[1] - edges[0]), th.window_s)
    starts = grid(edges[0], edges[1] - 1, bucket)
    times = [utc(t + bucket // 2) for t in starts]
    specs = (
        ("Drift: share of scored calls not covered by the eval set", "uncovered", "scored",
         "drift", th.drift, th.drift_min_count, "LLMOPS_DRIFT_THRESHOLD"),
        ("Freshness: share of retrieval calls that used stale chunks", "stale_calls",
         "retrieval_calls", "freshness", th.stale, th.stale_min_count,
         "LLMOPS_FRESHNESS_THRESHOLD"),
    )  # fmt: skip
    panels = []
    for heading, num, den, kind, threshold, min_count, env in specs:
        overall, per_tenant = data.shares(bucket, num, den, kind)
        nums = dense(((t, n) for t, n, _d in overall), starts, 0)
        dens = dense(((t, d) for t, _n, d in overall), starts, 0)
        fired: dict[str, int] = {}
        for a in alerts:
            if a["type"] == kind and a["status"] == "firing":
                fired[a["tenant_id"]] = fired.get(a["tenant_id"], 0) + 1
        tenants = []
        for tenant in sorted({r[1] for r in per_tenant}, key=lambda x: (-fired.get(x, 0), x)):
            tn = dense(((t, n) for t, k, n, _d in per_tenant if k == tenant), starts, 0)
            td = dense(((t, d) for t, k, _n, d in per_tenant if k == tenant), starts, 0)
            values = [share(n, d, min_count) for n, d in zip(tn, td, strict=True)]
            tenants.append(charts.Series(f"{tenant} ({fired.get(tenant, 0)} alerts)", values))
        overall_values = [share(n, d) for n, d in zip(nums, dens, strict=True)]
        panels.append(
            charts.SharePanel(
                heading,
                charts.Series("all tenants", overall_values),
                tenants,
                threshold,
                f"alert threshold {_pct(threshold)} ({env})",
            )
        )
    note = (
        f"Shares per {bucket_label(bucket)} (the alert window is {bucket_label(th.window_s)}); "
        f"thin lines: the {SHARE_TENANTS} tenants with the most alerts of the kind, left out "
        f"where a window has fewer calls than an alert needs ({th.drift_min_count} scored, "
        f"{th.stale_min_count} with retrieval). Alerts are judged per tenant and app."
    )
    svg = charts.share_chart(times, (utc(edges[0]), utc(edges[1])), panels)
    return _section("shares", title, html.escape(note), _figure(svg))


def _alert_section(alerts: Sequence[dict[str, Any]], edges: tuple[int, int] | None) -> str:
    title = "Alerts timeline"
    if not alerts:
        return _section("alerts", title, "", _empty("No data: no alert has fired."))
    eps = episodes(alerts)
    types = alert_types(alerts)
    per_tenant: dict[str, int] = {}
    for a, _end in eps:
        per_tenant[a["tenant_id"]] = per_tenant.get(a["tenant_id"], 0) + 1
    order = sorted(per_tenant, key=lambda k: (-per_tenant[k], k))
    rows = {t: i for i, t in enumerate(order[:TIMELINE_ROWS])}
    labels = [f"{t or '(no tenant)'} ({per_tenant[t]})" for t in order[:TIMELINE_ROWS]]
    if len(order) > TIMELINE_ROWS:
        rest = order[TIMELINE_ROWS:]
        labels.append(f"other {len(rest)} tenants ({sum(per_tenant[t] for t in rest)})")
    starts = [parse_iso(a["emitted_at"]) for a, _end in eps]
    ends = [e for _a, e in eps if e is not None]
    # the time axis of the other charts, widened to every alert
    since = min([*starts, *([utc(edges[0])] if edges else [])])
    until = max([*starts, *ends, *([utc(edges[1])] if edges else [])])
    timeline = charts.Timeline(
        labels,
        (since, until),
        [
            charts.Episode(
                rows.get(a["tenant_id"], TIMELINE_ROWS), a["type"], a["severity"], start, end
            )
            for (a, end), start in zip(eps, starts, strict=True)
        ],
    )
    head = "<tr><th>type</th><th>fired</th><th>resolved</th><th>still firing</th></tr>"
    lines = []
    for kind in types:
        mine = [end for a, end in eps if a["type"] == kind]
        still = sum(1 for e in mine if e is None)
        lines.append(
            f"<tr><td>{html.escape(kind)}</td><td>{len(mine):,}</td>"
            f"<td>{len(mine) - still:,}</td><td>{still:,}</td></tr>"
        )
    note = (
        "Each alert from the message that fired it to the one that resolved it "
        "(emitted_at, stream time); rows: tenants with the most alerts, count in brackets."
    )
    table = f'<table class="small">{head}{"".join(lines)}</table>'
    return _section(
        "alerts", title, html.escape(note), _figure(charts.alert_timeline(timeline, types)) + table
    )


_COLUMNS = (
    ("calls", "calls"),
    ("cost USD", "cost_usd"),
    ("input tokens", "input_tokens"),
    ("output tokens", "output_tokens"),
    ("cache read", "cache_read_tokens"),
    ("cache write", "cache_write_tokens"),
    ("scored", "scored_calls"),
    ("uncovered", "uncovered_calls"),
    ("retrieval", "retrieval_calls"),
    ("stale", "stale_calls"),
    ("rejected", "rejected"),
    ("duplicates", "duplicates"),
)


def _cells(t: dict[str, Any]) -> str:
    out = []
    for _name, key in _COLUMNS:
        value = f"{t[key]:,.4f}" if key == "cost_usd" else f"{t[key]:,}"
        out.append(f"<td>{value}</td>")
        if key == "uncovered_calls":
            out.append(f"<td>{_share_text(t['uncovered_calls'], t['scored_calls'])}</td>")
        if key == "stale_calls":
            out.append(f"<td>{_share_text(t['stale_calls'], t['retrieval_calls'])}</td>")
    return "".join(out)


def _share_text(num: int, den: int) -> str:
    return f"{num / den:.1%}" if den else "-"


def _totals_section(rep: dict[str, Any], states: Sequence[tuple[Any, ...]]) -> str:
    title = "Per-tenant totals"
    tenants = sorted(rep["tenants"].items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))
    if not tenants:
        return _section("totals", title, "", _empty("No data: no calls or rejected events."))
    worst = worst_status(states)
    names = [name for name, _key in _COLUMNS]
    names.insert(names.index("uncovered") + 1, "drift share")
    names.insert(names.index("stale") + 1, "stale share")
    head = "<tr><th>tenant</th>" + "".join(f"<th>{n}</th>" for n in names) + "<th>budget</th></tr>"
    rows = []
    for tenant, t in tenants[:TABLE_ROWS]:
        status = worst.get(tenant, "-")
        rows.append(
            f"<tr><td>{html.escape(tenant) or '(unreadable)'}</td>{_cells(t)}"
            f'<td class="st-{html.escape(status)}">{html.escape(status)}</td></tr>'
        )
    total = {key: sum(t[key] for _n, t in tenants) for _name, key in _COLUMNS}
    foot = f"<tr><td>total</td>{_cells(total)}<td></td></tr>"
    note = (
        f"{len(tenants)} tenants by cost"
        + (f", the first {TABLE_ROWS} listed" if len(tenants) > TABLE_ROWS else "")
        + "; the figures of <code>report --json</code>. Rejected events whose tenant could "
        "not be read are under (unreadable)."
    )
    table = (
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody><tfoot>{foot}</tfoot></table>"
    )
    return _section("totals", title, note, f'<div class="scroll">{table}</div>')


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; background: #f4f5f7; color: #1d1f23;
       font: 14px/1.45 "DejaVu Sans", Arial, Helvetica, sans-serif; }}
main {{ max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; }}
h1 {{ font-size: 24px; margin: 0 0 4px; }}
h2 {{ font-size: 18px; margin: 0 0 6px; }}
.sub, .note, footer {{ color: #5b6270; margin: 0 0 10px; }}
section {{ background: #fff; border-radius: 8px; padding: 16px 18px; margin: 16px 0;
          box-shadow: 0 1px 2px rgba(0, 0, 0, .08); }}
.kpis {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(120px, 1fr)); gap: 10px; }}
.kpi {{ background: #f7f8fa; border-radius: 6px; padding: 8px 10px; }}
.kpi span {{ display: block; font-size: 12px; color: #5b6270; }}
.kpi b {{ font-size: 18px; }}
figure.chart {{ margin: 8px 0; }}
figure.chart svg {{ width: 100%; height: auto; display: block; }}
.empty {{ color: #5b6270; font-style: italic; }}
.banner {{ background: #fff8e1; padding: 12px 16px; border-radius: 8px; font-style: normal; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; font-size: 12px; width: 100%; }}
table.small {{ width: auto; margin-top: 6px; }}
th, td {{ padding: 4px 6px; border-bottom: 1px solid #e6e8eb; text-align: right;
         white-space: nowrap; }}
th {{ white-space: normal; vertical-align: bottom; }}
th:first-child, td:first-child {{ text-align: left; }}
thead th {{ background: #f7f8fa; position: sticky; top: 0; }}
tfoot td {{ font-weight: bold; border-top: 2px solid #c9ccd1; }}
.st-exceeded {{ color: #c62828; font-weight: bold; }}
.st-warn {{ color: #b26a00; font-weight: bold; }}
.st-ok {{ color: #2e7d32; }}
code {{ background: #eef0f3; padding: 1px 4px; border-radius: 3px; }}
</style>
</head>
<body><main>
{body}
</main></body>
</html>
"""
