"""The charts of ``report --html``, drawn with matplotlib as inline SVG.

Each function takes plain data (times as tz-aware UTC datetimes, money in USD, shares as
fractions 0..1) and returns one ``<svg>`` element ready to paste into an HTML page: no XML
prolog, no size in points (the page's CSS scales it), element ids prefixed so that several
charts can share one document. Text stays text (``svg.fonttype = none``), which keeps the
page small and lets a reader search it.

Only ``report --html`` imports this module: matplotlib takes a second or so to import.
Figures are built with :class:`matplotlib.figure.Figure` directly and written by its SVG
backend (``savefig(format="svg")``), never through pyplot: no GUI backend is selected and
no global figure state is kept.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import matplotlib as mpl
import matplotlib.dates as mdates
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, PercentFormatter

# a fixed salt: the same report gives the same SVG (ids are hashes of content and salt)
_RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    # tenant ids are data: a "$" in one must not start math mode
    "text.parse_math": False,
    "svg.hashsalt": "llmops-stream",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
_SVG_META = {"Date": None, "Creator": None, "Format": None, "Type": None}
# colour-blind-safe (Okabe-Ito), then greys for "other"
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
)
OTHER_COLOUR = "#BBBBBB"
LINE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
STATUS_COLOUR = {"ok": "#2E8B57", "warn": "#E69F00", "exceeded": "#C62828"}
TYPE_COLOUR = {"budget": "#C62828", "drift": "#0072B2", "freshness": "#E69F00", "model": "#009E73"}
WIDTH_IN = 11.0


@dataclass(frozen=True)
class Series:
    """One named line or band; ``values`` align with the chart's times (NaN: no value)."""

    label: str
    values: Sequence[float]
    other: bool = False  # the "everything else" band, drawn grey


@dataclass(frozen=True)
class SharePanel:
    """A share over time (fractions 0..1) against its alert threshold."""

    title: str
    overall: Series
    tenants: Sequence[Series]
    threshold: float
    threshold_label: str


@dataclass(frozen=True)
class BudgetBar:
    """One budget's current spend against its limit (USD)."""

    label: str
    spend_usd: float
    limit_usd: float
    status: str


@dataclass(frozen=True)
class Episode:
    """One alert from ``firing`` to ``resolved`` (``end`` None: still firing)."""

    row: int
    type: str
    severity: str
    start: datetime
    end: datetime | None


@dataclass
class Timeline:
    """Alert episodes drawn on rows (one per tenant) over the time axis ``span``; an
    episode still firing runs to its end."""

    rows: Sequence[str]
    span: tuple[datetime, datetime]
    episodes: Sequence[Episode] = field(default_factory=list)


def short(text: str, limit: int = 36) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut (long tenant ids
    would squeeze the plot area)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def type_colour(kind: str) -> str:
    """The colour of an alert type (unknown types get a stable palette colour)."""
    if kind in TYPE_COLOUR:
        return TYPE_COLOUR[kind]
    return PALETTE[sum(kind.encode()) % len(PALETTE)]


_ID = re.compile(r'\bid="([^"]+)"')


