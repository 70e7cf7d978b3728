"""Library prices: the genai-prices bundled snapshot turned into our price schedules.

Job
---
Find a model in the genai-prices data shipped inside the installed wheel
(``genai_prices.data.providers``) and convert its price list -- one price, or a list of
conditional prices with start dates and time-of-day windows -- into a :class:`PriceSchedule`
that prices each call as of its own event time. Offline by construction: we build our own
``DataSnapshot`` from that list and never call ``genai_prices.calc_price``/``get_snapshot``
(which would pick up a snapshot installed by ``UpdatePrices``) nor start ``UpdatePrices``.

Matching (``DataSnapshot.find_provider_model``): the model id is lower-cased; with a provider
hint (the event's ``provider``) the provider is found by id or by its ``provider_match``
aliases (e.g. ``vertex`` -> ``google``), then the model by that provider's match rules
(``equals``/``starts_with``/regex clauses, so ``gpt-4o-2024-08-06`` matches ``gpt-4o``;
compact dates ``-20251211`` are normalised), with one step of the provider's fallbacks (Azure
-> OpenAI, Google -> Anthropic, ...). If the hint names an unknown provider or that provider
does not list the model, the lookup is retried without the hint (provider inferred from the
model id). No match -> None (unpriced).

Conversion, row by row (the library's list order and precedence are kept, see
:class:`PriceSchedule`): a ``StartDateConstraint`` compares the call's UTC *date* with the
start date, i.e. the row is valid from 00:00 UTC of that date; a ``TimeOfDateConstraint`` is a
daily ``[start, end)`` window in UTC (wrapping midnight when ``end < start``), converted to
milliseconds after midnight. Rates taken per row: ``input_mtok``, ``output_mtok``,
``cache_read_mtok``, ``cache_write_mtok``, ``cache_write_1h_mtok``, ``output_reasoning_mtok``
(tiered or flat). A missing cache rate is billed as input, a missing 1h-write rate as cache
write, a missing reasoning rate as output -- which is how the library's own calculator splits
usage it has no separate price for. A row with neither an input nor an output rate (OCR pages,
audio hours, ...) is unpriced. Not priced: request-context variants (``service_tier``, batch;
events do not carry them, so the standard price is used), per-request fees, web searches and
non-text modalities (events carry no such counts).

Tiers: the library's ``TieredPrices`` are threshold ("cliff") prices on the call's total input
tokens -- above a threshold the tier rate applies to *all* tokens of that class. Rate keys may
have different thresholds; they are merged into one ascending list of :class:`PriceTier` with
all rates at each.
"""

from __future__ import annotations

import importlib
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from genai_prices import types as gp
from genai_prices.data_snapshot import DataSnapshot

from .price_types import MS_PER_DAY, ModelPrice, PriceSchedule, PriceTier, ScheduleRow

__all__ = ["LibraryPrices", "library_schedule"]

# Our rate name -> the library's price key.
_KEYS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "cache_write_1h": "cache_write_1h_mtok",
    "reasoning": "output_reasoning_mtok",
}


def _rate_at(value: Any, threshold: int | None) -> float | None:
    """Rate of one price key for calls with input above ``threshold`` (None = base rate)."""
    if value is None:
        return None
    if isinstance(value, gp.TieredPrices):
        rate: Decimal = value.base
        if threshold is not None:
            for tier in value.tiers:  # sorted ascending by the library
                if tier.start <= threshold:
                    rate = tier.price
        return float(rate)
    return float(value)


def convert_price(
    library_price: Any, context_window: int | None, matched: str
) -> ModelPrice | None:
    """Our :class:`ModelPrice` from a genai-prices ``ModelPrice``; None if it has no token
    rate (neither input nor output)."""
    values = {ours: getattr(library_price, theirs, None) for ours, theirs in _KEYS.items()}
    if values["input"] is None and values["output"] is None:
        return None
    thresholds = sorted(
        {
            tier.start
            for value in values.values()
            if isinstance(value, gp.TieredPrices)
            for tier in value.tiers
        }
    )

    def tier(threshold: int) -> PriceTier:
        rate_in, out, read, write, write_1h, reasoning = _rates(values, threshold)
        return PriceTier(threshold, rate_in, out, read, write, write_1h, reasoning)

    rate_in, out, read, write, write_1h, reasoning = _rates(values, None)
    return ModelPrice(
        input=rate_in,
        output=out,
        cache_read=read,
        cache_write=write,
        context_window=context_window,
        tiers=tuple(tier(threshold) for threshold in thresholds),
        source="genai-prices",
        matched=matched,
        cache_write_1h=write_1h,
        reasoning=reasoning,
    )


