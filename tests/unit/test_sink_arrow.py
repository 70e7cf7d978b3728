"""ClickHouse sink, Arrow side: the payloads hold exactly the values given, in the types
the schema expects, and reach clickhouse-connect with the flush's deduplication tokens.

No ClickHouse here (a recording client); tests/integration/test_sink_roundtrip.py sends
the same outputs through chDB and the HTTP front and reads them back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sink_cases import engine_outputs, norm, with_huge_counts

from llmops_stream.schemas import read_text
from llmops_stream.stream.clickhouse import sink as sc
from llmops_stream.stream.clickhouse.sink import ClickHouseSink, latest_states
from llmops_stream.stream.core.budget_state import concat_states
from llmops_stream.stream.core.engine import BatchOutput

# columns the sink fills with the time of the flush
WRITE_TIMES = {"ingested_at", "received_at", "updated_at", "version"}


class RecordingClient:
    """Stands in for a clickhouse-connect client: keeps every insert, can fail on one."""

    def __init__(self, write_compression: str | None = None, fail_on: str = "") -> None:
        self.write_compression = write_compression
        self.fail_on = fail_on
        self.inserts: list[dict[str, Any]] = []

    def raw_insert(
        self,
        table: str,
        column_names: Any = None,
        insert_block: Any = None,
        settings: Any = None,
        fmt: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.fail_on and table.endswith("." + self.fail_on):
            raise ConnectionError(f"{table}: ClickHouse is down")
        self.inserts.append(
            {
                "table": table,
                "columns": column_names,
                "block": insert_block,
                "settings": settings,
                "fmt": fmt,
                **kwargs,
            }
        )

    def tables(self) -> dict[str, pa.Table]:
        """Every payload read back as Arrow, by table name (without the database)."""
        return {
            i["table"].split(".", 1)[1]: pa.ipc.open_file(pa.py_buffer(i["block"])).read_all()
            for i in self.inserts
        }


@pytest.fixture(scope="module")
def outs(tmp_path_factory: pytest.TempPathFactory) -> list[BatchOutput]:
    return with_huge_counts(engine_outputs(tmp_path_factory.mktemp("sink")))


def flushed(outs: list[BatchOutput], **client_kwargs: Any) -> RecordingClient:
    client = RecordingClient(**client_kwargs)
    sink = ClickHouseSink(client, "db")
    for out in outs:
        sink.add(out)
    sink.flush("tok")
    return client


def low_cardinality_columns() -> dict[str, set[str]]:
    """``LowCardinality`` columns of every table of schemas/clickhouse.sql."""
    found: dict[str, set[str]] = {}
    for statement in read_text("clickhouse.sql").split("\n;\n"):
        table = re.search(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)", statement)
        if table:
            found[table.group(1)] = set(
                re.findall(r"^\s+(\w+)\s+LowCardinality\(", statement, re.MULTILINE)
            )
    return found


def schema_columns(table: str) -> list[str]:
    statement = next(
        s for s in read_text("clickhouse.sql").split("\n;\n") if f"{{db}}.{table}\n" in s
    )
    body = statement[statement.index("(") + 1 : statement.index("\n)")]
    return [
        line.split()[0]
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith("--")
    ]


def values_of(column: pa.ChunkedArray) -> list[Any]:
    """Python values of a column; times as integers (their epoch unit)."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return column.to_pylist()


def given(outs: list[BatchOutput], attr: str, name: str) -> list[Any]:
    values: list[Any] = []
    for out in outs:
        chunk = getattr(out, attr)[name]
        values += chunk.tolist() if isinstance(chunk, np.ndarray) else list(chunk)
    return values


def test_low_cardinality_columns_and_only_those_go_as_dictionaries() -> None:
    schema = low_cardinality_columns()
    for table, encoders in sc.ENCODERS.items():
        assert set(encoders) <= set(schema_columns(table)), table
        dictionaries = {n for n, e in encoders.items() if e is sc._dictionary}
        assert dictionaries == schema[table], table


