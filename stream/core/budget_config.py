"""Budget files: rules (``limit_usd`` over a ``window``, ``soft`` and ``hard`` levels) per tenant.

``{"default": [...], "tenants": {"acme": [{"limit_usd": 50, "window": "24h", "soft": [0.5,
0.8], "hard": 1.0}]}}``: ``default`` applies to every tenant not listed; a listed tenant
gets only its own rules (an empty list: no budget). Validation errors are one actionable
line naming the file and the rule (:class:`~.errors.ConfigError`).
"""

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

__all__ = [
    "CAP_UNITS",
    "MAX_LEVELS",
    "UNITS_PER_USD",
    "BudgetConfig",
    "BudgetRule",
    "Window",
    "flat_rules",
    "load_budgets",
    "parse_budgets",
]

Window = Literal["1h", "24h", "7d", "30d", "day", "month"]

UNITS_PER_USD = 10_000_000_000
"""Money unit inside budgets: 1e-10 USD, as int64."""

CAP_UNITS = 1 << 62
"""Largest amount one event or one sliding bucket carries, and the base of the two-word
window sum (``hi * 2**62 + lo``): ``a + b`` of two capped values stays inside int64."""

MAX_LEVELS = 62
"""Levels per rule: a rule's fired levels are one int64 bit mask."""


class BudgetRule(BaseModel):
    """One budget: ``limit_usd`` over ``window``, alerting at ``soft`` and ``hard`` fractions.

    ``soft`` and ``hard`` are fractions of ``limit_usd``; reaching ``hard`` sets the status
    ``exceeded``. ``id`` defaults to ``f"{window}-{limit_usd:g}"`` and is filled in on load.
    """

    model_config = ConfigDict(extra="forbid")

    limit_usd: float = Field(gt=0, allow_inf_nan=False)
    window: Window
    soft: list[float] = Field(default_factory=list, max_length=MAX_LEVELS - 1)
    hard: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    id: str | None = Field(default=None, min_length=1)

    @field_validator("soft")
    @classmethod
    def _check_soft(cls, soft: list[float]) -> list[float]:
        for f in soft:
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"soft levels must be finite fractions > 0, got {f}")
        if len(set(soft)) != len(soft):
            raise ValueError(f"soft levels must be distinct, got {soft}")
        return sorted(soft)

    @model_validator(mode="after")
    def _check_levels(self) -> "BudgetRule":
        if self.soft and self.soft[-1] >= self.hard:
            raise ValueError(
                f"every soft level must be below hard={self.hard}, got soft={self.soft}"
            )
        limit_units = round(self.limit_usd * UNITS_PER_USD)
        if limit_units < 1:
            raise ValueError(f"limit_usd={self.limit_usd} is below 1e-10 USD")
        if round(self.hard * limit_units) >= CAP_UNITS:
            raise ValueError(
                f"limit_usd x hard = {self.limit_usd * self.hard:g} USD is too large "
                f"(must be below {CAP_UNITS / UNITS_PER_USD:.0f} USD)"
            )
        if self.id is None:
            self.id = f"{self.window}-{self.limit_usd:g}"
        return self

    @property
    def budget_id(self) -> str:
        """The budget's id (``id``, or its default)."""
        return self.id if self.id is not None else f"{self.window}-{self.limit_usd:g}"

    @property
    def levels(self) -> list[float]:
        """Alert levels as fractions of the limit, ascending: soft levels then hard."""
        return [*self.soft, self.hard]

    def threshold_units(self) -> list[int]:
        """Thresholds of :attr:`levels` in 1e-10 USD units: ``round(fraction * limit)``, >= 1."""
        limit_units = round(self.limit_usd * UNITS_PER_USD)
        return [max(1, round(f * limit_units)) for f in self.levels]


def _check_unique_ids(rules: list[BudgetRule], where: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        bid = rule.budget_id
        if bid in seen:
            raise ValueError(
                f'{where}: duplicate budget id {bid!r} (give each rule a distinct "id")'
            )
        seen.add(bid)


class BudgetConfig(BaseModel):
    """Budget rules: ``default`` for every tenant, ``tenants`` to replace them per tenant."""

    model_config = ConfigDict(extra="forbid")

    default: list[BudgetRule] = Field(default_factory=list)
    tenants: dict[str, list[BudgetRule]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_ids(self) -> "BudgetConfig":
        _check_unique_ids(self.default, "default")
        for tenant, rules in self.tenants.items():
            _check_unique_ids(rules, f"tenants.{tenant}")
        return self

    def rules_for(self, tenant_id: str) -> list[BudgetRule]:
        """The tenant's own rules if it is listed (even an empty list), else ``default``."""
        return self.tenants.get(tenant_id, self.default)


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_budgets(data: object, source: str = "budget config") -> BudgetConfig:
    """Validate already-decoded budget JSON; raise :class:`ConfigError` naming ``source``."""
    try:
        return BudgetConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_validation_error(err)}") from None


def load_budgets(path: str | Path) -> BudgetConfig:
    """Read and validate a budget file (JSON, see the module doc).

    Raises :class:`ConfigError` with one line naming the file and what is wrong: missing or
    unreadable file, invalid JSON (with line and column), or a rule that fails validation
    (with its location, e.g. ``tenants.acme.0.soft``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"budget file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"budget file {p}: cannot read it ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"budget file {p}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    return parse_budgets(data, f"budget file {p}")


def flat_rules(config: BudgetConfig) -> list[BudgetRule]:
    """Rules in flat-table order: default, then each listed tenant's, in file order."""
    out = list(config.default)
    for trules in config.tenants.values():
        out.extend(trules)
    return out
