"""What the commands print for people: progress, a run's summary and the per-tenant report
table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def prepared_kernels(console: Console) -> float:
    """Compile (on the first run after an install) or load the engine's kernels, under a
    status line so a first run's pause is explained; returns the seconds it took."""
    from llmops_stream.stream.core.warmup import warm_up  # noqa: PLC0415 - numba is heavy

    with console.status(
        "Preparing the engine's kernels (compiled on the first run after an install, "
        "20-60 s; cached after that)"
    ):
        return warm_up()


def progress_bar(console: Console) -> Progress:
    """The progress bar of the long commands (a task's ``rate`` field is shown beside it)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def print_run_summary(
    console: Console,
    stats: Any,
    alerts: Any,
    seconds: float,
    resolved: int = 0,
    *,
    generate_seconds: float = 0.0,
) -> None:
    events = stats.get("events", 0)
    console.print(
        f"\n[bold]Processed[/] {events:,} events in {seconds:.1f} s "
        f"({events / max(seconds, 1e-9):,.0f} events/s): {stats.get('valid', 0):,} valid, "
        f"{stats.get('duplicates', 0):,} duplicates, {stats.get('rejected', 0):,} rejected, "
        f"{stats.get('unpriced', 0):,} unpriced."
    )
    if generate_seconds:
        own = max(seconds - generate_seconds, 1e-9)
        console.print(
            f"Engine and ClickHouse: {events / own:,.0f} events/s ({own:.1f} s); making the "
            f"synthetic traffic took the other {generate_seconds:.1f} s."
        )
    if stats.get("spans_skipped"):
        console.print(f"Skipped {stats['spans_skipped']:,} OTel spans that are no inference call.")
    reasons = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("rejected:")}
    if reasons:
        console.print(
            "Rejected by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        )
    if alerts:
        console.print(
            "Alerts fired: "
            + ", ".join(f"{k} {v}" for k, v in sorted(alerts.items()))
            + (f"; {resolved:,} resolved" if resolved else "")
        )


def share(num: int, den: int) -> str:
    return f"{num / den:.1%}" if den else "-"


def print_report(console: Console, rep: dict[str, Any], states: list[tuple[Any, ...]]) -> None:
    worst: dict[str, str] = {}
    order = {"ok": 0, "warn": 1, "exceeded": 2}
    for tenant, _budget, _window, _spend, _limit, status in states:
        if order.get(status, 0) >= order.get(worst.get(tenant, "ok"), 0):
            worst[tenant] = status
    table = Table(title="Per-tenant totals (from ClickHouse)", show_lines=False)
    for col in ("tenant", "calls", "cost USD", "budget", "drift share", "stale share", "rejected"):
        table.add_column(
            col, justify="left" if col in ("tenant", "budget") else "right", no_wrap=col == "tenant"
        )
    tenants = sorted(rep["tenants"].items(), key=lambda kv: -kv[1]["cost_usd"])
    colour = {"ok": "green", "warn": "yellow", "exceeded": "bold red"}
    for tenant, t in tenants[:25]:
        status = worst.get(tenant, "-")
        table.add_row(
            tenant or "(unreadable)",
            f"{t['calls']:,}",
            f"{t['cost_usd']:,.4f}",
            f"[{colour.get(status, 'white')}]{status}[/]",
            share(t["uncovered_calls"], t["scored_calls"]),
            share(t["stale_calls"], t["retrieval_calls"]),
            f"{t['rejected']:,}",
        )
    if len(tenants) > 25:
        table.caption = f"top 25 of {len(tenants)} tenants by cost"
    console.print(table)
    total = sum(t["cost_usd"] for t in rep["tenants"].values())
    calls = sum(t["calls"] for t in rep["tenants"].values())
    by_type: dict[str, int] = {}
    for a in rep["alerts"]:
        by_type[f"{a['type']}/{a['severity']}"] = by_type.get(f"{a['type']}/{a['severity']}", 0) + 1
    console.print(
        f"Total: {calls:,} calls, {total:,.4f} USD; budgets exceeded: "
        f"{sum(1 for s in worst.values() if s == 'exceeded')} tenants, warn: "
        f"{sum(1 for s in worst.values() if s == 'warn')}; alerts: "
        + (", ".join(f"{k} {v}" for k, v in sorted(by_type.items())) or "none")
    )
