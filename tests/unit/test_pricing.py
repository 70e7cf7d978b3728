"""Pricing: the vectorised batch cost against the per-event reference, price resolution
(override file, genai-prices snapshot, provider hints, tiers) and the offline guarantee.
Prices as of each call's time and dated overrides: ``test_pricing_asof.py``."""

import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from genai_prices import Usage, calc_price
from genai_prices import types as gp
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.price_library import library_schedule
from llmops_stream.stream.core.pricing import (
    ModelPrice,
    PriceTable,
    PriceTier,
    TokenColumns,
    cost_formula,
)
from llmops_stream.stream.dev.synth import SYNTH_MODELS, UNKNOWN_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_pricing import Call, reference_cost, reference_costs  # noqa: E402

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
AS_OF_MS = int(AS_OF.timestamp()) * 1000
YEAR_2000_MS = 946_684_800_000
YEAR_2100_MS = 4_102_444_800_000
SETTINGS = settings(deadline=None, max_examples=150)

OVERRIDES = {
    # Wins over the library's gpt-4o price.
    "gpt-4o": ModelPrice(input=1.0, output=2.0, cache_read=0.5, cache_write=1.0),
    # Only priced here, with two tiers.
    "in-house-70b": ModelPrice(
        input=0.2,
        output=0.8,
        cache_read=0.02,
        cache_write=0.25,
        context_window=500_000,
        tiers=(
            PriceTier(128_000, 0.4, 1.6, 0.04, 0.5),
            PriceTier(256_000, 0.8, 3.2, 0.08, 1.0),
        ),
    ),
    # Built by hand with tiers out of order: the highest exceeded threshold still wins.
    "unsorted-tiers": ModelPrice(
        input=1.0,
        output=1.0,
        cache_read=1.0,
        cache_write=1.0,
        tiers=(PriceTier(256_000, 3.0, 3.0, 3.0, 3.0), PriceTier(128_000, 2.0, 2.0, 2.0, 2.0)),
    ),
}
TABLE = PriceTable(OVERRIDES, as_of=AS_OF)
LIBRARY = PriceTable(as_of=AS_OF)

MODELS = [
    *SYNTH_MODELS,
    UNKNOWN_MODEL,
    "gpt-4o",
    "GPT-4o-Mini",
    "gpt-4o-2024-11-20",
    "claude-sonnet-4-5",
    "in-house-70b",
    "In-House-70B",
    "unsorted-tiers",
    "",
    None,
]
PROVIDERS = ["", None, "openai", "anthropic", "google", "vertex", "azure", "aws", "nonexistent"]
THRESHOLDS = [128_000, 200_000, 256_000, 272_000]