@pytest.mark.parametrize(
    ("table", "attr"),
    [
        ("llm_calls", "calls"),
        ("llm_usage_1m", "usage"),
        ("llm_rejected", "rejected"),
        ("llm_eval_candidates", "candidates"),
    ],
)
def test_payload_holds_every_value_given(outs: list[BatchOutput], table: str, attr: str) -> None:
    got = flushed(outs).tables()[table]
    names = list(getattr(outs[0], attr))
    assert set(got.column_names) - set(names) <= WRITE_TIMES
    assert set(got.column_names) <= set(schema_columns(table))
    for name in names:
        want = given(outs, attr, name)
        assert len(want) == got.num_rows, name
        assert norm(values_of(got[name])) == norm(want), name


def test_payload_types(outs: list[BatchOutput]) -> None:
    tables = flushed(outs).tables()
    calls, usage = tables["llm_calls"], tables["llm_usage_1m"]
    for name in low_cardinality_columns()["llm_calls"]:
        assert pa.types.is_dictionary(calls[name].type), name
    assert calls["event_id"].type == pa.string()
    assert calls["ts"].type == calls["ingested_at"].type == pa.timestamp("ms", tz="UTC")
    assert usage["minute"].type == pa.timestamp("s", tz="UTC")
    assert calls["cost_usd"].type == pa.float64()
    assert calls["latency_ms"].type == pa.float32()
    # with_huge_counts: latency counts need 64 bits, lags 32 bits (70,000)
    assert usage["latency_hist"].type == pa.list_(pa.uint64())
    assert usage["stale_lag_hist"].type == pa.list_(pa.uint32())
    assert tables["llm_eval_candidates"]["embedding"].type == pa.list_(pa.float32())
    assert tables["llm_rejected"]["raw"].type == pa.binary()


def test_alerts_and_budget_states_tables(outs: list[BatchOutput]) -> None:
    tables = flushed(outs).tables()
    alerts = [a for o in outs for a in o.alerts]
    assert tables["llm_alerts"]["alert_id"].to_pylist() == [a.alert_id for a in alerts]
    assert tables["llm_alerts"]["status"].to_pylist() == [a.status for a in alerts]
    states = latest_states(concat_states([o.budget_states for o in outs]))
    got = tables["llm_budget_state"]
    assert got["spend_usd"].to_pylist() == states["spend_usd"].tolist()
    assert values_of(got["as_of"]) == states["as_of_ms"].tolist()


@pytest.mark.parametrize(
    ("top", "dtype"),
    [
        (0, pa.uint8()),
        (255, pa.uint8()),
        (256, pa.uint16()),
        (65_535, pa.uint16()),
        (65_536, pa.uint32()),
        (2**32 - 1, pa.uint32()),
        (2**32, pa.uint64()),
        (2**64 - 1, pa.uint64()),
    ],
)
def test_counts_go_in_the_narrowest_type_that_holds_them(top: int, dtype: pa.DataType) -> None:
    rng = np.random.default_rng(top % 1000)
    chunks = [rng.integers(0, min(top, 200) + 1, size=(n, 6), dtype=np.uint64) for n in (3, 0, 5)]
    chunks[2][4, 5] = top
    got = sc._counts(chunks)
    assert got.type == pa.list_(dtype)
    assert got.to_pylist() == np.concatenate(chunks).tolist()


def test_counts_of_no_rows() -> None:
    got = sc._counts([np.zeros((0, 256), np.uint64), np.zeros((0, 256), np.uint64)])
    assert len(got) == 0 and pa.types.is_list(got.type)


def test_strings_across_chunks() -> None:
    chunks = [
        np.array(["é😀", "", "a\x00b"], dtype=object),
        np.zeros(0, dtype=object),
        np.array(["", "é😀", "z" * 70_000], dtype=object),
    ]
    want = ["é😀", "", "a\x00b", "", "é😀", "z" * 70_000]
    assert sc._utf8(chunks).to_pylist() == want
    encoded = sc._dictionary(chunks)
    assert encoded.to_pylist() == want
    assert len(encoded.dictionary) == 4  # one entry per distinct value, across chunks
    assert sc._utf8([np.zeros(0, dtype=object)]).to_pylist() == []


