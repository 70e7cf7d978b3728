"""Slow per-event reference for ``PriceTable.costs``: one event at a time, exact Decimal
arithmetic, its own tier choice. Written for clarity, not speed; shares only the price
lookup (``PriceTable.resolve``) with the code under test."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

from llmops_stream.stream.core.pricing import ModelPrice, PriceTable


class Call(NamedTuple):
    """One call's pricing inputs (None model/provider = absent, read as ``""``)."""

    model: str | None
    provider: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cache_hit: bool


def reference_cost(price: ModelPrice | None, call: Call) -> tuple[float, bool]:
    """``(cost_usd, unpriced)`` of one call, per SPEC §3 Cost."""
    if call.cache_hit:
        return 0.0, False  # answered by the app's cache: nothing to price, nothing missing
    if price is None:
        return 0.0, True
    rates = (price.input, price.output, price.cache_read, price.cache_write)
    best_threshold = -1
    for tier in price.tiers:  # any order: the highest exceeded threshold wins
        if call.input_tokens > tier.above_input_tokens > best_threshold:
            best_threshold = tier.above_input_tokens
            rates = (tier.input, tier.output, tier.cache_read, tier.cache_write)
    p_in, p_out, p_read, p_write = (Decimal(r) for r in rates)
    uncached = max(call.input_tokens - call.cache_read_tokens - call.cache_write_tokens, 0)
    total = (
        Decimal(uncached) * p_in
        + Decimal(call.cache_read_tokens) * p_read
        + Decimal(call.cache_write_tokens) * p_write
        + Decimal(call.output_tokens) * p_out
    ) / Decimal(1_000_000)
    return float(total), False


def reference_costs(table: PriceTable, calls: Sequence[Call]) -> tuple[list[float], list[bool]]:
    """Per-event loop over a batch: ``(costs, unpriced)``."""
    costs: list[float] = []
    unpriced: list[bool] = []
    for call in calls:
        price = table.resolve(call.model or "", call.provider or "")
        cost, missing = reference_cost(price, call)
        costs.append(cost)
        unpriced.append(missing)
    return costs, unpriced
