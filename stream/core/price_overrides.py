"""The price override file: parse and validate it into prices and dated price schedules.

Format (SPEC §3 Cost), rates in USD per million tokens::

    {"models": {
        "gpt-4o-mini": {"input": 0.15, "output": 0.6, "cache_read": 0.075,
                        "cache_write": 0.1875, "context_window": 128000},
        "in-house-70b": [
            {"from": "2026-01-01", "input": 0.2, "output": 0.8},
            {"from": "2026-03-13T00:00:00Z", "input": 0.1, "output": 0.4,
             "tiers": [{"above_input_tokens": 128000, "input": 0.2, "output": 0.8}]}
        ]
    }}

A model's entry is one price object (in force at all times) or a list of price objects each
with a ``"from"`` instant (an RFC 3339 date-time with offset, or a date ``YYYY-MM-DD`` meaning
00:00 UTC), each in force from its instant until the next one's. **Before the first
``"from"`` the model is unpriced** for that call (cost 0, flagged ``unpriced``): the file says
nothing about that period, and guessing the earliest price would silently bill history at a
price nobody stated. Dates must be strictly ascending. A single object may carry ``"from"``
too; it is then a one-entry list.

Per object: ``input`` and ``output`` are required; ``cache_read``/``cache_write`` default to
``input``, ``cache_write_1h`` (long-TTL cache writes) to ``cache_write``; optional
``context_window`` and ``tiers`` (threshold prices on the call's input tokens, each tier's
missing rates defaulting the same way from the tier's own ``input``). Every fault is one
:class:`ConfigError` line naming the file and the offending key.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime
from pathlib import Path

from .errors import ConfigError
from .price_types import ModelPrice, PriceSchedule, PriceTier, ScheduleRow
from .rfc3339 import INVALID, parse_rfc3339_ms

__all__ = ["PriceOverride", "load_price_overrides", "override_schedule"]

PriceOverride = ModelPrice | PriceSchedule
"""One model's override: a price at all times, or a dated schedule."""

_PRICE_KEYS = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "context_window",
    "tiers",
)
_DATED_KEYS = ("from", *_PRICE_KEYS)
_TIER_KEYS = (
    "above_input_tokens",
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
)
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _number(value: object, where: str) -> float:
    # bool is an int subclass; a price of `true` is a typo, not 1 USD.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    return result


def _optional_rate(raw: dict[str, object], key: str, where: str) -> float | None:
    return _number(raw[key], f"{where}.{key}") if key in raw else None


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
    cache_write = _number(raw.get("cache_write", rate_in), f"{where}.cache_write")
    return PriceTier(
        above_input_tokens=threshold,
        input=rate_in,
        output=_number(raw["output"], f"{where}.output"),
        cache_read=_number(raw.get("cache_read", rate_in), f"{where}.cache_read"),
        cache_write=cache_write,
        cache_write_1h=_optional_rate(raw, "cache_write_1h", where),
    )


def _price_from_json(raw: dict[str, object], where: str) -> ModelPrice:
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
        cache_write_1h=_optional_rate(raw, "cache_write_1h", where),
    )


def _from_ms(value: object, where: str) -> int:
    """Epoch ms of a ``"from"`` value: RFC 3339 date-time with offset, or a UTC date."""
    hint = "an RFC 3339 date-time with offset (2026-03-13T00:00:00Z) or a date (2026-03-13)"
    if not isinstance(value, str):
        raise ValueError(f"{where} must be {hint}, got {type(value).__name__}")
    if _DATE_ONLY.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{where} must be {hint}, got {value!r}") from None
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000
    parsed = int(parse_rfc3339_ms([value])[0])
    if parsed == INVALID:
        raise ValueError(f"{where} must be {hint}, got {value!r}")
    return parsed


def _dated_from_json(model: str, raw: list[object]) -> PriceSchedule:
    where = f"models[{model!r}]"
    if not raw:
        raise ValueError(f"{where} is an empty list; give at least one dated price")
    # Row 0 is "unpriced": by the schedule's precedence (last valid row wins, else the first)
    # it is what applies before the first dated entry.
    rows = [ScheduleRow(None)]
    previous: tuple[int, str] | None = None
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f'{at} must be an object like {{"from": "2026-01-01", ...}}')
        unknown = sorted(set(entry) - set(_DATED_KEYS))
        if unknown:
            raise ValueError(f"{at}: unknown key(s) {unknown}; allowed: {list(_DATED_KEYS)}")
        if "from" not in entry:
            raise ValueError(f"{at}.from is required in a list of dated prices")
        start = _from_ms(entry["from"], f"{at}.from")
        if previous is not None and start <= previous[0]:
            raise ValueError(
                f"{at}.from {entry['from']!r} is not after the previous entry's "
                f"{previous[1]!r}; list dated prices in strictly ascending order"
            )
        previous = (start, str(entry["from"]))
        rows.append(ScheduleRow(_price_from_json(entry, at), from_ms=start))
    return PriceSchedule(tuple(rows))


def _override_from_json(model: str, raw: object) -> PriceOverride:
    where = f"models[{model!r}]"
    if isinstance(raw, list):
        return _dated_from_json(model, raw)
    if not isinstance(raw, dict):
        raise ValueError(
            f'{where} must be an object like {{"input": 0.15, "output": 0.6}} '
            f'or a list of them each with a "from" date'
        )
    if "from" in raw:
        return _dated_from_json(model, [raw])
    unknown = sorted(set(raw) - set(_PRICE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(_PRICE_KEYS)}")
    return _price_from_json(raw, where)


def override_schedule(override: PriceOverride) -> PriceSchedule:
    """The schedule of an override (a plain price is in force at all times)."""
    if isinstance(override, PriceSchedule):
        return override
    return PriceSchedule.fixed(override)


def load_price_overrides(path: str | Path) -> dict[str, PriceOverride]:
    """Read a price override file (format in the module docstring).

    Returns model id -> :class:`ModelPrice` (one price at all times) or :class:`PriceSchedule`
    (a dated list; unpriced before its first ``"from"``). Raises :class:`ConfigError` with one
    line naming the file and the fault.
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
