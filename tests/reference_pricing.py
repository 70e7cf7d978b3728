"""Slow per-event reference for ``PriceTable.costs``: one event at a time, its own choice of
the schedule row in force (with ``datetime`` arithmetic) and of the tier, exact Decimal
arithmetic. Written for clarity, not speed; shares only the price lookup
(``PriceTable.schedule``) with the code under test."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from llmops_stream.stream.core.pricing import (
    ModelPrice,
    PriceSchedule,
    PriceTable,
    PriceTier,
    ScheduleRow,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Call(NamedTuple):
    """One call's pricing inputs (None model/provider = absent, read as ``""``)."""

    model: str | None
    provider: str | None
    ts_ms: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    cache_hit: bool = False


def _valid(row: ScheduleRow, when: datetime) -> bool:
    if row.from_ms is not None and when < EPOCH + timedelta(milliseconds=row.from_ms):
        return False
    if row.daily is None:
        return True
    since_midnight = when - when.replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = (timedelta(milliseconds=v) for v in row.daily)
    if end < start:  # wraps midnight
        return since_midnight >= start or since_midnight < end
    return start <= since_midnight < end


def price_in_force(schedule: PriceSchedule | None, ts_ms: int) -> ModelPrice | None:
    """genai-prices' rule: the last row valid at the call's time, else the first row."""
    if schedule is None:
        return None
    when = EPOCH + timedelta(milliseconds=ts_ms)
    for row in reversed(schedule.rows):
        if _valid(row, when):
            return row.price
    return schedule.rows[0].price


def reference_cost(price: ModelPrice | None, call: Call) -> tuple[float, bool]:
    """``(cost_usd, unpriced)`` of one call at ``price``, per SPEC §3 Cost."""
    if call.cache_hit:
        return 0.0, False  # answered by the app's cache: nothing to price, nothing missing
    if price is None:
        return 0.0, True
    rates: ModelPrice | PriceTier = price
    best_threshold = -1
    for tier in price.tiers:  # any order: the highest exceeded threshold wins
        if call.input_tokens > tier.above_input_tokens > best_threshold:
            best_threshold = tier.above_input_tokens
            rates = tier
    p_in = Decimal(rates.input)
    p_out = Decimal(rates.output)
    p_read = Decimal(rates.cache_read)
    p_write = Decimal(rates.cache_write)
    p_write_1h = p_write if rates.cache_write_1h is None else Decimal(rates.cache_write_1h)
    p_reason = p_out if rates.reasoning is None else Decimal(rates.reasoning)
    uncached = max(call.input_tokens - call.cache_read_tokens - call.cache_write_tokens, 0)
    write_1h = min(call.cache_write_1h_tokens, call.cache_write_tokens)
    reasoning = min(call.reasoning_tokens, call.output_tokens)
    total = (
        Decimal(uncached) * p_in
        + Decimal(call.cache_read_tokens) * p_read
        + Decimal(call.cache_write_tokens - write_1h) * p_write
        + Decimal(write_1h) * p_write_1h
        + Decimal(call.output_tokens - reasoning) * p_out
        + Decimal(reasoning) * p_reason
    ) / Decimal(1_000_000)
    return float(total), False


def reference_costs(table: PriceTable, calls: Sequence[Call]) -> tuple[list[float], list[bool]]:
    """Per-event loop over a batch: ``(costs, unpriced)``."""
    costs: list[float] = []
    unpriced: list[bool] = []
    for call in calls:
        schedule = table.schedule(call.model or "", call.provider or "")
        cost, missing = reference_cost(price_in_force(schedule, call.ts_ms), call)
        costs.append(cost)
        unpriced.append(missing)
    return costs, unpriced
