"""String interning: codes stand for exactly the strings they replace, stay stable for an
engine's life, and reach the sink's dictionary arrays with the same values as plain strings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.clickhouse import sink as sc
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.interning import INTERNED, Coded, Interner
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.synth import SynthConfig, generate_events
from llmops_stream.stream.testing import MemorySource

WORDS = st.text(alphabet=st.sampled_from(["a", "b", "é", "😀", "\x00", " "]), max_size=4)


def objects(values: list[str]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(WORDS, max_size=30), max_size=6))
def test_codes_stand_for_their_strings_and_never_change(batches: list[list[str]]) -> None:
    interner = Interner()
    first_code: dict[str, int] = {"": 0}  # the reference: first come, next code
    for values in batches:
        codes = interner.encode(objects(values))
        assert codes.dtype == np.int32 and len(codes) == len(values)
        assert interner.values(codes).tolist() == values
        for value, code in zip(values, codes.tolist(), strict=True):
            assert first_code.setdefault(value, len(first_code)) == code
    assert len(interner) == len(first_code)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(WORDS, max_size=30), min_size=1, max_size=5))
def test_dictionary_array_from_codes_equals_plain_strings(batches: list[list[str]]) -> None:
    interner = Interner()
    chunks = [Coded.of(interner.encode(objects(v)), interner) for v in batches]
    interner.encode(objects(["added after the chunks", "and another"]))  # not in the chunks
    got = sc._dictionary(chunks)
    want = [x for v in batches for x in v]
    assert pa.types.is_dictionary(got.type)
    assert got.to_pylist() == want
    # the dictionary holds only values used, each once
    assert sorted(got.dictionary.to_pylist()) == sorted(set(want))


def test_chunks_of_two_interners_fall_back_to_strings() -> None:
    a, b = Interner(), Interner()
    one = Coded.of(a.encode(objects(["x", "y", "x"])), a)
    two = Coded.of(b.encode(objects(["y", "z"])), b)  # code 1 means "y" here, "x" in a
    plain = objects(["w"])
    assert sc._dictionary([one, two, plain]).to_pylist() == ["x", "y", "x", "y", "z", "w"]
    assert sc._plain([one, two]).to_pylist() == ["x", "y", "x", "y", "z"]


def test_arrow_dictionary_grows_with_the_interner() -> None:
    interner = Interner()
    interner.encode(objects(["a", "b"]))
    assert interner.arrow(3).to_pylist() == ["", "a", "b"]
    interner.encode(objects(["c"]))
    assert interner.arrow(4).to_pylist() == ["", "a", "b", "c"]
    assert interner.arrow(2).to_pylist() == ["", "a"]


def test_engine_codes_equal_the_string_columns_batch_after_batch() -> None:
    events = list(generate_events(SynthConfig(n_events=3000, seed=5, n_tenants=7)))
    events += events[:200]  # repeats: usage rows of duplicates carry codes too
    engine = Engine(EngineConfig(prices=PriceTable()))
    seen: dict[str, dict[str, int]] = {}
    for batch in MemorySource(events).batches(700):
        out = engine.process(batch, source="src")
        coded_calls = out.coded["llm_calls"]
        assert set(INTERNED) | {"status", "source", "eval_set_version"} == set(coded_calls)
        for table, columns in (("llm_calls", out.calls), ("llm_usage_1m", out.usage)):
            for name, coded in out.coded[table].items():
                assert coded.strings().tolist() == list(columns[name]), (table, name)
                # a value keeps its code from batch to batch
                for value, code in zip(columns[name], coded.codes.tolist(), strict=True):
                    assert seen.setdefault(name, {}).setdefault(value, code) == code
    assert engine.interners.sizes()["tenant_id"] == 1 + 7
