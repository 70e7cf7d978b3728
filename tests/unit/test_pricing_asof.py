"""Prices as of each call's event time: dated and time-of-day library prices, 1h cache writes
and reasoning rates, all against genai-prices' own calculator (``calc_price`` with
``genai_request_timestamp``); dated override files."""

import importlib
import math
import sys
from datetime import UTC, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from genai_prices import Usage, calc_price
from genai_prices import types as gp
from genai_prices.data_snapshot import DataSnapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.price_library import LibraryPrices, library_schedule
from llmops_stream.stream.core.pricing import (
    PriceSchedule,
    PriceTable,
    TokenColumns,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_pricing import Call, reference_costs  # noqa: E402

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
YEAR_2000_MS = 946_684_800_000
YEAR_2100_MS = 4_102_444_800_000
LIBRARY = PriceTable()


def ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


def when(ts_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ts_ms)


def batch_costs(table: PriceTable, batch: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    def col(values: list[int]) -> np.ndarray:
        return np.array(values, dtype=np.int64)

    def names(values: list[str | None]) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    tokens = TokenColumns(
        col([c.input_tokens for c in batch]),
        col([c.output_tokens for c in batch]),
        col([c.cache_read_tokens for c in batch]),
        col([c.cache_write_tokens for c in batch]),
        col([c.cache_write_1h_tokens for c in batch]),
        col([c.reasoning_tokens for c in batch]),
    )
    return table.costs(
        names([c.model for c in batch]),
        names([c.provider for c in batch]),
        col([c.ts_ms for c in batch]),
        tokens,
        np.array([c.cache_hit for c in batch], dtype=np.bool_),
    )


def library_usage(call: Call) -> Usage:
    return Usage(
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cache_read_tokens=call.cache_read_tokens,
        cache_write_tokens=call.cache_write_tokens,
        cache_write_1h_tokens=call.cache_write_1h_tokens,
        output_reasoning_tokens=call.reasoning_tokens,
    )


def library_total(call: Call) -> float:
    """What genai-prices charges for ``call`` (matched by model id and provider)."""
    result = calc_price(
        library_usage(call),
        call.model or "",
        provider_id=call.provider,
        genai_request_timestamp=when(call.ts_ms),
    )
    return float(result.total_price)


# --------------------------------------------------------------------------- the two bugs


def test_claude_opus_4_6_before_its_price_change_is_billed_that_days_price() -> None:
    """Before 2026-03-13 the >200k-token tier applied; billing it at today's flat price
    undercharged such calls by about half."""
    calls = [
        Call("claude-opus-4-6", "anthropic", ms(at), 300_000, 2_000, 50_000, 20_000, 5_000, 500)
        for at in (
            datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            datetime(2026, 3, 12, 23, 59, 59, 999_000, tzinfo=UTC),
            datetime(2026, 3, 13, 0, 0, tzinfo=UTC),
        )
    ]
    expected = [library_total(call) for call in calls]
    # The library's price did change at that instant, by far more than the tolerance.
    assert expected[0] == expected[1] and expected[2] < 0.7 * expected[1]
    cost, unpriced = batch_costs(LIBRARY, calls)
    np.testing.assert_allclose(cost, expected, rtol=1e-9)
    assert not unpriced.any()


def test_deepseek_chat_off_peak_is_billed_the_off_peak_price() -> None:
    """DeepSeek's standard price holds 00:30-16:30 UTC; outside it the off-peak price (half)
    applies. The window's end is exclusive."""
    day = datetime(2026, 5, 1, tzinfo=UTC)
    offsets = [
        timedelta(hours=20),  # UTC evening: off-peak
        timedelta(hours=16, minutes=30),  # the window's end: off-peak
        timedelta(hours=16, minutes=29, seconds=59, milliseconds=999),  # peak
        timedelta(minutes=30),  # the window's start: peak
        timedelta(minutes=29, seconds=59, milliseconds=999),  # off-peak
    ]
    calls = [
        Call("deepseek-chat", "deepseek", ms(day + offset), 100_000, 2_000, 20_000)
        for offset in offsets
    ]
    expected = [library_total(call) for call in calls]
    assert expected[0] == expected[1] == expected[4] < expected[2] == expected[3]
    cost, unpriced = batch_costs(LIBRARY, calls)
    np.testing.assert_allclose(cost, expected, rtol=1e-9)
    assert not unpriced.any()


# --------------------------------------------------------------------------- vs calc_price

SNAPSHOT = DataSnapshot(
    providers=importlib.import_module("genai_prices.data").providers, from_auto_update=False
)


def price_list(info: gp.ModelInfo) -> list[Any]:
    if isinstance(info.prices, gp.ModelPrice):
        return [info.prices]
    return [entry.prices for entry in info.prices]


def is_interesting(info: gp.ModelInfo) -> bool:
    """Dated or time-of-day prices, tiers, a 1h cache-write or a reasoning rate."""
    if not isinstance(info.prices, gp.ModelPrice):
        return True
    price = info.prices
    return any(isinstance(v, gp.TieredPrices) for v in price.__dict__.values()) or any(
        getattr(price, key, None) is not None
        for key in ("cache_write_1h_mtok", "output_reasoning_mtok")
    )


ENTRIES = [(p, m) for p in SNAPSHOT.providers for m in p.models]
INTERESTING = [(p, m) for p, m in ENTRIES if is_interesting(m)]


def matches_itself(provider: gp.Provider, info: gp.ModelInfo) -> bool:
    try:
        return SNAPSHOT.find_provider_model(info.id, None, provider.id, None)[1] is info
    except LookupError:
        return False


# Entries whose own id (with their provider) finds them go through the whole path: our lookup
# and top-level calc_price. The rest (an earlier entry's match rule catches the id first)
# are priced through their converted schedule, against the library's ModelInfo.calc_price.
BY_NAME = {(p.id, m.id) for p, m in ENTRIES if matches_itself(p, m)}
BY_ENTRY = PriceTable(
    {f"{p.id}:{m.id}": library_schedule(m, f"{p.id}:{m.id}") for p, m in ENTRIES},
    use_library=False,
)
FEE_REASON = (
    "per-request fee (requests_kcount): SPEC §3 prices tokens; the fee is subtracted from "
    "the library's total instead"
)


def expected_cost(provider: gp.Provider, info: gp.ModelInfo, call: Call) -> float:
    """The library's charge for ``call`` on this entry, less any per-request fee (see
    ``FEE_REASON``); every other non-token price is 0 for the token usage events carry."""
    at = when(call.ts_ms)
    if (provider.id, info.id) in BY_NAME:
        result = calc_price(
            library_usage(call), info.id, provider_id=provider.id, genai_request_timestamp=at
        )
    else:
        result = info.calc_price(library_usage(call), provider, genai_request_timestamp=at)
    fee = getattr(result.model_price, "requests_kcount", None)
    total = result.total_price - (Decimal(0) if fee is None else fee / 1000)
    return 0.0 if call.cache_hit else float(total)


def our_costs(
    entries: list[tuple[gp.Provider, gp.ModelInfo]], calls: list[Call]
) -> tuple[np.ndarray, np.ndarray]:
    """One vectorised batch per path; ``calls[i]`` prices ``entries[i]``."""
    cost = np.zeros(len(calls))
    unpriced = np.zeros(len(calls), dtype=np.bool_)
    by_name = [i for i, (p, m) in enumerate(entries) if (p.id, m.id) in BY_NAME]
    by_entry = [i for i, (p, m) in enumerate(entries) if (p.id, m.id) not in BY_NAME]
    named = [calls[i]._replace(model=entries[i][1].id, provider=entries[i][0].id) for i in by_name]
    keyed = [calls[i]._replace(model=f"{entries[i][0].id}:{entries[i][1].id}") for i in by_entry]
    for table, index, batch in ((LIBRARY, by_name, named), (BY_ENTRY, by_entry, keyed)):
        if index:
            c, u = batch_costs(table, batch)
            cost[index], unpriced[index] = c, u
    return cost, unpriced


def assert_agree(entries: list[tuple[gp.Provider, gp.ModelInfo]], calls: list[Call]) -> None:
    cost, unpriced = our_costs(entries, calls)
    for (provider, info), call, got, missing in zip(entries, calls, cost, unpriced, strict=True):
        want = expected_cost(provider, info, call)
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-15), (
            f"{provider.id}:{info.id} at {when(call.ts_ms)} {call}: ours {got} library {want}"
        )
        if missing:  # unpriced only where the library has no token rate at that time either
            assert want == 0.0 and not call.cache_hit, (provider.id, info.id, call)


def boundaries(info: gp.ModelInfo) -> list[int]:
    """Instants (epoch ms) where this entry's price may change, and 1 ms either side; with
    time-of-day windows, their edges on a day in every dated segment, and midnight."""
    if isinstance(info.prices, gp.ModelPrice):
        return [ms(datetime(2026, 11, 1, tzinfo=UTC))]
    starts = sorted(
        ms(datetime.combine(e.constraint.start_date, datetime.min.time(), tzinfo=UTC))
        for e in info.prices
        if isinstance(e.constraint, gp.StartDateConstraint)
    )
    days = [YEAR_2000_MS // DAY_MS * DAY_MS]
    days += [s // DAY_MS * DAY_MS for s in starts]
    days += (
        [(starts[0] // DAY_MS - 3) * DAY_MS] if starts else [ms(datetime(2026, 5, 1, tzinfo=UTC))]
    )
    instants = [YEAR_2000_MS, YEAR_2100_MS - 1]
    for start in starts:
        instants += [start - 1, start, start + 1]
    edges = [0, DAY_MS - 1]
    for entry in info.prices:
        if isinstance(entry.constraint, gp.TimeOfDateConstraint):
            for t in (entry.constraint.start_time, entry.constraint.end_time):
                edge = ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000
                edges += [edge - 1, edge, edge + 1]
    if len(edges) > 2:
        instants += [day + edge % DAY_MS for day in days for edge in edges]
    return instants


def token_cases(info: gp.ModelInfo) -> list[tuple[int, int, int, int, int, int]]:
    """Usage vectors: zero, huge, mixed, every tier threshold +-1 of this entry."""
    thresholds = {
        tier.start
        for price in price_list(info)
        for value in price.__dict__.values()
        if isinstance(value, gp.TieredPrices)
        for tier in value.tiers
    }
    cases = [
        (0, 0, 0, 0, 0, 0),
        (12_345, 678, 0, 0, 0, 0),
        (50_000, 4_000, 20_000, 10_000, 10_000, 4_000),
        (10**12, 10**12, 3 * 10**11, 2 * 10**11, 10**11, 5 * 10**11),
    ]
    for t in sorted(thresholds):
        for n in (t - 1, t, t + 1):
            cases.append((n, 1_000, n // 10, n // 20, n // 40, 300))
    return cases


def test_interesting_entries_are_many_and_cover_every_feature() -> None:
    """The sweep below really exercises dated, time-of-day, tiered, 1h and reasoning prices."""
    constraints = [
        type(e.constraint).__name__
        for _, m in INTERESTING
        if not isinstance(m.prices, gp.ModelPrice)
        for e in m.prices
    ]
    assert constraints.count("StartDateConstraint") >= 300
    assert constraints.count("TimeOfDateConstraint") >= 8
    keys = {k for _, m in INTERESTING for p in price_list(m) for k, v in p.__dict__.items() if v}
    assert {"cache_write_1h_mtok", "output_reasoning_mtok"} <= keys
    # The whole-snapshot sweep meets the per-request fee it has to take out (FEE_REASON).
    assert any(getattr(p, "requests_kcount", None) for _, m in ENTRIES for p in price_list(m))
    assert len(INTERESTING) >= 400


@pytest.mark.parametrize("chunk", range(8))
def test_dated_tiered_1h_and_reasoning_entries_agree_with_calc_price(chunk: int) -> None:
    """Every library entry with dated / time-of-day / tiered / 1h / reasoning prices, at each
    of its change instants +-1 ms, window edges, midnight, 2000 and 2099, for zero, huge and
    threshold +-1 usages: our batch cost equals the library's total."""
    entries: list[tuple[gp.Provider, gp.ModelInfo]] = []
    calls: list[Call] = []
    for provider, info in INTERESTING[chunk::8]:
        for ts in boundaries(info):
            for tokens in token_cases(info):
                entries.append((provider, info))
                calls.append(Call(None, None, ts, *tokens))
    assert calls
    assert_agree(entries, calls)


def test_every_library_entry_agrees_with_calc_price() -> None:
    """The whole bundled snapshot at three instants with two usages."""
    instants = [YEAR_2000_MS, ms(datetime(2026, 11, 1, 20, tzinfo=UTC)), YEAR_2100_MS - 1]
    usages = [(70_000, 3_000, 20_000, 8_000, 3_000, 1_000), (1, 1, 0, 1, 1, 1)]
    entries = [e for e in ENTRIES for _ in instants for _ in usages]
    calls = [Call(None, None, t, *u) for _ in ENTRIES for t in instants for u in usages]
    assert len(ENTRIES) > 2000
    assert_agree(entries, calls)


@st.composite
def priced_calls(draw: st.DrawFn) -> tuple[tuple[gp.Provider, gp.ModelInfo], Call]:
    provider, info = draw(st.sampled_from(INTERESTING))
    special = boundaries(info)
    ts = draw(
        st.one_of(
            st.integers(YEAR_2000_MS, YEAR_2100_MS - 1),
            st.sampled_from(special),
            st.sampled_from(special).flatmap(lambda t: st.integers(t - 1000, t + 1000)),
        )
    )
    thresholds = sorted({c[0] for c in token_cases(info)})
    inp = draw(
        st.one_of(
            st.integers(0, 10**12),
            st.integers(0, 300_000),
            st.sampled_from(thresholds).flatmap(lambda t: st.integers(max(t - 1, 0), t + 1)),
        )
    )
    read = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - read))
    write_1h = draw(st.one_of(st.just(0), st.just(write), st.integers(0, write)))
    out = draw(st.one_of(st.integers(0, 10**12), st.integers(0, 50_000)))
    reasoning = draw(st.one_of(st.just(0), st.just(out), st.integers(0, out)))
    cache_hit = draw(st.booleans()) and draw(st.booleans())
    call = Call(None, None, ts, inp, out, read, write, write_1h, reasoning, cache_hit)
    return (provider, info), call


@settings(deadline=None, max_examples=200)
@given(st.lists(priced_calls(), min_size=1, max_size=12))
def test_random_calls_agree_with_calc_price(drawn: list[tuple[Any, Call]]) -> None:
    assert_agree([entry for entry, _ in drawn], [call for _, call in drawn])


# --------------------------------------------------------------------------- row choice


@st.composite
def constraint_lists(draw: st.DrawFn) -> gp.ModelInfo:
    """Conditional price lists the bundled data may not have: any order, a constrained first
    entry, wrapping and zero-length windows, times with offsets and microseconds."""
    days = st.dates(
        min_value=datetime(2001, 1, 1, tzinfo=UTC).date(),
        max_value=datetime(2099, 1, 1, tzinfo=UTC).date(),
    )
    zones = st.sampled_from([None, UTC, *(timezone(timedelta(hours=h)) for h in (-8, 2, 5.5, 14))])
    times = st.builds(
        lambda h, m, us, z: time(h, m, 0, us, tzinfo=z),
        st.integers(0, 23),
        st.sampled_from([0, 30, 59]),
        st.sampled_from([0, 500, 999_999]),
        zones,
    )
    constraint = st.one_of(
        st.none(),
        days.map(lambda d: gp.StartDateConstraint(start_date=d)),
        st.tuples(times, times).map(
            lambda se: gp.TimeOfDateConstraint(start_time=se[0], end_time=se[1])
        ),
    )
    chosen = draw(st.lists(constraint, min_size=1, max_size=6))
    prices = [
        gp.ConditionalPrice(
            constraint=c,
            prices=gp.ModelPrice(input_mtok=Decimal(i + 1), output_mtok=Decimal(0)),
        )
        for i, c in enumerate(chosen)
    ]
    return gp.ModelInfo(id="m", match=gp.ClauseEquals(equals="m"), prices=prices)


@settings(deadline=None, max_examples=300)
@given(constraint_lists(), st.lists(st.integers(YEAR_2000_MS, YEAR_2100_MS), max_size=20))
def test_row_choice_follows_the_library_precedence(info: gp.ModelInfo, extra: list[int]) -> None:
    """Batch row choice == ``ModelInfo.get_prices`` at every constraint edge and at random
    instants (input rate i+1 identifies entry i)."""
    schedule = library_schedule(info, "test:m")
    instants = list(extra)
    days = {YEAR_2000_MS}  # window edges before any date and on every start day
    for row in schedule.rows:
        if row.from_ms is not None:
            instants += [row.from_ms - 1, row.from_ms]
            days.add(row.from_ms)
    for row in schedule.rows:
        if row.daily is not None:
            for day in days:
                for edge in (0, *row.daily):
                    instants += [day + edge - 1, day + edge]
    want = [float(info.get_prices(when(t)).input_mtok) for t in instants]
    table = PriceTable({"m": schedule}, use_library=False)
    cost, _ = batch_costs(table, [Call("m", "", t, 1_000_000, 0) for t in instants])
    assert cost.tolist() == want
    assert [p.input for t in instants if (p := schedule.price_at(t))] == want


# --------------------------------------------------------------------------- reference


def test_batch_matches_reference_across_times_models_and_providers() -> None:
    rng = np.random.default_rng(7)
    models = [
        ("claude-opus-4-6", "anthropic"), ("claude-opus-4-6", "google"),
        ("deepseek-chat", "deepseek"), ("deepseek-v4-flash", ""), ("deepseek-v4-pro", "deepseek"),
        ("z-ai/glm-5", "openrouter"), ("gpt-4o", "azure"), ("sonar-deep-research", "perplexity"),
        ("nope", ""), ("", None),
    ]  # fmt: skip
    calls = []
    for i in range(2_000):
        model, provider = models[i % len(models)]
        ts = int(
            rng.integers(ms(datetime(2026, 1, 1, tzinfo=UTC)), ms(datetime(2027, 1, 1, tzinfo=UTC)))
        )
        inp = int(rng.integers(0, 400_000))
        read, write = inp // 5, inp // 7
        out = int(rng.integers(0, 9_000))
        calls.append(
            Call(model, provider, ts, inp, out, read, write, write // 2, out // 3, i % 13 == 0)
        )
    cost, unpriced = batch_costs(LIBRARY, calls)
    ref_cost, ref_unpriced = reference_costs(LIBRARY, calls)
    np.testing.assert_allclose(cost, ref_cost, rtol=1e-12, atol=1e-15)
    assert unpriced.tolist() == ref_unpriced
    assert unpriced.sum() == sum(1 for c in calls if not c.cache_hit and c.model in ("nope", ""))


def test_each_pair_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    original = LibraryPrices.lookup

    def counting(self: LibraryPrices, model: str, provider: str) -> PriceSchedule | None:
        seen.append((model, provider))
        return original(self, model, provider)

    monkeypatch.setattr(LibraryPrices, "lookup", counting)
    table = PriceTable()
    day = ms(datetime(2026, 5, 1, tzinfo=UTC))
    batch = [Call("deepseek-chat", "deepseek", day + h * 3_600_000, 1000, 10) for h in range(24)]
    batch += [Call("claude-opus-4-6", "", day, 1000, 10), Call("nope", "", day, 1, 1)]
    first, _ = batch_costs(table, batch)
    second, _ = batch_costs(table, batch[::-1])
    assert sorted(seen) == [("claude-opus-4-6", ""), ("deepseek-chat", "deepseek"), ("nope", "")]
    assert first.tolist() == second[::-1].tolist()
    assert len(set(first[:24].tolist())) == 2  # peak and off-peak
