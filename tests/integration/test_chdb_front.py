"""The test-only ClickHouse HTTP front (``tests/chdb_front.py``) against clickhouse-connect.

The front runs in a child process (the only one that opens its chDB path); the tests speak
to it with clickhouse-connect's ordinary HTTP client, through the project's own
``sink_clickhouse.connect`` where they can, exactly as workers and ``report`` do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
import pytest
from chdb_front import FrontProcess, reachable
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from expected import expected_totals

from llmops_stream.stream.clickhouse.report import budget_states, build_report
from llmops_stream.stream.clickhouse.sink import ClickHouseSink, apply_schema, connect
from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.synth import SynthConfig, generate_bad_events, generate_events

pytestmark = pytest.mark.integration

BUDGETS = {"default": [{"id": "h", "limit_usd": 0.5, "window": "1h", "soft": [0.5], "hard": 1.0}]}


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontProcess]:
    tmp = tmp_path_factory.mktemp("front")
    with FrontProcess(tmp / "ch", tmp / "front.log") as proc:
        yield proc


def client_of(front: FrontProcess) -> Any:
    host, port = front.url.removeprefix("http://").split(":")
    return clickhouse_connect.get_client(host=host, port=int(port))


def test_handshake_command_and_query_parameters(front: FrontProcess) -> None:
    client = client_of(front)
    assert client.server_version.split(".")[0].isdigit()
    assert client.command("SELECT 40 + 2") == 42
    client.command("CREATE DATABASE IF NOT EXISTS fq")
    client.command(
        "CREATE TABLE IF NOT EXISTS fq.t (k String, n Int64, ts DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY k"
    )
    client.command("INSERT INTO fq.t VALUES ('a', 1, 1000), ('it''s', 2, 2000), ('c', 3, 3000)")
    # client-side binding (the worker's style) and server-side {name:Type} binding
    rows = client.query(
        "SELECT k, n FROM fq.t WHERE n >= %(lo)s AND k != %(no)s ORDER BY n",
        parameters={"lo": 2, "no": "c"},
    ).result_rows
    assert rows == [("it's", 2)]
    rows = client.query(
        "SELECT k, toUnixTimestamp64Milli(ts) FROM fq.t WHERE k = {k:String}",
        parameters={"k": "it's"},
    ).result_rows
    assert rows == [("it's", 2_000_000)]  # an integer into DateTime64 is seconds
    ts = client.query("SELECT ts FROM fq.t WHERE n = 3").result_rows[0][0]
    assert ts.replace(tzinfo=None).isoformat() == "1970-01-01T00:50:00"
    big = "x" * 6000  # long enough that clickhouse-connect sends it as a multipart form
    assert client.query("SELECT length({s:String})", parameters={"s": big}).result_rows == [(6000,)]
    assert client.query("SELECT * FROM fq.t LIMIT 0").column_names == ("k", "n", "ts")
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE|does not exist") as err:
        client.query("SELECT * FROM fq.missing")
    assert getattr(err.value, "code", None) == 60


def test_insert_arrow_deduplicates_by_token(front: FrontProcess) -> None:
    client = client_of(front)
    client.command("CREATE DATABASE IF NOT EXISTS fd")
    client.command(
        "CREATE TABLE IF NOT EXISTS fd.t (k String, n Int64) ENGINE = MergeTree "
        "ORDER BY k SETTINGS non_replicated_deduplication_window = 1000"
    )
    table = pa.table({"k": ["a", "b", "c"], "n": pa.array([1, 2, 3], pa.int64())})
    for _ in range(2):
        summary = client.insert_arrow(
            "fd.t", table, settings={"insert_deduplication_token": "seg-1"}
        )
        assert summary.written_rows == 3
    assert client.command("SELECT count() FROM fd.t") == 3
    client.insert_arrow("fd.t", table, settings={"insert_deduplication_token": "seg-2"})
    assert client.command("SELECT count() FROM fd.t") == 6
    # a token does not stick to the next insert: other rows without a token are stored
    other = pa.table({"k": ["d"], "n": pa.array([10], pa.int64())})
    client.insert_arrow("fd.t", other)
    assert client.command("SELECT count() FROM fd.t") == 7
    assert client.command("SELECT sum(n) FROM fd.t") == 22


def test_concurrent_clients_are_served_one_statement_at_a_time(front: FrontProcess) -> None:
    setup = client_of(front)
    setup.command("CREATE DATABASE IF NOT EXISTS fc")
    setup.command(
        "CREATE TABLE IF NOT EXISTS fc.t (w Int32, i Int32) ENGINE = MergeTree "
        "ORDER BY (w, i) SETTINGS non_replicated_deduplication_window = 1000"
    )
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            client = client_of(front)
            for i in range(10):
                tbl = pa.table(
                    {"w": pa.array([w] * 5, pa.int32()), "i": pa.array([i] * 5, pa.int32())}
                )
                # every writer uses its own tokens; a token shared by mistake would drop rows
                client.insert_arrow(
                    "fc.t", tbl, settings={"insert_deduplication_token": f"{w}:{i}"}
                )
                assert client.query(
                    "SELECT count() FROM fc.t WHERE w = %(w)s", parameters={"w": w}
                ).result_rows == [((i + 1) * 5,)]
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert setup.command("SELECT count() FROM fc.t") == 4 * 10 * 5


def test_schema_sink_flush_and_report_through_the_front(front: FrontProcess) -> None:
    client = connect(front.url, "fs")  # the worker's own path: http:// + apply_schema
    apply_schema(client, "fs")  # idempotent: the exact DDL again
    tables = set(client.command("SHOW TABLES FROM fs").split("\n"))
    assert {
        "llm_calls",
        "llm_usage_1m",
        "llm_budget_state",
        "llm_alerts",
        "llm_rejected",
        "llm_eval_candidates",
        "llm_segments",
        "llm_engine_state",
    } <= tables

    events = list(
        generate_events(
            SynthConfig(n_events=3000, seed=5, n_tenants=4, embedding_share=0.2, rate_per_s=5.0)
        )
    )
    engine = Engine(EngineConfig(prices=PriceTable(), budgets=BudgetConfig.model_validate(BUDGETS)))
    alert_ids: set[str] = set()
    sink = ClickHouseSink(client, "fs")
    for i, part in enumerate((events[:1500], events[1500:])):
        out = engine.process(part)
        alert_ids |= {a.alert_id for a in out.alerts}
        for _ in range(2):  # a retried flush writes every table again with the same tokens
            sink.add(out)
            written = sink.flush(f"flush-{i}")
            assert written["llm_calls"] > 0 and written["llm_usage_1m"] > 0

    report = build_report(client, "fs")
    expected = expected_totals(events)
    assert set(report["tenants"]) == set(expected)
    for tenant, exp in expected.items():
        got = report["tenants"][tenant]
        for key in (
            "calls",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "retrieval_calls",
            "stale_calls",
        ):
            assert got[key] == exp[key], (tenant, key)
        assert got["cost_usd"] == pytest.approx(exp["cost_usd"], rel=1e-9, abs=1e-12)
    assert alert_ids, "the budget is sized to be crossed"
    assert {a["alert_id"] for a in report["alerts"]} == alert_ids  # FINAL, millisecond times
    assert all(a["window_start"].endswith("Z") for a in report["alerts"])
    calls = client.command("SELECT count() FROM fs.llm_calls")
    assert calls == sum(t["calls"] for t in expected.values())
    states = budget_states(client, "fs")
    assert {s[0] for s in states} == set(expected)


class OutageBefore:
    """A clickhouse-connect client whose ClickHouse goes down (the front pauses) just before
    the first insert into ``table``: that insert fails as in a real outage, then the front
    comes back. Every call goes to the real client."""

    def __init__(self, client: Any, front: FrontProcess, table: str) -> None:
        self.client, self.front, self.table = client, front, table
        self.outages = 0

    def _insert(self, method: str, table: str, *args: Any, **kwargs: Any) -> Any:
        insert = getattr(self.client, method)
        if self.outages == 0 and table.endswith("." + self.table):
            self.outages += 1
            self.front.pause()
            try:
                return insert(table, *args, **kwargs)
            finally:
                self.front.resume()
        return insert(table, *args, **kwargs)

    def insert_arrow(self, table: str, *args: Any, **kwargs: Any) -> Any:
        return self._insert("insert_arrow", table, *args, **kwargs)

    def raw_insert(self, table: str, *args: Any, **kwargs: Any) -> Any:  # the sink's path
        return self._insert("raw_insert", table, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.mark.parametrize(
    "table",
    [
        "llm_calls",
        "llm_usage_1m",
        "llm_rejected",
        "llm_alerts",
        "llm_budget_state",
    ],
)
def test_flush_retried_after_an_outage_mid_flush_stores_everything_once(
    front: FrontProcess, table: str
) -> None:
    db = "fo_" + table
    events = list(
        generate_events(
            SynthConfig(n_events=2000, seed=9, n_tenants=3, embedding_share=0.0, rate_per_s=5.0)
        )
    )
    bad = [raw for raw, _ in generate_bad_events(seed=3) if len(raw) < 100_000]
    engine = Engine(EngineConfig(prices=PriceTable(), budgets=BudgetConfig.model_validate(BUDGETS)))
    out = engine.process(events + bad)
    assert out.alerts, "the budget is sized to be crossed"
    flaky = OutageBefore(connect(front.url, db), front, table)
    sink = ClickHouseSink(flaky, db)
    sink.add(out)
    with pytest.raises(OperationalError):
        sink.flush("seg-0")
    assert flaky.outages == 1
    sink.flush("seg-0")  # what the worker does: the same buffered rows, the same token

    report = build_report(flaky.client, db)
    expected = expected_totals(events)
    for tenant, exp in expected.items():
        assert report["tenants"][tenant]["calls"] == exp["calls"]
        assert report["tenants"][tenant]["cost_usd"] == pytest.approx(
            exp["cost_usd"], rel=1e-9, abs=1e-12
        )
    assert sum(t["rejected"] for t in report["tenants"].values()) == len(bad)
    assert {a["alert_id"] for a in report["alerts"]} == {a.alert_id for a in out.alerts}
    assert {s[0] for s in budget_states(flaky.client, db)} == set(expected)


def test_pause_makes_clickhouse_unreachable_until_resume(front: FrontProcess) -> None:
    client = client_of(front)
    client.command("CREATE DATABASE IF NOT EXISTS fp")
    client.command("CREATE TABLE IF NOT EXISTS fp.t (n Int64) ENGINE = MergeTree ORDER BY n")
    client.command("INSERT INTO fp.t VALUES (1)")
    front.pause()
    try:
        assert not reachable(front.url)
        with pytest.raises(OperationalError):
            client.command("SELECT count() FROM fp.t")
        with pytest.raises(OperationalError):
            client.insert_arrow("fp.t", pa.table({"n": pa.array([2], pa.int64())}))
    finally:
        front.resume()
    assert client.command("SELECT count() FROM fp.t") == 1  # the same client recovers
    client.insert_arrow("fp.t", pa.table({"n": pa.array([2], pa.int64())}))
    assert client.command("SELECT sum(n) FROM fp.t") == 3


def test_front_process_stops_cleanly(tmp_path: Path) -> None:
    proc = FrontProcess(tmp_path / "ch", tmp_path / "front.log").start()
    url = proc.url
    assert reachable(url)
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0
    assert not reachable(url)