def _rates(
    values: dict[str, Any], threshold: int | None
) -> tuple[float, float, float, float, float | None, float | None]:
    """``(input, output, cache_read, cache_write, cache_write_1h, reasoning)`` at one tier
    level; cache rates fall back to input, the last two stay None (billed as cache write /
    output)."""
    got = {key: _rate_at(value, threshold) for key, value in values.items()}
    rate_in = got["input"] or 0.0
    read, write = got["cache_read"], got["cache_write"]
    return (
        rate_in,
        got["output"] or 0.0,
        rate_in if read is None else read,
        rate_in if write is None else write,
        got["cache_write_1h"],
        got["reasoning"],
    )


def _utc_micros_of_day(value: time) -> int:
    """Microseconds after UTC midnight of a time of day (naive = UTC, as in the library)."""
    if value.tzinfo is not None:
        value = datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def _daily_window(constraint: Any) -> tuple[int, int]:
    """``(start, end)`` ms after UTC midnight of a ``TimeOfDateConstraint``."""
    start_us = _utc_micros_of_day(constraint.start_time)
    end_us = _utc_micros_of_day(constraint.end_time)
    # Rounded up to whole ms: for a call time t in whole ms, t >= x and t < x hold exactly
    # when they hold against ceil(x).
    start_ms, end_ms = -(-start_us // 1000), -(-end_us // 1000)
    # The library decides "wraps midnight" on the exact times; rounding can make the two ends
    # equal, which for a wrapping window means the whole day (never, for a plain one).
    if end_us < start_us and start_ms == end_ms:
        return (0, MS_PER_DAY)
    return (start_ms, end_ms)


def _row(entry: Any, context_window: int | None, matched: str) -> ScheduleRow:
    price = convert_price(entry.prices, context_window, matched)
    constraint = entry.constraint
    if constraint is None:
        return ScheduleRow(price)
    if isinstance(constraint, gp.StartDateConstraint):
        day: date = constraint.start_date
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return ScheduleRow(price, from_ms=int(midnight.timestamp()) * 1000)
    if isinstance(constraint, gp.TimeOfDateConstraint):
        return ScheduleRow(price, daily=_daily_window(constraint))
    raise TypeError(f"unsupported genai-prices constraint {type(constraint).__name__}")


def library_schedule(info: Any, matched: str) -> PriceSchedule:
    """The :class:`PriceSchedule` of a genai-prices ``ModelInfo``."""
    if isinstance(info.prices, gp.ModelPrice):
        return PriceSchedule.fixed(convert_price(info.prices, info.context_window, matched))
    return PriceSchedule(tuple(_row(e, info.context_window, matched) for e in info.prices))


class LibraryPrices:
    """The bundled genai-prices snapshot, loaded on first use (~0.1 s)."""

    def __init__(self) -> None:
        # The bundled data is a 1.6 MB module; import it only when a lookup is needed.
        providers = importlib.import_module("genai_prices.data").providers
        # Our own snapshot over the bundled provider list: never the process-wide custom
        # snapshot an UpdatePrices task may have installed, never a download.
        self._snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        # Many (model, provider) spellings land on one library entry; convert it once.
        self._schedules: dict[tuple[str, int], PriceSchedule] = {}

    def lookup(self, model: str, provider: str) -> PriceSchedule | None:
        """Schedule of ``model`` with an optional ``provider`` hint ("" = none)."""
        found = None
        for hint in (provider, None) if provider else (None,):
            try:
                found = self._snapshot.find_provider_model(model, None, hint, None)
                break
            except LookupError:
                continue
        if found is None:
            return None
        library_provider, info = found
        key = (library_provider.id, id(info))
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = library_schedule(info, f"{library_provider.id}:{info.id}")
            self._schedules[key] = schedule
        return schedule