def obj(values: list[str | None]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def i64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@st.composite
def calls(draw: st.DrawFn) -> Call:
    model = draw(st.sampled_from(MODELS))
    provider = draw(st.sampled_from(PROVIDERS))
    ts_ms = draw(st.one_of(st.integers(YEAR_2000_MS, YEAR_2100_MS), st.just(AS_OF_MS)))
    near = st.sampled_from(THRESHOLDS).flatmap(lambda t: st.integers(t - 2, t + 2))
    input_tokens = draw(
        st.one_of(st.integers(0, 5_000), near, st.integers(0, 10**12), st.just(10**12))
    )
    # Usually consistent subsets; sometimes not (the decoder rejects those, but the cost
    # must still be defined and never negative).
    bound = input_tokens if draw(st.booleans()) else 2 * input_tokens + 10
    cache_read = draw(st.integers(0, bound))
    cache_write = draw(st.integers(0, max(bound - cache_read, 0)))
    write_1h = draw(st.one_of(st.just(0), st.integers(0, cache_write), st.integers(0, bound)))
    output = draw(st.one_of(st.integers(0, 50_000), st.integers(0, 10**12)))
    reasoning = draw(st.one_of(st.just(0), st.integers(0, output), st.integers(0, 2 * output)))
    cache_hit = draw(st.booleans()) and draw(st.booleans())
    return Call(
        model, provider, ts_ms, input_tokens, output, cache_read, cache_write, write_1h,
        reasoning, cache_hit,
    )  # fmt: skip


def batch_costs(table: PriceTable, batch: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    """``table.costs`` over a list of calls."""
    tokens = TokenColumns(
        i64([c.input_tokens for c in batch]),
        i64([c.output_tokens for c in batch]),
        i64([c.cache_read_tokens for c in batch]),
        i64([c.cache_write_tokens for c in batch]),
        i64([c.cache_write_1h_tokens for c in batch]),
        i64([c.reasoning_tokens for c in batch]),
    )
    return table.costs(
        obj([c.model for c in batch]),
        obj([c.provider for c in batch]),
        i64([c.ts_ms for c in batch]),
        tokens,
        np.array([c.cache_hit for c in batch], dtype=np.bool_),
    )


def run_both(table: PriceTable, batch: list[Call]) -> None:
    cost, unpriced = batch_costs(table, batch)
    ref_cost, ref_unpriced = reference_costs(table, batch)
    assert cost.dtype == np.float64
    assert unpriced.dtype == np.bool_
    assert cost.shape == unpriced.shape == (len(batch),)
    assert unpriced.tolist() == ref_unpriced
    np.testing.assert_allclose(cost, ref_cost, rtol=1e-12, atol=1e-15)
    assert (cost >= 0).all()


@SETTINGS
@given(st.lists(calls(), min_size=1, max_size=40))
def test_costs_match_reference(
    batch: list[Call],
) -> None:
    run_both(TABLE, batch)


@settings(deadline=None, max_examples=40)
@given(st.lists(calls(), min_size=1, max_size=40))
def test_costs_match_reference_library_only(
    batch: list[Call],
) -> None:
    run_both(LIBRARY, batch)


def test_one_event_and_unknowns_and_cache_hits_match_reference() -> None:
    run_both(TABLE, [Call("gpt-4o", "openai", AS_OF_MS, 1000, 10, 100, 50, 20, 5)])
    run_both(
        LIBRARY,
        [
            Call(UNKNOWN_MODEL, "self-hosted", AS_OF_MS, 10, 1),
            Call(UNKNOWN_MODEL, "", AS_OF_MS, 10, 1, cache_hit=True),
            Call("gpt-4o", "nonexistent", AS_OF_MS, 10, 1),
            Call("", None, AS_OF_MS, 10, 1),
            Call(None, None, AS_OF_MS, 10, 1),
            Call("claude-opus-4-6", "anthropic", AS_OF_MS, 300_000, 10, cache_hit=True),
        ],
    )


def test_many_distinct_pairs_take_the_sorting_path() -> None:
    # 30 models x 30 providers in 30 events: the dense pair space (900) is too big.
    models = [SYNTH_MODELS[i % len(SYNTH_MODELS)] + ("" if i < 8 else f"-x{i}") for i in range(30)]
    providers = [f"p{i}" for i in range(30)]
    batch = [
        Call(m, p, AS_OF_MS + i, 1000 + i, 10 * i, i)
        for i, (m, p) in enumerate(zip(models, providers, strict=True))
    ]
    run_both(TABLE, batch)


def test_empty_batch() -> None:
    cost, unpriced = batch_costs(TABLE, [])
    assert cost.shape == (0,) and unpriced.shape == (0,)
    assert cost.dtype == np.float64 and unpriced.dtype == np.bool_


def test_formula_by_hand() -> None:
    # claude-sonnet-4: 3 in / 15 out / 0.3 cache read / 3.75 cache write per MTok.
    # 1h cache writes at 6 and reasoning (no separate rate) at the output rate.
    model = "claude-sonnet-4-20250514"
    cost, unpriced = batch_costs(
        LIBRARY,
        [
            Call(model, "anthropic", AS_OF_MS, 1_000_000, 10_000, 100_000, 200_000, 50_000, 4_000),
            Call(model, "", AS_OF_MS, 10_000, 2_000, cache_hit=True),
            Call(model, None, AS_OF_MS, 0, 0),
        ],
    )
    expected = 0.7 * 3 + 0.1 * 0.3 + 0.15 * 3.75 + 0.05 * 6 + 0.01 * 15
    assert cost[0] == pytest.approx(expected, rel=1e-12)
    assert cost[1] == 0.0  # cache hit
    assert cost[2] == 0.0  # zero tokens
    assert not unpriced.any()


def test_unknown_model_is_unpriced_not_an_error() -> None:
    cost, unpriced = batch_costs(
        LIBRARY,
        [
            Call(UNKNOWN_MODEL, "self-hosted", AS_OF_MS, 5000, 100),
            Call(UNKNOWN_MODEL, "", AS_OF_MS, 5000, 100, cache_hit=True),
            Call("gpt-4o-mini", "openai", AS_OF_MS, 5000, 100),
        ],
    )
    assert cost[:2].tolist() == [0.0, 0.0]
    assert cost[2] > 0
    # A cache hit needs no price, so it is not reported as missing one.
    assert unpriced.tolist() == [True, False, False]


@pytest.mark.parametrize(
    ("input_tokens", "tier"),
    [(0, None), (199_999, None), (200_000, None), (200_001, 0), (10**12, 0)],
)
def test_tier_threshold_is_strictly_greater(input_tokens: int, tier: int | None) -> None:
    price = LIBRARY.resolve("gemini-2.5-pro")
    assert price is not None and len(price.tiers) == 1
    assert price.tiers[0].above_input_tokens == 200_000
    rates = price.tiers[0] if tier is not None else price
    expected = (input_tokens * rates.input + 1000 * rates.output) / 1e6
    cost, _ = batch_costs(LIBRARY, [Call("gemini-2.5-pro", "google", AS_OF_MS, input_tokens, 1000)])
    assert cost[0] == pytest.approx(expected, rel=1e-12)


def test_two_tiers_pick_the_highest_exceeded() -> None:
    price = TABLE.resolve("in-house-70b")
    assert price is not None
    for n, expected_rate in [(128_000, 0.2), (128_001, 0.4), (256_000, 0.4), (256_001, 0.8)]:
        assert cost_formula(price, n, 0) == pytest.approx(n * expected_rate / 1e6)
        call = Call("in-house-70b", "", AS_OF_MS, n, 0)
        assert reference_cost(price, call)[0] == pytest.approx(n * expected_rate / 1e6)


@pytest.mark.parametrize("model", SYNTH_MODELS)
def test_every_synthetic_model_is_priced_by_the_library(model: str) -> None:
    price = LIBRARY.resolve(model)
    assert price is not None, model
    assert price.source == "genai-prices"
    assert price.input > 0 and price.output > 0
    assert LIBRARY.resolve(UNKNOWN_MODEL) is None


USAGES = [
    # input, output, cache read, cache write, of which 1h, reasoning
    (1_000, 200, 0, 0, 0, 0),
    (50_000, 3_000, 20_000, 5_000, 2_000, 1_000),
    (1_000_000, 10, 100_000, 200_000, 200_000, 10),
    (200_000, 1_000, 0, 0, 0, 0),
    (200_001, 1_000, 50_000, 10_000, 1, 999),
    (900_000, 5_000, 100_000, 0, 0, 0),
]


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        *((model, None) for model in SYNTH_MODELS),
        *((model, None) for model in ("claude-sonnet-4-5", "gpt-4.1", "o3", "claude-opus-4-6")),
        ("sonar-deep-research", "perplexity"),  # a reasoning rate
    ],
)
def test_library_prices_agree_with_genai_prices_calc(model: str, provider: str | None) -> None:
    """Independent check of the whole path (match, price choice, tiers, cache fallback, 1h
    writes, reasoning) against the library's own calculator on the same bundled snapshot."""
    price = LIBRARY.resolve(model, provider or "")
    assert price is not None
    for inp, out, read, write, write_1h, reasoning in USAGES:
        expected = calc_price(
            Usage(
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=read,
                cache_write_tokens=write,
                cache_write_1h_tokens=write_1h,
                output_reasoning_tokens=reasoning,
            ),
            model,
            provider_id=provider,
            genai_request_timestamp=AS_OF,
        ).total_price
        got = cost_formula(
            price, inp, out, read, write, cache_write_1h_tokens=write_1h, reasoning_tokens=reasoning
        )
        assert got == pytest.approx(float(expected), rel=1e-9)


