"""Per-call cost in USD, priced as of each call's event time: one lookup per model, a
vectorised evaluation per batch.

Job
---
Turn the model, provider, ``ts`` and token columns of a micro-batch into ``cost_usd``
(float64) and an ``unpriced`` flag (bool), following SPEC §3 **Cost**::

    cost = ((input - cache_read - cache_write) * p_in + cache_read * p_cache_read
            + cache_write * p_cache_write + output * p_out) / 1e6

with the two sub-classes genai-prices bills separately for some models: long-TTL cache writes
(``cache_write_1h``, inside ``cache_write``) and ``reasoning`` (inside ``output``), each at
its own rate when the model has one and at the parent's rate otherwise (see
:mod:`.price_types`). ``status=cache_hit`` costs 0 (the app's semantic cache answered). A
model without a price at the call's time costs 0 and is flagged ``unpriced`` -- except on a
cache hit, where no price is needed.

Where prices come from
----------------------
1. **Override file** (:mod:`.price_overrides`), keyed by model id: an exact key match first,
   then a case-insensitive one; whatever the provider, and for all times (a dated override
   list leaves the model unpriced before its first date rather than falling back to the
   library).
2. **genai-prices bundled snapshot** (:mod:`.price_library`), offline, never fetched.

Which price is taken
--------------------
**The one in force at the call's own** ``ts`` -- history is never re-priced at today's rates.
Each distinct ``(model, provider)`` resolves once (cached for the table's lifetime) to a
:class:`PriceSchedule`: a few rows, each valid from a start instant and/or in a daily UTC
time-of-day window, chosen by genai-prices' own precedence (last valid row wins, else the
first row; see :class:`PriceSchedule`). Tiers apply per call on its input tokens.

Evaluation
----------
:meth:`PriceTable.costs` factorises the model and provider columns (pandas' hash
factorisation), maps each distinct pair to its schedule, and evaluates all events with whole-
array numpy operations -- no Python per event, no library call per event. The schedules seen
so far are compiled into arrays (:class:`_Plan`, rebuilt only when a new schedule appears):

* a schedule with one row in force at all times (most models) gives its row directly;
* otherwise every distinct start instant of every schedule goes into one sorted array;
  ``searchsorted(starts, ts)`` gives each call's rank, and a per-schedule table maps the rank
  to the schedule's *segment* (the span between two of its own start dates);
* time-of-day windows: all window edges cut the day into intervals, ``searchsorted(edges,
  ts mod day)`` gives the call's interval, and a (segment, interval) table gives the row;
* the chosen row and the call's tier level (number of tier thresholds its input exceeds)
  index flat rate tables, gathered once per rate.

Most of the time goes to factorising the two string columns; the search by time touches only
calls of models whose price changes over time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

import numpy as np
import pandas as pd

from .price_library import LibraryPrices
from .price_overrides import PriceOverride, load_price_overrides, override_schedule
from .price_types import (
    MS_PER_DAY,
    TOKENS_PER_PRICE_UNIT,
    ModelPrice,
    PriceSchedule,
    PriceTier,
    Rates,
    ScheduleRow,
    cost_formula,
)

__all__ = [
    "TOKENS_PER_PRICE_UNIT",
    "ModelPrice",
    "PriceOverride",
    "PriceSchedule",
    "PriceTable",
    "PriceTier",
    "Rates",
    "ScheduleRow",
    "TokenColumns",
    "cost_formula",
    "load_price_overrides",
]

_NO_THRESHOLD = np.iinfo(np.int64).max
_UNPRICED = PriceSchedule.fixed(None)
"""The schedule of a model nobody prices: one row, no price."""


class TokenColumns(NamedTuple):
    """The token columns of a batch, ``int64[n]`` each (SPEC §3 usage fields)."""

    input: np.ndarray
    output: np.ndarray
    cache_read: np.ndarray
    cache_write: np.ndarray
    cache_write_1h: np.ndarray  # subset of cache_write
    reasoning: np.ndarray  # subset of output


def _segments(schedule: PriceSchedule) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """The schedule's own sorted start instants (epoch ms) and, per segment between them,
    ``(fallback row, windowed rows in descending priority)``.

    Within a segment the set of rows whose start has passed is fixed, so the library's
    precedence (last valid row wins, else row 0) reduces to: the highest-index row valid all
    day in the segment, unless a windowed row listed after it is in its window.
    """
    rows = schedule.rows
    dated = sorted({row.from_ms for row in rows if row.from_ms is not None})
    segments: list[tuple[int, list[int]]] = []
    for index in range(len(dated) + 1):
        begin = dated[index - 1] if index else None  # None: before every start instant

        def started(row: ScheduleRow, begin: int | None = begin) -> bool:
            return row.from_ms is None or (begin is not None and row.from_ms <= begin)

        all_day = [i for i, row in enumerate(rows) if started(row) and row.daily is None]
        base = all_day[-1] if all_day else -1
        windowed = [
            i
            for i in range(len(rows) - 1, base, -1)
            if started(rows[i]) and rows[i].daily is not None
        ]
        segments.append((max(base, 0), windowed))
    return dated, segments


class _Plan:
    """The schedules seen so far, compiled into arrays for :func:`_evaluate`.

    Shapes: S schedules, B distinct start instants over all of them, G segments, E distinct
    time-of-day window edges, R rows, L most tiers of any row.
    """

    def __init__(self, schedules: list[PriceSchedule]) -> None:
        compiled = [_segments(schedule) for schedule in schedules]
        self.breaks = np.array(sorted({t for dated, _ in compiled for t in dated}), np.int64)
        self.n_schedules = len(schedules)
        # Row of a schedule that has one row in force at all times, else -1: most calls take
        # this shortcut and skip the search by time.
        self.fixed_row = np.full(len(schedules), -1, np.int64)  # (S,)
        # (S * (B+1),) segment by schedule code * (B+1) + rank, rank = number of global
        # start instants <= ts; the schedule's own segment is the number of *its* start
        # instants among those.
        self.seg_of = np.zeros(len(schedules) * (len(self.breaks) + 1), np.int64)
        fallback: list[int] = []
        windows: list[list[tuple[tuple[int, int], int]]] = []  # per segment: (daily, row)
        prices: list[ModelPrice | None] = []
        width = len(self.breaks) + 1
        for code, (schedule, (dated, segments)) in enumerate(zip(schedules, compiled, strict=True)):
            first_row, first_segment = len(prices), len(fallback)
            prices.extend(row.price for row in schedule.rows)
            if len(segments) == 1 and not segments[0][1]:
                self.fixed_row[code] = first_row + segments[0][0]
            own = np.searchsorted(np.array(dated, np.int64), self.breaks, side="right")
            self.seg_of[code * width] = first_segment
            self.seg_of[code * width + 1 : (code + 1) * width] = first_segment + own
            for base, windowed in segments:
                fallback.append(first_row + base)
                windows.append([(_daily(schedule.rows[i]), first_row + i) for i in windowed])
        # Every window edge of every segment cuts the day into intervals, E edges -> E+1
        # intervals; within one interval each window is either in force throughout or not,
        # so (segment, interval) -> row is a table built here, not a test per call.
        self.tod_edges = np.array(
            sorted({edge for entries in windows for daily, _ in entries for edge in daily}),
            np.int64,
        )  # (E,) ms after UTC midnight
        starts = [0, *self.tod_edges.tolist()]
        self.tod_row = np.array(
            [
                next((row for daily, row in entries if _inside(daily, start)), base)
                for base, entries in zip(fallback, windows, strict=True)
                for start in starts
            ],
            np.int64,
        )  # (G * (E+1),) row by segment * (E+1) + interval
        self.fallback = np.array(fallback, np.int64)  # (G,) row
        self._compile_rates(prices)

    def _compile_rates(self, prices: list[ModelPrice | None]) -> None:
        n_tiers = max((len(p.tiers) for p in prices if p is not None), default=0)
        self.levels = n_tiers + 1
        self.priced = np.array([p is not None for p in prices], np.bool_)  # (R,)
        self.thr = np.full((len(prices), n_tiers), _NO_THRESHOLD, np.int64)  # (R, L)
        # (R, L+1, 6) rates per million tokens; level 0 base, level j the j-th tier.
        table = np.zeros((len(prices), n_tiers + 1, len(Rates._fields)))
        for r, price in enumerate(prices):
            if price is None:
                continue
            tiers = sorted(price.tiers, key=lambda tier: tier.above_input_tokens)
            for level, tokens in enumerate([-1] + [t.above_input_tokens for t in tiers]):
                table[r, level] = price.all_rates_for(tokens + 1)
                if level:
                    self.thr[r, level - 1] = tokens
        flat = table.reshape(-1, len(Rates._fields))  # index: row * (L+1) + level
        p_in, p_out, p_read, p_write, p_write_1h, p_reasoning = (
            np.ascontiguousarray(flat[:, k]) for k in range(len(Rates._fields))
        )
        self.p_in, self.p_out, self.p_read, self.p_write = p_in, p_out, p_read, p_write
        # The two sub-classes are billed as their parent plus a difference, which is zero
        # for models without a separate rate: the term is skipped when no row has one.
        self.d_write_1h = p_write_1h - p_write
        self.d_reasoning = p_reasoning - p_out
        self.has_1h = bool(self.d_write_1h.any())
        self.has_reasoning = bool(self.d_reasoning.any())


def _daily(row: ScheduleRow) -> tuple[int, int]:
    return row.daily or (0, MS_PER_DAY)


def _inside(daily: tuple[int, int], tod: int) -> bool:
    """Whether ``tod`` (ms after UTC midnight) is in the daily window ``[start, end)``."""
    start, end = daily
    return (tod >= start or tod < end) if end < start else start <= tod < end


def _choose_rows(plan: _Plan, codes: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """Row in force (int64[n]) for each call; ``codes`` int64[n] schedule codes."""
    row = plan.fixed_row[codes]
    timed = np.flatnonzero(row < 0)
    if not len(timed):
        return row
    ts = ts_ms[timed]
    rank = np.searchsorted(plan.breaks, ts, side="right")
    segment = plan.seg_of[codes[timed] * (len(plan.breaks) + 1) + rank]
    if len(plan.tod_edges):
        interval = np.searchsorted(plan.tod_edges, ts % MS_PER_DAY, side="right")
        row[timed] = plan.tod_row[segment * (len(plan.tod_edges) + 1) + interval]
    else:
        row[timed] = plan.fallback[segment]
    return row


def _evaluate(
    plan: _Plan, codes: np.ndarray, ts_ms: np.ndarray, tokens: TokenColumns, cache_hit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cost formula over each call's row and tier; returns ``(cost, unpriced)``."""
    row = _choose_rows(plan, codes, ts_ms)
    # Tier thresholds ascend per row (padding is int64 max), so the level is the number of
    # thresholds the call's input exceeds.
    flat = row * plan.levels
    for level in range(plan.levels - 1):
        flat += tokens.input > plan.thr[row, level]
    # Two reused buffers: the gathered rate and the term of one token class at a time.
    n = len(row)
    rate = np.empty(n)
    term = np.empty(n)
    uncached = tokens.input - tokens.cache_read
    uncached -= tokens.cache_write
    np.maximum(uncached, 0, out=uncached)
    total = uncached.astype(np.float64)
    total *= np.take(plan.p_in, flat, out=rate)
    terms = [(tokens.cache_read, plan.p_read), (tokens.cache_write, plan.p_write)]
    terms.append((tokens.output, plan.p_out))
    # The two sub-classes are billed as the parent's rate plus a difference (zero for models
    # without a separate rate; the term is skipped when no row has one), the subset clamped
    # to its parent.
    if plan.has_1h:
        terms.append((np.minimum(tokens.cache_write_1h, tokens.cache_write), plan.d_write_1h))
    if plan.has_reasoning:
        terms.append((np.minimum(tokens.reasoning, tokens.output), plan.d_reasoning))
    for count, rates in terms:
        np.copyto(term, count, casting="unsafe")  # exact: token counts are far below 2**53
        term *= np.take(rates, flat, out=rate)
        total += term
    total /= TOKENS_PER_PRICE_UNIT
    priced = plan.priced[row]
    free = ~priced
    free |= cache_hit
    total[free] = 0.0
    return total, np.logical_and(~priced, ~cache_hit, out=free)


