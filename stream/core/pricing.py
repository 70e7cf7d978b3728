"""Per-call cost in USD: price lookup once per model, a vectorised formula per batch.

Job
---
Turn the token columns of a micro-batch into ``cost_usd`` (float64) and an ``unpriced`` flag
(bool), following SPEC §3 **Cost**::

    cost = ((input - cache_read - cache_write) * p_in + cache_read * p_cache_read
            + cache_write * p_cache_write + output * p_out) / 1e6

Prices are USD per million tokens. Reasoning tokens are inside ``output`` and priced as output
(the couple of library models with a separate reasoning rate are not special-cased).
``status=cache_hit`` costs 0 (the app's semantic cache answered, no LLM call). A model
without a price costs 0 and is flagged ``unpriced`` -- except on a cache hit, where no price
is needed, so nothing is missing. Uncached input is clamped at 0: the decoder rejects events
whose cache tokens exceed input, and a cost must never be negative even if one slips through.

Where prices come from
----------------------
1. **Override file** (:func:`load_price_overrides`), keyed by model id: an exact key match
   first, then a case-insensitive one. An override applies whatever the provider.
2. **genai-prices bundled snapshot** (``genai_prices.data.providers``, the data shipped inside
   the installed wheel). The table builds its own ``DataSnapshot`` from that list; it never
   calls ``genai_prices.calc_price``/``get_snapshot`` (which would pick up a snapshot
   installed by ``UpdatePrices``) and never starts ``UpdatePrices``, so no price is fetched
   over the network at run time (the unit tests assert this with sockets disabled).

Model matching in the library (``DataSnapshot.find_provider_model``): the model id is
lower-cased; with a provider hint (the event's ``provider``) the provider is found by id or by
its ``provider_match`` aliases (e.g. ``vertex`` -> ``google``), then the model by that
provider's match rules (``equals``/``starts_with``/regex clauses, so dated snapshots such as
``gpt-4o-2024-08-06`` match ``gpt-4o``; compact dates ``-20251211`` are normalised), with one
step of the provider's fallbacks (Azure -> OpenAI/Anthropic/..., Google -> Anthropic). If the
hint names an unknown provider or that provider does not list the model, the lookup is retried
without the hint: the provider is then inferred from the model id (``provider.model_match``).
No match at all -> unpriced.

Which price is taken
--------------------
The current list price when the table is built (``as_of``, default: now, UTC): for models with
dated conditional prices, the last one whose start date has passed. The price in force at each
call's own event time is **not** modelled (replaying old traffic uses today's prices).
Time-of-day prices (DeepSeek's peak/off-peak windows) are not applied per call either: the
price used is the one in force for the larger part of the UTC day. Request-context variants
(``service_tier`` priority/flex, batch processing) are ignored -- events do not carry them --
so the standard tier is used. Only the four text-token rates are used; per-request, audio,
image, web-search fees are out of scope. A missing cache rate falls back to the input rate (as
the library itself bills such tokens); a model with neither an input nor an output rate is
unpriced.

Tiers: the library's ``TieredPrices`` are threshold ("cliff") prices keyed on the call's total
input tokens -- above the threshold, the tier rate applies to *all* tokens of that call. Rate
keys may carry different thresholds; :class:`PriceTier` merges them into one ascending list of
thresholds with all four rates at each, so the choice per call is one comparison chain on
``input_tokens`` (strictly greater than the threshold, as in the library).

Performance: :meth:`PriceTable.costs` factorises the model and provider columns of the batch
(pandas' hash factorisation), resolves each distinct pair once (cached across batches),
gathers per-event rates with numpy fancy indexing and evaluates the formula as whole-array
operations -- no Python per event.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
import pandas as pd
from genai_prices import types as gp
from genai_prices.data_snapshot import DataSnapshot

from .errors import ConfigError

__all__ = [
    "ModelPrice",
    "PriceTable",
    "PriceTier",
    "cost_formula",
    "load_price_overrides",
]

TOKENS_PER_PRICE_UNIT = 1_000_000.0
"""Prices are quoted per million tokens."""

_OVERRIDE_KEYS = ("input", "output", "cache_read", "cache_write", "context_window", "tiers")
_TIER_KEYS = ("above_input_tokens", "input", "output", "cache_read", "cache_write")
_NO_THRESHOLD = np.iinfo(np.int64).max


class PriceTier(msgspec.Struct, frozen=True):
    """Rates (USD per million tokens) for a whole call whose ``input_tokens`` exceed
    ``above_input_tokens`` (strictly greater, like the providers' "> 200k tokens" tiers)."""

    above_input_tokens: int
    input: float
    output: float
    cache_read: float
    cache_write: float


class ModelPrice(msgspec.Struct, frozen=True):
    """Resolved price of one model, USD per million tokens.

    ``tiers``: the tier with the highest threshold the call's input exceeds wins, else the
    base rates apply (loaders return them sorted by threshold). ``source`` is ``"override"`` or
    ``"genai-prices"``; ``matched`` says what the library matched (``"provider:model-id"``),
    empty for overrides.
    """

    input: float
    output: float
    cache_read: float
    cache_write: float
    context_window: int | None = None
    tiers: tuple[PriceTier, ...] = ()
    source: str = "override"
    matched: str = ""

    def rates_for(self, input_tokens: int) -> tuple[float, float, float, float]:
        """``(input, output, cache_read, cache_write)`` rates for a call with this many input
        tokens (scalar path; the batch path is :meth:`PriceTable.costs`)."""
        rates = (self.input, self.output, self.cache_read, self.cache_write)
        best = -1
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens > best:
                best = tier.above_input_tokens
                rates = (tier.input, tier.output, tier.cache_read, tier.cache_write)
        return rates


def cost_formula(
    price: ModelPrice | None,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    *,
    cache_hit: bool = False,
) -> float:
    """Cost in USD of one call (scalar helper, same arithmetic as :meth:`PriceTable.costs`).

    Returns 0.0 for a cache hit or an unpriced model (``price is None``).
    """
    if cache_hit or price is None:
        return 0.0
    p_in, p_out, p_cr, p_cw = price.rates_for(input_tokens)
    uncached = float(max(input_tokens - cache_read_tokens - cache_write_tokens, 0))
    total = (
        uncached * p_in
        + float(cache_read_tokens) * p_cr
        + float(cache_write_tokens) * p_cw
        + float(output_tokens) * p_out
    )
    return total / TOKENS_PER_PRICE_UNIT


# --------------------------------------------------------------------------- override file


def _number(value: object, where: str) -> float:
    # bool is an int subclass; a price of `true` is a typo, not 1 USD.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    return result


def _tier_from_json(raw: object, where: str, base_input: float) -> PriceTier:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    unknown = sorted(set(raw) - set(_TIER_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(_TIER_KEYS)}")
    threshold = raw.get("above_input_tokens")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"{where}.above_input_tokens must be an integer >= 0")
    rate_in = _number(raw["input"], f"{where}.input") if "input" in raw else base_input
    if "output" not in raw:
        raise ValueError(f"{where}.output is required")
    return PriceTier(
        above_input_tokens=threshold,
        input=rate_in,
        output=_number(raw["output"], f"{where}.output"),
        cache_read=_number(raw.get("cache_read", rate_in), f"{where}.cache_read"),
        cache_write=_number(raw.get("cache_write", rate_in), f"{where}.cache_write"),
    )


def _override_from_json(model: str, raw: object) -> ModelPrice:
    where = f"models[{model!r}]"
    if not isinstance(raw, dict):
        raise ValueError(f'{where} must be an object like {{"input": 0.15, "output": 0.6}}')
    unknown = sorted(set(raw) - set(_OVERRIDE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(_OVERRIDE_KEYS)}")
    for required in ("input", "output"):
        if required not in raw:
            raise ValueError(f"{where}.{required} is required (USD per million tokens)")
    rate_in = _number(raw["input"], f"{where}.input")
    context_window = raw.get("context_window")
    if context_window is not None and (
        isinstance(context_window, bool)
        or not isinstance(context_window, int)
        or context_window <= 0
    ):
        raise ValueError(f"{where}.context_window must be a positive integer")
    raw_tiers = raw.get("tiers", [])
    if not isinstance(raw_tiers, list):
        raise ValueError(f"{where}.tiers must be a list")
    tiers = tuple(
        sorted(
            (_tier_from_json(t, f"{where}.tiers[{i}]", rate_in) for i, t in enumerate(raw_tiers)),
            key=lambda tier: tier.above_input_tokens,
        )
    )
    if len({t.above_input_tokens for t in tiers}) != len(tiers):
        raise ValueError(f"{where}.tiers has a repeated above_input_tokens")
    return ModelPrice(
        input=rate_in,
        output=_number(raw["output"], f"{where}.output"),
        cache_read=_number(raw.get("cache_read", rate_in), f"{where}.cache_read"),
        cache_write=_number(raw.get("cache_write", rate_in), f"{where}.cache_write"),
        context_window=context_window,
        tiers=tiers,
        source="override",
    )


def load_price_overrides(path: str | Path) -> dict[str, ModelPrice]:
    """Read a price override file: ``{"models": {"<model>": {"input": 0.15, "output": 0.6,
    "cache_read": 0.075, "cache_write": 0.1875, "context_window": 128000}}}``.

    Rates are USD per million tokens; ``cache_read``/``cache_write`` default to ``input``.
    Optional ``"tiers": [{"above_input_tokens": 200000, "input": .., "output": ..}]`` adds
    threshold prices. Raises :class:`ConfigError` with one line naming the file and the fault.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"price file {path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"price file {path}: not UTF-8 text") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"price file {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    try:
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
            raise ValueError('expected an object {"models": {"<model>": {...}}}')
        extra = sorted(set(doc) - {"models"})
        if extra:
            raise ValueError(f"unknown top-level key(s) {extra}; only 'models' is allowed")
        return {str(model): _override_from_json(model, raw) for model, raw in doc["models"].items()}
    except ValueError as exc:
        raise ConfigError(f"price file {path}: {exc}") from exc


# --------------------------------------------------------------------------- library prices

_TEXT_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")


def _tod_seconds(start: time, end: time) -> int:
    """Length in seconds of a daily [start, end) window that may wrap midnight."""
    day = 86_400
    s = start.hour * 3600 + start.minute * 60 + start.second
    e = end.hour * 3600 + end.minute * 60 + end.second
    return (e - s) % day


def _select_library_prices(prices: Any, as_of: datetime) -> Any:
    """The genai-prices ``ModelPrice`` in force at ``as_of`` (see module docstring).

    ``prices`` is a ``ModelPrice`` or a list of ``ConditionalPrice`` (later entries win).
    """
    if not isinstance(prices, list):
        return prices
    base_index = 0
    for index in range(len(prices) - 1, -1, -1):
        constraint = prices[index].constraint
        if constraint is None or (
            isinstance(constraint, gp.StartDateConstraint) and constraint.active(as_of)
        ):
            base_index = index
            break
    chosen = prices[base_index].prices
    # Time-of-day entries later in the list override the base during their window; take the
    # rates covering the larger part of the day so the result does not depend on the clock.
    windows: list[tuple[Any, int]] = []  # (rates, seconds per day), identical rates pooled
    for entry in prices[base_index + 1 :]:
        constraint = entry.constraint
        if not isinstance(constraint, gp.TimeOfDateConstraint):
            continue
        seconds = _tod_seconds(constraint.start_time, constraint.end_time)
        for i, (rates, total) in enumerate(windows):
            if rates == entry.prices:
                windows[i] = (rates, total + seconds)
                break
        else:
            windows.append((entry.prices, seconds))
    if windows:
        rates, seconds = max(windows, key=lambda window: window[1])
        if seconds > 43_200:
            chosen = rates
    return chosen


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


def _convert_library_price(
    library_price: Any, context_window: int | None, matched: str
) -> ModelPrice | None:
    """Our :class:`ModelPrice` from a genai-prices ``ModelPrice`` (None if not token-priced)."""
    values = {key: getattr(library_price, key, None) for key in _TEXT_KEYS}
    if values["input_mtok"] is None and values["output_mtok"] is None:
        return None
    thresholds = sorted(
        {
            tier.start
            for value in values.values()
            if isinstance(value, gp.TieredPrices)
            for tier in value.tiers
        }
    )

    def rates(threshold: int | None) -> tuple[float, float, float, float]:
        rate_in = _rate_at(values["input_mtok"], threshold) or 0.0
        rate_out = _rate_at(values["output_mtok"], threshold) or 0.0
        rate_cr = _rate_at(values["cache_read_mtok"], threshold)
        rate_cw = _rate_at(values["cache_write_mtok"], threshold)
        return (
            rate_in,
            rate_out,
            rate_in if rate_cr is None else rate_cr,
            rate_in if rate_cw is None else rate_cw,
        )

    base = rates(None)
    tiers = tuple(PriceTier(threshold, *rates(threshold)) for threshold in thresholds)
    return ModelPrice(
        input=base[0],
        output=base[1],
        cache_read=base[2],
        cache_write=base[3],
        context_window=context_window,
        tiers=tiers,
        source="genai-prices",
        matched=matched,
    )


class _Library:
    """The bundled genai-prices snapshot, loaded on first use (~0.1 s)."""

    def __init__(self, as_of: datetime) -> None:
        # The bundled data is a 1.6 MB module; import it only when a lookup is needed.
        providers = importlib.import_module("genai_prices.data").providers
        # Our own snapshot over the bundled provider list: never the process-wide custom
        # snapshot an UpdatePrices task may have installed, never a download.
        self._snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        self._as_of = as_of

    def lookup(self, model: str, provider: str) -> ModelPrice | None:
        found = None
        attempts = ((provider or None), None) if provider else (None,)
        for hint in attempts:
            try:
                found = self._snapshot.find_provider_model(model, None, hint, None)
                break
            except LookupError:
                continue
        if found is None:
            return None
        library_provider, info = found
        chosen = _select_library_prices(info.prices, self._as_of)
        return _convert_library_price(
            chosen, info.context_window, f"{library_provider.id}:{info.id}"
        )


# --------------------------------------------------------------------------- the table


class _Rates:
    """Per-key price columns for a set of distinct (model, provider) pairs, shape ``(k,)``
    (``thr``/tier rates shape ``(k, L)``, L = most tiers of any pair, padded)."""

    __slots__ = ("cr", "cw", "inp", "out", "priced", "t_cr", "t_cw", "t_inp", "t_out", "thr")

    def __init__(self, prices: list[ModelPrice | None]) -> None:
        k = len(prices)
        n_tiers = max((len(p.tiers) for p in prices if p is not None), default=0)
        self.inp = np.zeros(k)
        self.out = np.zeros(k)
        self.cr = np.zeros(k)
        self.cw = np.zeros(k)
        self.priced = np.zeros(k, dtype=np.bool_)
        self.thr = np.full((k, n_tiers), _NO_THRESHOLD, dtype=np.int64)
        self.t_inp = np.zeros((k, n_tiers))
        self.t_out = np.zeros((k, n_tiers))
        self.t_cr = np.zeros((k, n_tiers))
        self.t_cw = np.zeros((k, n_tiers))
        for i, price in enumerate(prices):
            if price is None:
                continue
            self.priced[i] = True
            self.inp[i], self.out[i] = price.input, price.output
            self.cr[i], self.cw[i] = price.cache_read, price.cache_write
            # Ascending thresholds: _evaluate relies on it.
            for j, tier in enumerate(sorted(price.tiers, key=lambda t: t.above_input_tokens)):
                self.thr[i, j] = tier.above_input_tokens
                self.t_inp[i, j], self.t_out[i, j] = tier.input, tier.output
                self.t_cr[i, j], self.t_cw[i, j] = tier.cache_read, tier.cache_write


def _factorize(column: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes ``int64[n]`` into a list of distinct strings; None/NaN map to ``""``."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    labels = [str(u) for u in uniques.tolist()]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(labels), codes)
        labels.append("")
    return codes.astype(np.int64, copy=False), labels


class PriceTable:
    """Model prices (override file first, then the bundled genai-prices snapshot) and the
    batch cost computation.

    ``overrides`` maps model id -> :class:`ModelPrice`; ``use_library=False`` prices only the
    overrides (everything else is unpriced). ``as_of`` fixes which dated library price is
    "current" (default: now, UTC). Resolutions are cached per ``(model, provider)`` for the
    table's lifetime, so a long-running worker asks the library once per distinct pair.
    """

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        use_library: bool = True,
        as_of: datetime | date | None = None,
    ) -> None:
        self._overrides: dict[str, ModelPrice] = dict(overrides or {})
        self._overrides_folded = {k.lower(): v for k, v in self._overrides.items()}
        self._use_library = use_library
        if as_of is None:
            as_of = datetime.now(tz=UTC)
        elif not isinstance(as_of, datetime):
            as_of = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
        self._as_of: datetime = as_of
        self._library: _Library | None = None
        self._cache: dict[tuple[str, str], ModelPrice | None] = {}

    def resolve(self, model: str, provider: str = "") -> ModelPrice | None:
        """Price of ``model`` (as requested), with ``provider`` as an optional hint; None means
        unpriced. Cached per ``(model, provider)``."""
        key = (model, provider)
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._overrides.get(model)
        if price is None:
            price = self._overrides_folded.get(model.lower())
        if price is None and self._use_library and model:
            if self._library is None:
                self._library = _Library(self._as_of)
            price = self._library.lookup(model, provider)
        self._cache[key] = price
        return price

    def _rates_for_pairs(
        self, pair_ids: np.ndarray, model_labels: list[str], provider_labels: list[str]
    ) -> _Rates:
        # pair id = model code * n_providers + provider code (see costs()).
        n_prov = len(provider_labels)
        return _Rates(
            [
                self.resolve(model_labels[c // n_prov], provider_labels[c % n_prov])
                for c in pair_ids.tolist()
            ]
        )

    def costs(  # noqa: PLR0917 - the columns of a batch, in SPEC order
        self,
        models: np.ndarray,
        providers: np.ndarray,
        input_tokens: np.ndarray,
        output_tokens: np.ndarray,
        cache_read_tokens: np.ndarray,
        cache_write_tokens: np.ndarray,
        cache_hit: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cost of every call of a batch.

        Args: ``models``/``providers`` object arrays of ``str`` (provider ``""`` or None when
        absent), token columns ``int64[n]``, ``cache_hit`` ``bool[n]`` (status is cache_hit).

        Returns ``(cost_usd float64[n], unpriced bool[n])``.
        """
        n = len(models)
        if n == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.bool_)
        model_codes, model_labels = _factorize(models)
        provider_codes, provider_labels = _factorize(providers)
        # One code per (model, provider) pair. The dense product space is small in practice
        # (tens of models x a few providers); fall back to a sort-based unique when it is not.
        n_prov = len(provider_labels)
        combined = model_codes * n_prov + provider_codes
        space = len(model_labels) * n_prov
        if space <= 4 * n + 64:
            present = np.zeros(space, dtype=np.bool_)
            present[combined] = True
            pair_ids = np.flatnonzero(present)
            rates = self._rates_for_pairs(pair_ids, model_labels, provider_labels)
            remap = np.zeros(space, dtype=np.int64)
            remap[pair_ids] = np.arange(len(pair_ids))
            codes = remap[combined]
        else:
            pair_ids, codes = np.unique(combined, return_inverse=True)
            rates = self._rates_for_pairs(pair_ids, model_labels, provider_labels)
        tokens = _Tokens(
            np.asarray(input_tokens, dtype=np.int64),
            np.asarray(output_tokens, dtype=np.int64),
            np.asarray(cache_read_tokens, dtype=np.int64),
            np.asarray(cache_write_tokens, dtype=np.int64),
        )
        return _evaluate(rates, codes, tokens, np.asarray(cache_hit, dtype=np.bool_))


class _Tokens(NamedTuple):
    """The token columns of a batch, ``int64[n]`` each."""

    input: np.ndarray
    output: np.ndarray
    cache_read: np.ndarray
    cache_write: np.ndarray


def _evaluate(
    rates: _Rates, codes: np.ndarray, tokens: _Tokens, cache_hit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cost formula over gathered per-event rates; ``codes`` int64[n] index ``rates``."""
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens = tokens
    p_in = rates.inp[codes]
    p_out = rates.out[codes]
    p_cr = rates.cr[codes]
    p_cw = rates.cw[codes]
    # Tier thresholds ascend per pair (padding is int64 max), so applying them in order
    # leaves each call with the rates of the highest threshold it exceeds.
    for level in range(rates.thr.shape[1]):
        above = input_tokens > rates.thr[codes, level]
        if above.any():
            hit = codes[above]
            p_in[above] = rates.t_inp[hit, level]
            p_out[above] = rates.t_out[hit, level]
            p_cr[above] = rates.t_cr[hit, level]
            p_cw[above] = rates.t_cw[hit, level]
    uncached = np.maximum(input_tokens - cache_read_tokens - cache_write_tokens, 0)
    total = uncached.astype(np.float64) * p_in
    total += cache_read_tokens.astype(np.float64) * p_cr
    total += cache_write_tokens.astype(np.float64) * p_cw
    total += output_tokens.astype(np.float64) * p_out
    total /= TOKENS_PER_PRICE_UNIT
    priced = rates.priced[codes]
    free = cache_hit | ~priced
    total[free] = 0.0
    return total, ~priced & ~cache_hit