def test_override_wins_and_matches_case_insensitively() -> None:
    library_price = LIBRARY.resolve("gpt-4o")
    assert library_price is not None and library_price.source == "genai-prices"
    price = TABLE.resolve("gpt-4o", "openai")
    assert price is OVERRIDES["gpt-4o"]
    assert TABLE.resolve("GPT-4O") is OVERRIDES["gpt-4o"]
    assert TABLE.resolve("In-House-70B", "anything") is OVERRIDES["in-house-70b"]
    # A dated snapshot is not the override's key: it goes to the library.
    dated = TABLE.resolve("gpt-4o-2024-11-20")
    assert dated is not None and dated.source == "genai-prices"
    assert PriceTable(OVERRIDES, use_library=False).resolve("gpt-4o-mini") is None


def test_provider_hints() -> None:
    azure = LIBRARY.resolve("gpt-4o", "azure")
    assert azure is not None and azure.matched == "azure:gpt-4o"
    openai = LIBRARY.resolve("gpt-4o", "")
    assert openai is not None and openai.matched == "openai:gpt-4o"
    # An alias of a provider id.
    vertex = LIBRARY.resolve("gemini-2.5-flash", "vertex")
    assert vertex is not None and vertex.matched.startswith("google:")
    # Unknown provider, or a provider that does not list the model: matched without the hint.
    for model, hint in (("claude-sonnet-4-20250514", "nonexistent"), ("claude-sonnet-4", "aws")):
        price = LIBRARY.resolve(model, hint)
        assert price is not None and price.matched.startswith("anthropic:"), hint
    # The hint can pick a different listing than the model-name match.
    bedrock = LIBRARY.resolve("anthropic.claude-sonnet-4-20250514-v1:0", "aws")
    assert bedrock is not None and bedrock.matched.startswith("aws:")