def _factorize(column: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes ``int64[n]`` into a list of distinct strings; None/NaN map to ``""``."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    labels = [str(u) for u in uniques.tolist()]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(labels), codes)
        labels.append("")
    return codes.astype(np.int64, copy=False), labels


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_ms(at: datetime | date | int) -> int:
    """Epoch ms (floored) of a datetime (naive = UTC), a date (00:00 UTC) or epoch ms."""
    if isinstance(at, int | np.integer):
        return int(at)
    if not isinstance(at, datetime):
        at = datetime(at.year, at.month, at.day, tzinfo=UTC)
    elif at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(milliseconds=1)


def _distinct_pairs(
    model_codes: np.ndarray, n_models: int, provider_codes: np.ndarray, n_providers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``model * n_providers + provider`` ids and each call's index into them."""
    combined = model_codes * n_providers + provider_codes
    space = n_models * n_providers
    # The dense product space is small in practice (tens of models x a few providers): a
    # presence table beats a sort. Fall back to a sort-based unique when it is not small.
    if space > 4 * len(combined) + 64:
        pairs, inverse = np.unique(combined, return_inverse=True)
        return pairs, inverse.reshape(-1)
    present = np.zeros(space, dtype=np.bool_)
    present[combined] = True
    pairs = np.flatnonzero(present)
    remap = np.zeros(space, dtype=np.int64)
    remap[pairs] = np.arange(len(pairs))
    return pairs, remap[combined]


class PriceTable:
    """Model prices (override file first, then the bundled genai-prices snapshot) and the
    batch cost computation, as of each call's event time.

    ``overrides`` maps model id -> :class:`ModelPrice` (all times) or :class:`PriceSchedule`
    (dated); ``use_library=False`` prices only the overrides. ``as_of`` is only the default
    instant of :meth:`resolve` (default: now, UTC); :meth:`costs` prices each call at its own
    ``ts``. Schedules are cached per ``(model, provider)`` for the table's lifetime, so a
    long-running worker asks the library once per distinct pair.
    """

    def __init__(
        self,
        overrides: Mapping[str, PriceOverride] | None = None,
        *,
        use_library: bool = True,
        as_of: datetime | date | None = None,
    ) -> None:
        self._overrides = {k: override_schedule(v) for k, v in (overrides or {}).items()}
        self._overrides_folded = {k.lower(): v for k, v in self._overrides.items()}
        self._use_library = use_library
        self._as_of_ms = _to_ms(datetime.now(tz=UTC) if as_of is None else as_of)
        self._library: LibraryPrices | None = None
        self._cache: dict[tuple[str, str], PriceSchedule | None] = {}
        # Batch path: (model, provider) -> schedule code -> compiled plan.
        self._pair_codes: dict[tuple[str, str], int] = {}
        self._schedule_codes: dict[int, int] = {}  # id(schedule) -> code
        self._schedules: list[PriceSchedule] = []
        self._plan: _Plan | None = None

    def schedule(self, model: str, provider: str = "") -> PriceSchedule | None:
        """Prices of ``model`` (as requested) over event time, with ``provider`` as an
        optional hint; None if nobody prices it. Cached per ``(model, provider)``."""
        key = (model, provider)
        try:
            return self._cache[key]
        except KeyError:
            pass
        schedule = self._overrides.get(model)
        if schedule is None:
            schedule = self._overrides_folded.get(model.lower())
        if schedule is None and self._use_library and model:
            if self._library is None:
                self._library = LibraryPrices()
            schedule = self._library.lookup(model, provider)
        self._cache[key] = schedule
        return schedule

    def resolve(
        self, model: str, provider: str = "", at: datetime | date | int | None = None
    ) -> ModelPrice | None:
        """Price of ``model`` in force at ``at`` (datetime, date = 00:00 UTC, or epoch ms;
        default: the table's ``as_of``); None means unpriced then."""
        schedule = self.schedule(model, provider)
        if schedule is None:
            return None
        return schedule.price_at(self._as_of_ms if at is None else _to_ms(at))

    def _pair_code(self, model: str, provider: str) -> int:
        key = (model, provider)
        code = self._pair_codes.get(key)
        if code is None:
            schedule = self.schedule(model, provider) or _UNPRICED
            code = self._schedule_codes.get(id(schedule))
            if code is None:
                code = len(self._schedules)
                self._schedule_codes[id(schedule)] = code
                self._schedules.append(schedule)
            self._pair_codes[key] = code
        return code

    def _current_plan(self) -> _Plan:
        if self._plan is None or self._plan.n_schedules != len(self._schedules):
            self._plan = _Plan(self._schedules)
        return self._plan

    def costs(
        self,
        models: np.ndarray,
        providers: np.ndarray,
        ts_ms: np.ndarray,
        tokens: TokenColumns,
        cache_hit: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cost of every call of a batch, each at the price in force at its ``ts``.

        Args: ``models``/``providers`` object arrays of ``str`` (provider ``""`` or None when
        absent), ``ts_ms`` int64[n] event time (epoch ms), ``tokens`` int64[n] columns,
        ``cache_hit`` bool[n] (status is cache_hit).

        Returns ``(cost_usd float64[n], unpriced bool[n])``.
        """
        n = len(models)
        if n == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.bool_)
        model_codes, model_labels = _factorize(models)
        provider_codes, provider_labels = _factorize(providers)
        n_prov = len(provider_labels)
        pairs, inverse = _distinct_pairs(model_codes, len(model_labels), provider_codes, n_prov)
        pair_schedule = np.array(
            [
                self._pair_code(model_labels[p // n_prov], provider_labels[p % n_prov])
                for p in pairs.tolist()
            ],
            dtype=np.int64,
        )
        columns = TokenColumns(*(np.asarray(column, dtype=np.int64) for column in tokens))
        return _evaluate(
            self._current_plan(),
            pair_schedule[inverse],
            np.asarray(ts_ms, dtype=np.int64),
            columns,
            np.asarray(cache_hit, dtype=np.bool_),
        )
