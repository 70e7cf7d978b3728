"""The price override file: plain and dated entries, their parsing and one-line errors, and
how a table prices calls with them (before the first date, at a boundary, after)."""

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from genai_prices import Usage, calc_price

from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.core.pricing import (
    ModelPrice,
    PriceSchedule,
    PriceTable,
    PriceTier,
    TokenColumns,
    load_price_overrides,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_pricing import Call, reference_costs  # noqa: E402

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
AS_OF_MS = (AS_OF - EPOCH) // timedelta(milliseconds=1)
YEAR_2000_MS = 946_684_800_000
YEAR_2100_MS = 4_102_444_800_000


def ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


def batch_costs(table: PriceTable, batch: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    """``table.costs`` over a list of calls."""

    def col(values: list[int]) -> np.ndarray:
        return np.array(values, dtype=np.int64)

    models = np.empty(len(batch), dtype=object)
    models[:] = [c.model for c in batch]
    providers = np.empty(len(batch), dtype=object)
    providers[:] = [c.provider for c in batch]
    tokens = TokenColumns(
        col([c.input_tokens for c in batch]),
        col([c.output_tokens for c in batch]),
        col([c.cache_read_tokens for c in batch]),
        col([c.cache_write_tokens for c in batch]),
        col([c.cache_write_1h_tokens for c in batch]),
        col([c.reasoning_tokens for c in batch]),
    )
    cache_hit = np.array([c.cache_hit for c in batch], dtype=np.bool_)
    return table.costs(models, providers, col([c.ts_ms for c in batch]), tokens, cache_hit)


def library_total(call: Call) -> float:
    """What genai-prices charges for ``call`` at its time."""
    usage = Usage(input_tokens=call.input_tokens, output_tokens=call.output_tokens)
    at = EPOCH + timedelta(milliseconds=call.ts_ms)
    return float(calc_price(usage, call.model or "", genai_request_timestamp=at).total_price)


def write(tmp_path: Path, doc: object | str) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_load_price_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "models": {
                "gpt-4o-mini": {
                    "input": 0.15, "output": 0.6, "cache_read": 0.075, "cache_write": 0.1875,
                    "context_window": 128000,
                },
                "tiny": {"input": 1, "output": 2},
                "tiered": {
                    "input": 1, "output": 2,
                    "tiers": [
                        {"above_input_tokens": 1000, "input": 2, "output": 4, "cache_read": 0.5}
                    ],
                },
            }
        },
    )  # fmt: skip
    prices = load_price_overrides(path)
    assert prices["gpt-4o-mini"] == ModelPrice(0.15, 0.6, 0.075, 0.1875, 128000)
    assert prices["gpt-4o-mini"].source == "override"
    # Missing cache prices fall back to input.
    assert prices["tiny"] == ModelPrice(1.0, 2.0, 1.0, 1.0)
    assert prices["tiered"].tiers == (PriceTier(1000, 2.0, 4.0, 0.5, 2.0),)
    table = PriceTable(prices, as_of=AS_OF)
    cost, _ = batch_costs(
        table,
        [Call("tiny", "", AS_OF_MS, 1000, 10), Call("tiered", "", AS_OF_MS, 1001, 10, 1)],
    )
    assert cost.tolist() == pytest.approx([(1000 + 20) / 1e6, (1000 * 2 + 0.5 + 40) / 1e6])


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("{not json", "invalid JSON at line 1"),
        ([1, 2], "expected an object"),
        ({"model": {}}, "expected an object"),
        ({"models": [], "x": 1}, "expected an object"),
        ({"models": {}, "extra": 1}, "unknown top-level key"),
        ({"models": {"m": 1.5}}, "must be an object"),
        ({"models": {"m": {"input": 1}}}, "output is required"),
        ({"models": {"m": {"output": 1}}}, "input is required"),
        ({"models": {"m": {"input": -1, "output": 1}}}, ">= 0"),
        ({"models": {"m": {"input": "0.1", "output": 1}}}, "must be a number"),
        ({"models": {"m": {"input": True, "output": 1}}}, "must be a number"),
        ({"models": {"m": {"input": 1, "output": 1, "ouput": 1}}}, "unknown key"),
        ({"models": {"m": {"input": 1, "output": 1, "context_window": 0}}}, "context_window"),
        ({"models": {"m": {"input": 1, "output": 1, "context_window": 1.5}}}, "context_window"),
        ({"models": {"m": {"input": 1, "output": 1, "tiers": {}}}}, "tiers must be a list"),
        (
            {"models": {"m": {"input": 1, "output": 1, "tiers": [{"output": 2}]}}},
            "above_input_tokens",
        ),
        (
            {"models": {"m": {"input": 1, "output": 1, "tiers": [
                {"above_input_tokens": 5, "output": 2}, {"above_input_tokens": 5, "output": 3}]}}},
            "repeated",
        ),
    ],
)  # fmt: skip
def test_price_file_errors(tmp_path: Path, doc: object, fragment: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_price_overrides(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert fragment in message


def test_price_file_missing_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_price_overrides(tmp_path / "absent.json")
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"models": {"caf\xe9": {"input": 1, "output": 1}}}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_price_overrides(bad)


DATED = {
    "models": {
        "in-house": [
            {"from": "2026-01-01", "input": 1, "output": 2},
            {"from": "2026-03-13T12:00:00+02:00", "input": 3, "output": 4, "cache_write": 5},
            {
                "from": "2026-06-01T00:00:00.250Z", "input": 6, "output": 7, "cache_write": 8,
                "cache_write_1h": 9,
                "tiers": [{"above_input_tokens": 1000, "input": 10, "output": 11}],
            },
        ],
        # The library prices this model; the override wins at all times, before its date too.
        "claude-opus-4-6": [{"from": "2026-06-01T00:00:00Z", "input": 1, "output": 1}],
        "single": {"from": "2026-02-01", "input": 1, "output": 1},
        "plain": {"input": 1, "output": 1},
    }
}  # fmt: skip


def test_dated_override_prices_each_call_by_its_date(tmp_path: Path) -> None:
    prices = load_price_overrides(write(tmp_path, DATED))
    assert isinstance(prices["in-house"], PriceSchedule)
    assert isinstance(prices["plain"], ModelPrice)
    table = PriceTable(prices)
    second = ms(datetime(2026, 3, 13, 10, tzinfo=UTC))  # 12:00 at +02:00
    third = ms(datetime(2026, 6, 1, tzinfo=UTC)) + 250
    # (ts, expected USD for 1000 input of which 100 cache writes (40 of them 1h), 10 output)
    cases = [
        (ms(datetime(2025, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)), None),  # before the first
        (ms(datetime(2026, 1, 1, tzinfo=UTC)), (900 * 1 + 100 * 1 + 10 * 2) / 1e6),
        (second - 1, (900 * 1 + 100 * 1 + 10 * 2) / 1e6),
        (second, (900 * 3 + 100 * 5 + 10 * 4) / 1e6),  # 1h writes fall back to cache_write
        (third - 1, (900 * 3 + 100 * 5 + 10 * 4) / 1e6),
        (third, (900 * 6 + 60 * 8 + 40 * 9 + 10 * 7) / 1e6),
        (YEAR_2100_MS, (900 * 6 + 60 * 8 + 40 * 9 + 10 * 7) / 1e6),
    ]
    calls = [Call("in-house", "", ts, 1000, 10, 0, 100, 40) for ts, _ in cases]
    tiered = Call("in-house", "", third, 1001, 10)
    cost, unpriced = batch_costs(table, [*calls, tiered])
    assert unpriced.tolist() == [True] + [False] * (len(cases) - 1) + [False]
    assert cost[0] == 0.0
    np.testing.assert_allclose(cost[1:-1], [c for _, c in cases[1:]], rtol=1e-12)
    assert cost[-1] == pytest.approx((1001 * 10 + 10 * 11) / 1e6, rel=1e-12)
    ref_cost, ref_unpriced = reference_costs(table, [*calls, tiered])
    np.testing.assert_allclose(cost, ref_cost, rtol=1e-12)
    assert unpriced.tolist() == ref_unpriced
    assert table.resolve("in-house", at=datetime(2025, 6, 1, tzinfo=UTC)) is None
    price = table.resolve("In-House", at=second)
    assert price is not None and price.input == 3.0 and price.source == "override"


def test_dated_override_wins_over_the_library_at_all_times(tmp_path: Path) -> None:
    table = PriceTable(load_price_overrides(write(tmp_path, DATED)))
    early, late = ms(datetime(2026, 3, 1, tzinfo=UTC)), ms(datetime(2026, 7, 1, tzinfo=UTC))
    batch = [
        Call("claude-opus-4-6", "anthropic", early, 1_000_000, 0),
        Call("claude-opus-4-6", "anthropic", late, 1_000_000, 0),
        Call("single", "", ms(datetime(2026, 1, 31, 23, tzinfo=UTC)), 1_000_000, 0),
        Call("single", "", ms(datetime(2026, 2, 1, tzinfo=UTC)), 1_000_000, 0),
        Call("plain", "", YEAR_2000_MS, 1_000_000, 0),
    ]
    cost, unpriced = batch_costs(table, batch)
    assert library_total(batch[0]) > 0  # the library would have priced it
    assert unpriced.tolist() == [True, False, True, False, False]
    assert cost.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ([], "empty list"),
        ([{"input": 1, "output": 1}], "[0].from is required"),
        ([3], "[0] must be an object"),
        ([{"from": "2026-13-01", "input": 1, "output": 1}], "[0].from must be an RFC 3339"),
        ([{"from": "2026-02-30", "input": 1, "output": 1}], "[0].from must be an RFC 3339"),
        ([{"from": "2026-03-13T00:00:00", "input": 1, "output": 1}], "with offset"),
        ([{"from": "yesterday", "input": 1, "output": 1}], "must be an RFC 3339"),
        ([{"from": 1767225600000, "input": 1, "output": 1}], "got int"),
        (
            [{"from": "2026-02-01", "input": 1, "output": 1},
             {"from": "2026-01-01", "input": 2, "output": 2}],
            "[1].from '2026-01-01' is not after the previous entry's '2026-02-01'",
        ),
        (
            [{"from": "2026-02-01", "input": 1, "output": 1},
             {"from": "2026-02-01T00:00:00Z", "input": 2, "output": 2}],
            "strictly ascending",
        ),
        ([{"from": "2026-02-01", "input": 1, "output": 1, "ouput": 1}], "[0]: unknown key"),
        ([{"from": "2026-02-01", "input": 1}], "[0].output is required"),
        ([{"from": "2026-02-01", "input": 1, "output": 1, "cache_write_1h": -1}], ">= 0"),
        (
            [{"from": "2026-02-01", "input": 1, "output": 1,
              "tiers": [{"above_input_tokens": 5, "output": 1, "cache_write_1h": "x"}]}],
            "tiers[0].cache_write_1h must be a number",
        ),
        ({"from": "2026-02-30", "input": 1, "output": 1}, "[0].from must be an RFC 3339"),
    ],
)  # fmt: skip
def test_bad_dated_overrides_give_one_line(tmp_path: Path, entry: object, fragment: str) -> None:
    path = write(tmp_path, {"models": {"m": entry}})
    with pytest.raises(ConfigError) as info:
        load_price_overrides(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"price file {path}: models['m']")
    assert fragment in message


def test_override_cache_write_1h_rate(tmp_path: Path) -> None:
    doc = {"models": {
        "a": {"input": 1, "output": 1, "cache_write": 2, "cache_write_1h": 4},
        "b": {"input": 1, "output": 1, "cache_write": 2},
        "c": {"input": 1, "output": 1},
    }}  # fmt: skip
    table = PriceTable(load_price_overrides(write(tmp_path, doc)), use_library=False)
    batch = [Call(m, "", YEAR_2000_MS, 100, 0, 0, 100, 30) for m in "abc"]
    cost, _ = batch_costs(table, batch)
    np.testing.assert_allclose(cost, [(70 * 2 + 30 * 4) / 1e6, 200 / 1e6, 100 / 1e6], rtol=1e-12)