def test_resolve_is_cached_per_model_and_provider() -> None:
    table = PriceTable(as_of=AS_OF)
    first = table.resolve("gpt-4o-mini", "openai")
    assert table.resolve("gpt-4o-mini", "openai") is first
    assert table.resolve("gpt-4o-mini", "") is not None


def test_missing_library_cache_rates_fall_back_to_input() -> None:
    price = LIBRARY.resolve("gpt-4o-mini")  # OpenAI lists no cache-write price
    assert price is not None
    assert price.cache_write == price.input
    assert price.cache_read < price.input


def test_conditional_price_selection_follows_the_library() -> None:
    """Row choice against ``ModelInfo.get_prices`` (the library's own precedence) on a list
    the bundled data does not have: a dated first entry (so before it, nothing is valid and
    the first entry applies), windows before and after a dated entry, one wrapping midnight."""

    def mp(rate: str) -> gp.ModelPrice:
        return gp.ModelPrice(input_mtok=Decimal(rate), output_mtok=Decimal(rate))

    def entry(
        rate: str, constraint: gp.StartDateConstraint | gp.TimeOfDateConstraint | None = None
    ) -> gp.ConditionalPrice:
        return gp.ConditionalPrice(constraint=constraint, prices=mp(rate))

    night = gp.TimeOfDateConstraint(start_time=time(22, 0), end_time=time(2, 0, tzinfo=UTC))
    morning = gp.TimeOfDateConstraint(
        start_time=time(9, 0, tzinfo=UTC), end_time=time(11, 30, tzinfo=UTC)
    )
    info = gp.ModelInfo(
        id="m",
        match=gp.ClauseEquals(equals="m"),
        prices=[
            entry("1", gp.StartDateConstraint(start_date=date(2026, 3, 1))),
            entry("2", night),
            entry("3", gp.StartDateConstraint(start_date=date(2026, 6, 1))),
            entry("4", morning),
            entry("5", gp.StartDateConstraint(start_date=date(2027, 1, 1))),
        ],
    )
    schedule = library_schedule(info, "test:m")
    table = PriceTable({"m": schedule}, use_library=False)
    instants = [
        datetime(2026, 2, 28, 23, 0, tzinfo=UTC),  # before every date, in the night window
        datetime(2026, 2, 28, 12, 0, tzinfo=UTC),  # before every date, no window
        datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 1, 59, 59, 999000, tzinfo=UTC),
        datetime(2026, 3, 1, 2, 0, tzinfo=UTC),
        datetime(2026, 5, 31, 21, 59, 59, 999000, tzinfo=UTC),
        datetime(2026, 5, 31, 22, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 0, 0, tzinfo=UTC),  # night window shadowed by the later date
        datetime(2026, 6, 1, 9, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 11, 29, 59, 999000, tzinfo=UTC),
        datetime(2026, 6, 1, 11, 30, tzinfo=UTC),
        datetime(2027, 1, 1, 10, 0, tzinfo=UTC),  # morning window shadowed by the later date
    ]
    ts = [int(at.timestamp() * 1000) for at in instants]
    expected = [float(info.get_prices(at).input_mtok) for at in instants]
    assert len(set(expected)) == 5  # every entry is chosen at least once
    assert [price.input for price in map(schedule.price_at, ts) if price] == expected
    cost, unpriced = batch_costs(table, [Call("m", "", t, 1_000_000, 0) for t in ts])
    assert cost.tolist() == expected and not unpriced.any()