def test_strings_that_are_not_str_behave_as_arrow_converts_them() -> None:
    # never produced by the engine; None becomes null (ClickHouse stores ''), others fail
    with_none = [np.array(["a", None], dtype=object)]
    assert sc._utf8(with_none).to_pylist() == ["a", None]
    assert sc._dictionary(with_none).to_pylist() == ["a", None]
    with pytest.raises((pa.ArrowTypeError, pa.ArrowInvalid)):
        sc._utf8([np.array(["a", 3], dtype=object)])


def test_insert_hands_a_view_and_the_tokens_to_raw_insert(outs: list[BatchOutput]) -> None:
    client = flushed(outs)
    assert [i["table"] for i in client.inserts] == [
        "db.llm_calls",
        "db.llm_usage_1m",
        "db.llm_rejected",
        "db.llm_eval_candidates",
        "db.llm_alerts",
        "db.llm_budget_state",
    ]
    for insert in client.inserts:
        table = insert["table"].split(".", 1)[1]
        assert insert["settings"] == {"insert_deduplication_token": f"tok:{table}"}
        assert insert["fmt"] == "Arrow"
        assert isinstance(insert["block"], memoryview)  # written out without a copy
        schema = pa.ipc.open_file(pa.py_buffer(insert["block"])).schema
        assert list(insert["columns"]) == schema.names


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_payload_compressed_as_insert_arrow_would(
    outs: list[BatchOutput], compression: str
) -> None:
    plain = flushed(outs).inserts
    packed = flushed(outs, write_compression=compression).inserts
    ignored = flushed(outs, write_compression="gzip").inserts  # not an Arrow IPC codec
    for p, c, g in zip(plain, packed, ignored, strict=True):
        if p["table"].endswith(("llm_calls", "llm_usage_1m")):
            assert len(c["block"]) < len(p["block"]), p["table"]
        assert abs(len(g["block"]) - len(p["block"])) < 64  # only ingested_at may differ
        got = pa.ipc.open_file(pa.py_buffer(c["block"])).read_all()
        want = pa.ipc.open_file(pa.py_buffer(p["block"])).read_all()
        for name in set(want.column_names) - WRITE_TIMES:
            # NaN-aware: Table.equals takes NaN for unequal to itself
            assert norm(got[name].to_pylist()) == norm(want[name].to_pylist()), name


def test_failed_flush_keeps_the_buffer_and_the_retry_uses_the_same_tokens(
    outs: list[BatchOutput],
) -> None:
    client = RecordingClient(fail_on="llm_rejected")
    sink = ClickHouseSink(client, "db")
    for out in outs:
        sink.add(out)
    buffered = sink.rows_buffered
    with pytest.raises(ConnectionError):
        sink.flush("seg-7")
    assert sink.rows_buffered == buffered
    first = [(i["table"], i["settings"]) for i in client.inserts]
    client.fail_on = ""
    written = sink.flush("seg-7")
    retried = [(i["table"], i["settings"]) for i in client.inserts[len(first) :]]
    assert retried[: len(first)] == first
    assert written["llm_calls"] == buffered
    assert sink.rows_buffered == 0 and sink.flush("seg-8") == {}


def test_empty_batches_write_nothing(outs: list[BatchOutput]) -> None:
    empty = [o for o in outs if not len(o.calls["event_id"])]
    assert empty, "engine_outputs has an empty batch"
    client = RecordingClient()
    sink = ClickHouseSink(client, "db")
    for out in empty * 2:
        sink.add(out)
    assert sink.flush("tok") == {} and client.inserts == []


def test_histograms_are_most_of_the_usage_payload_no_longer(
    outs: list[BatchOutput], tmp_path: Path
) -> None:
    # Natural counts (no huge ones) fit a byte or two: the usage payload is a fraction of
    # what uint64 lists take.
    natural = engine_outputs(tmp_path)
    usage = next(i for i in flushed(natural).inserts if i["table"] == "db.llm_usage_1m")
    rows = sum(len(o.usage["minute"]) for o in natural)
    assert len(usage["block"]) < rows * 2 * 256 * 8 / 3