def inline_svg(svg: str, prefix: str) -> str:
    """matplotlib's SVG document as an element for an HTML page: the prolog and DOCTYPE
    dropped, the fixed width/height and the namespace declarations removed (the viewBox
    keeps the aspect ratio), and every id (and reference to it) prefixed with ``prefix`` so
    ids stay unique in the page."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document")
    svg = svg[start:]
    head_end = svg.index(">")
    # the namespaces too: an HTML parser puts <svg> (and xlink:href) in them by itself, and
    # then the page holds no URL at all
    head = re.sub(r'\s(?:width|height|xmlns|xmlns:xlink)="[^"]*"', "", svg[:head_end])
    svg = head + svg[head_end:]
    ids = set(_ID.findall(svg))
    if not ids:
        return svg

    def rename(match: re.Match[str]) -> str:
        name = match.group(2)
        return f"{match.group(1)}{prefix}{name}" if name in ids else match.group(0)

    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    return re.sub(r'(href="#|url\(#)([^")]+)', rename, svg)


def _svg(fig: Figure, prefix: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_SVG_META)
    return inline_svg(buf.getvalue(), prefix)


def _num(times: Sequence[datetime]) -> list[float]:
    """matplotlib date numbers (days since its epoch) of tz-aware UTC datetimes."""
    return [float(mdates.date2num(t)) for t in times]


def _time_axis(ax: Axes) -> None:
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")


def _usd(value: float, _pos: object = None) -> str:
    return f"${value:,.2f}" if abs(value) < 10 else f"${value:,.0f}"


def cost_chart(
    times: Sequence[datetime], series: Sequence[Series], title: str, unit: str, prefix: str
) -> str:
    """Stacked areas of cost per time bucket; ``unit`` names the bucket ("USD per 15 min")."""
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 3.6), layout="constrained")
        ax = fig.add_subplot()
        colours = [
            OTHER_COLOUR if s.other else PALETTE[i % len(PALETTE)] for i, s in enumerate(series)
        ]
        ax.stackplot(
            _num(times),
            [list(s.values) for s in series],
            labels=[short(s.label) for s in series],
            colors=colours,
            alpha=0.9,
            linewidth=0,
            step="post",  # one value per bucket, held to the next bucket's start
        )
        ax.set_title(short(title, 120), loc="left")
        ax.set_ylabel(unit)
        ax.yaxis.set_major_formatter(FuncFormatter(_usd))
        ax.set_ylim(bottom=0)
        ax.set_xlim(_num(times)[0], _num(times)[-1])
        _time_axis(ax)
        # reversed: the legend reads top-down like the stack
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1))
        return _svg(fig, prefix)


def budget_chart(bars: Sequence[BudgetBar], prefix: str = "budget-") -> str:
    """Horizontal bars of spend as a share of the limit, coloured by status, the limit
    (100 %) marked; bars beyond the axis end are cut, their label gives the true share."""
    with mpl.rc_context(_RC):
        height = 1.0 + 0.25 * len(bars)
        fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
        ax = fig.add_subplot()
        ratios = [b.spend_usd / b.limit_usd if b.limit_usd > 0 else math.inf for b in bars]
        finite = [r for r in ratios if math.isfinite(r)]
        cap = min(max([1.2, *[r * 1.05 for r in finite]]), 2.5)
        ys = list(range(len(bars)))
        ax.barh(
            ys,
            [min(r, cap) for r in ratios],
            color=[STATUS_COLOUR.get(b.status, OTHER_COLOUR) for b in bars],
            height=0.7,
        )
        for y, bar, ratio in zip(ys, bars, ratios, strict=True):
            share = f"{ratio:.0%}" if math.isfinite(ratio) else "no limit"
            ax.text(
                min(ratio, cap) + 0.01 if math.isfinite(ratio) else 0.01,
                y,
                f"{share}  (${bar.spend_usd:,.2f} of ${bar.limit_usd:,.2f})",
                va="center",
                fontsize=8,
                # readable where the label crosses the limit line
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.8},
            )
        ax.axvline(1.0, color="#333333", linestyle="--", linewidth=1.2)
        ax.set_yticks(ys, [short(b.label, 48) for b in bars])
        ax.invert_yaxis()
        ax.set_xlim(0, cap + 0.35)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("spend as % of the limit (USD spent in the current window or period)")
        ax.set_title("Budget burn: spend against limit", loc="left")
        ax.grid(axis="y", visible=False)
        handles: list[Artist] = [
            Patch(color=STATUS_COLOUR[s], label=s) for s in ("ok", "warn", "exceeded")
        ]
        handles.append(Line2D([], [], color="#333333", linestyle="--", label="limit (100 %)"))
        ax.legend(handles=handles, loc="lower right")
        return _svg(fig, prefix)


def share_chart(
    times: Sequence[datetime], span: tuple[datetime, datetime], panels: Sequence[SharePanel]
) -> str:
    """One panel per share: all tenants as a thick line, a few tenants as thin ones, the
    alert threshold as a dashed red line; ``times`` are the buckets' middles, ``span`` the
    time axis."""
    xlim = _num(span)
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 3.0 * len(panels)), layout="constrained")
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, panel in zip(axes, panels, strict=True):
            for i, s in enumerate(panel.tenants):
                ax.plot(
                    _num(times),
                    list(s.values),
                    color=LINE_COLOURS[i % len(LINE_COLOURS)],
                    linewidth=1.0,
                    alpha=0.8,
                    label=short(s.label),
                )
            ax.plot(
                _num(times),
                list(panel.overall.values),
                color="#222222",
                linewidth=2.2,
                label=short(panel.overall.label),
            )
            ax.axhline(
                panel.threshold,
                color="#C62828",
                linestyle="--",
                linewidth=1.4,
                label=short(panel.threshold_label, 80),
            )
            peak = max([panel.threshold, *[v for v in panel.overall.values if not math.isnan(v)]])
            for s in panel.tenants:
                peak = max([peak, *[v for v in s.values if not math.isnan(v)]])
            ax.set_ylim(0, min(1.0, peak * 1.15 + 0.01))
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            ax.set_ylabel("share %")
            ax.set_title(short(panel.title, 120), loc="left")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        axes[-1].set_xlim(*xlim)
        _time_axis(axes[-1])
        return _svg(fig, "shares-")


def alert_timeline(timeline: Timeline, types: Sequence[str]) -> str:
    """Alert episodes per tenant row, one lane per type: a bar from firing to resolved (a
    triangle at the right edge when still firing); critical alerts drawn thicker."""
    with mpl.rc_context(_RC):
        height = 1.4 + 0.32 * len(timeline.rows)
        fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
        ax = fig.add_subplot()
        lane = {t: i for i, t in enumerate(types)}
        step = 0.8 / max(len(types), 1)
        since, until = _num(timeline.span)
        # one collection per (type, severity) and per end marker: a few SVG groups rather
        # than elements per alert
        segments: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        ends: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for ep in timeline.episodes:
            y = ep.row - 0.4 + step * (lane.get(ep.type, 0) + 0.5)
            start = float(mdates.date2num(ep.start))
            end = until if ep.end is None else float(mdates.date2num(ep.end))
            segments.setdefault((ep.type, ep.severity), []).append((start, end, y))
            ends.setdefault((ep.type, ep.end is None), []).append((end, y))
        for (kind, severity), segs in segments.items():
            colour = type_colour(kind)
            xs0, xs1, ys = zip(*segs, strict=True)
            width = 4.0 if severity == "critical" else 2.2
            ax.hlines(ys, xs0, xs1, colors=colour, linewidth=width)
            ax.plot(xs0, ys, linestyle="", marker="o", markersize=3.2, color=colour)
        for (kind, still), points in ends.items():
            xs, ys = zip(*points, strict=True)
            marker, size = (">", 4.5) if still else ("|", 6.0)
            ax.plot(xs, ys, linestyle="", marker=marker, markersize=size, color=type_colour(kind))
        ax.set_xlim(since, until)
        ax.set_yticks(range(len(timeline.rows)), [short(r) for r in timeline.rows])
        ax.set_ylim(len(timeline.rows) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        for y in range(len(timeline.rows) - 1):
            ax.axhline(y + 0.5, color="#DDDDDD", linewidth=0.6)
        _time_axis(ax)
        ax.set_title("Alerts by tenant: firing → resolved, one lane per type", loc="left")
        handles: list[Artist] = [
            Line2D([], [], color=type_colour(t), linewidth=3, label=short(t)) for t in types
        ]
        handles += [
            Line2D([], [], color="#555555", marker="o", linestyle="", label="fired"),
            Line2D([], [], color="#555555", marker="|", linestyle="", label="resolved"),
            Line2D([], [], color="#555555", marker=">", linestyle="", label="still firing"),
            Line2D([], [], color="#555555", linewidth=4, label="critical"),
            Line2D([], [], color="#555555", linewidth=2, label="warning"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1))
        return _svg(fig, "alerts-")
