"""Price data types: one model's rates, tiers, and a schedule of rates over event time.

Job
---
Hold what a price *is*, independent of where it came from (override file or the genai-prices
snapshot) and of how a batch is evaluated (:mod:`.pricing`):

* :class:`ModelPrice` -- USD per million tokens for each token class, plus threshold tiers.
* :class:`PriceSchedule` -- the prices of one model over event time: a few rows, each valid
  from a start instant and/or during a daily UTC time-of-day window. A call is priced by the
  row in force at its own ``ts``.
* :func:`cost_formula` -- the scalar cost of one call (the batch path is vectorised in
  :mod:`.pricing`; both do the same arithmetic).

Token classes and their rates (SPEC §3 Cost, extended as genai-prices bills them)::

    cost = ((input - cache_read - cache_write) * p_in
            + cache_read * p_cache_read
            + (cache_write - cache_write_1h) * p_cache_write + cache_write_1h * p_cache_write_1h
            + (output - reasoning) * p_out + reasoning * p_reasoning) / 1e6

``cache_write_1h`` (long-TTL cache writes) is a subset of ``cache_write``, ``reasoning`` a
subset of ``output``. A model without a 1h-write rate bills those tokens as cache writes, one
without a reasoning rate bills reasoning as output -- so with neither rate this is exactly the
SPEC formula. A subset larger than its parent is clamped to the parent (the decoder rejects
such events; the cost must still be defined and never negative).
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

__all__ = [
    "MS_PER_DAY",
    "TOKENS_PER_PRICE_UNIT",
    "ModelPrice",
    "PriceSchedule",
    "PriceTier",
    "Rates",
    "ScheduleRow",
    "cost_formula",
]

TOKENS_PER_PRICE_UNIT = 1_000_000.0
"""Prices are quoted per million tokens."""

MS_PER_DAY = 86_400_000


class Rates(NamedTuple):
    """The six rates (USD per million tokens) that price one call, fallbacks applied."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    cache_write_1h: float
    reasoning: float


class PriceTier(msgspec.Struct, frozen=True):
    """Rates (USD per million tokens) for a whole call whose ``input_tokens`` exceed
    ``above_input_tokens`` (strictly greater, like the providers' "> 200k tokens" tiers).

    ``cache_write_1h``/``reasoning`` None: billed at this tier's ``cache_write``/``output``.
    """

    above_input_tokens: int
    input: float
    output: float
    cache_read: float
    cache_write: float
    cache_write_1h: float | None = None
    reasoning: float | None = None


class ModelPrice(msgspec.Struct, frozen=True):
    """Price of one model at one time, USD per million tokens.

    ``tiers``: the tier with the highest threshold the call's input exceeds wins, else the
    base rates apply. ``cache_write_1h``/``reasoning`` None: those tokens are billed at
    ``cache_write``/``output``. ``source`` is ``"override"`` or ``"genai-prices"``;
    ``matched`` says what the library matched (``"provider:model-id"``), empty for overrides.
    """

    input: float
    output: float
    cache_read: float
    cache_write: float
    context_window: int | None = None
    tiers: tuple[PriceTier, ...] = ()
    source: str = "override"
    matched: str = ""
    cache_write_1h: float | None = None
    reasoning: float | None = None

    def all_rates_for(self, input_tokens: int) -> Rates:
        """All six rates for a call with this many input tokens (scalar path)."""
        chosen: ModelPrice | PriceTier = self
        best = -1
        for tier in self.tiers:  # any order: the highest exceeded threshold wins
            if input_tokens > tier.above_input_tokens > best:
                best = tier.above_input_tokens
                chosen = tier
        return Rates(
            chosen.input,
            chosen.output,
            chosen.cache_read,
            chosen.cache_write,
            chosen.cache_write if chosen.cache_write_1h is None else chosen.cache_write_1h,
            chosen.output if chosen.reasoning is None else chosen.reasoning,
        )

    def rates_for(self, input_tokens: int) -> tuple[float, float, float, float]:
        """``(input, output, cache_read, cache_write)`` rates for a call with this many input
        tokens (the four SPEC rates; see :meth:`all_rates_for` for the other two)."""
        rates = self.all_rates_for(input_tokens)
        return rates.input, rates.output, rates.cache_read, rates.cache_write


class ScheduleRow(msgspec.Struct, frozen=True):
    """One price of a :class:`PriceSchedule` and when it is valid.

    ``from_ms``: valid from this instant on (epoch ms, inclusive); None = no start.
    ``daily``: valid only during ``[start, end)`` ms after UTC midnight each day; ``end <
    start`` wraps midnight, ``start == end`` is never, ``(0, MS_PER_DAY)`` always; None = all
    day. Both set: both must hold. ``price`` None: calls priced by this row are unpriced.
    """

    price: ModelPrice | None
    from_ms: int | None = None
    daily: tuple[int, int] | None = None

    def valid_at(self, ts_ms: int) -> bool:
        """Whether this row's constraints hold at ``ts_ms`` (epoch ms)."""
        if self.from_ms is not None and ts_ms < self.from_ms:
            return False
        if self.daily is None:
            return True
        start, end = self.daily
        tod = ts_ms % MS_PER_DAY
        if end < start:
            return tod >= start or tod < end
        return start <= tod < end


class PriceSchedule(msgspec.Struct, frozen=True):
    """Prices of one model over event time.

    Precedence is genai-prices' own rule for its conditional price lists
    (``ModelInfo.get_prices``): the **last** row valid at the call's time wins; when no row
    is valid, the **first** row applies. So an unconstrained first row is the price before
    any dated change, a dated row replaces everything listed before it from its date on, and
    a time-of-day row listed after the base row overrides it during its window.
    """

    rows: tuple[ScheduleRow, ...]

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("a price schedule needs at least one row")

    @classmethod
    def fixed(cls, price: ModelPrice | None) -> PriceSchedule:
        """A schedule with one price at all times."""
        return cls((ScheduleRow(price),))

    def row_at(self, ts_ms: int) -> int:
        """Index of the row in force at ``ts_ms`` (epoch ms)."""
        for index in range(len(self.rows) - 1, -1, -1):
            if self.rows[index].valid_at(ts_ms):
                return index
        return 0

    def price_at(self, ts_ms: int) -> ModelPrice | None:
        """The price in force at ``ts_ms`` (epoch ms); None = unpriced then."""
        return self.rows[self.row_at(ts_ms)].price


def cost_formula(
    price: ModelPrice | None,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    *,
    cache_hit: bool = False,
    cache_write_1h_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> float:
    """Cost in USD of one call at one ``price`` (scalar helper, the same arithmetic as
    :meth:`PriceTable.costs`). Returns 0.0 for a cache hit or ``price is None`` (unpriced)."""
    if cache_hit or price is None:
        return 0.0
    rates = price.all_rates_for(input_tokens)
    uncached = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
    write_1h = min(cache_write_1h_tokens, cache_write_tokens)
    reasoning = min(reasoning_tokens, output_tokens)
    total = (
        float(uncached) * rates.input
        + float(cache_read_tokens) * rates.cache_read
        + float(cache_write_tokens - write_1h) * rates.cache_write
        + float(write_1h) * rates.cache_write_1h
        + float(output_tokens - reasoning) * rates.output
        + float(reasoning) * rates.reasoning
    )
    return total / TOKENS_PER_PRICE_UNIT