def test_as_of_accepts_a_date() -> None:
    assert PriceTable(as_of=date(2026, 11, 1)).resolve("gpt-4o-mini") == LIBRARY.resolve(
        "gpt-4o-mini"
    )


# --------------------------------------------------------------------------- offline


def test_no_network_during_price_table_use() -> None:
    """In a fresh interpreter with every socket operation disabled before any import, the
    table loads the bundled snapshot, resolves and prices, and starts no updater thread."""
    script = textwrap.dedent(
        """
        import socket, threading

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        import numpy as np
        import genai_prices.data_snapshot as snapshot
        from llmops_stream.stream.core.pricing import PriceTable, TokenColumns

        table = PriceTable()
        models = np.array(["gpt-4o", "claude-sonnet-4-20250514", "gemini-2.5-pro", "nope"], object)
        providers = np.array(["openai", "", "google", ""], object)
        n = np.array([1000, 2000, 300000, 5], dtype=np.int64)
        ts = np.full(4, 1_790_000_000_000, dtype=np.int64)
        tokens = TokenColumns(n, n, n // 4, n * 0, n * 0, n // 8)
        cost, unpriced = table.costs(models, providers, ts, tokens, np.zeros(4, bool))
        assert (cost[:3] > 0).all() and unpriced.tolist() == [False, False, False, True]
        assert snapshot._custom_snapshot is None
        assert threading.active_count() == 1, threading.enumerate()
        print("offline-ok")
        """
    )
    result = subprocess.run(  # noqa: S603 - fixed script, current interpreter
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "offline-ok" in result.stdout


def test_no_network_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    table = PriceTable()
    for model in SYNTH_MODELS:
        assert table.resolve(model) is not None
