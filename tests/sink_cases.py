"""Engine outputs with awkward values, and a check that ClickHouse stores them exactly.

Used by the sink's unit tests (Arrow encoding, no ClickHouse) and its integration tests
(the same outputs through chDB and through the HTTP front). Every value the sink is given
is compared with what ClickHouse returns: strings (non-ASCII, empty, with NUL, long),
floats (NaN, ±inf, subnormals), the largest integers, histograms, nested embeddings, raw
bytes that are not UTF-8, empty batches.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from llmops_stream.stream.clickhouse.sink import ClickHouseSink, latest_states
from llmops_stream.stream.core.budget_state import concat_states
from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import BatchOutput, Engine, EngineConfig
from llmops_stream.stream.core.evalset import load_eval_sets
from llmops_stream.stream.core.interning import Coded
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.core.timeutil import iso_to_ms
from llmops_stream.stream.dev.synth import (
    SynthConfig,
    generate_bad_events,
    generate_eval_set,
    generate_events,
    write_jsonl,
)

MODEL = "text-embedding-3-small"
BUDGETS = {"default": [{"id": "h", "limit_usd": 0.5, "window": "1h", "soft": [0.5], "hard": 1.0}]}
# the same in every batch, so that dictionaries of different chunks share entries
ODD_STRINGS = ("ünïcødé €😀 日本語", "", "nul\x00byte", "x" * 5000)
ODD_FLOATS = (math.nan, math.inf, -math.inf, 5e-324, -0.0, 1e308)
ODD_FLOAT32 = (math.nan, math.inf, -math.inf, 1e-45, 3.4028235e38)
BIG = (2**63 - 1, 2**62, 1)  # int64 columns stored as UInt64/Int64


def engine_outputs(tmp: Path, *, n_events: int = 1500, batch: int = 500) -> list[BatchOutput]:
    """Outputs of a few engine batches (with an empty one), mangled with awkward values.

    Events carry embeddings against an eval set (candidates), tenants cross their budgets
    (alerts, budget states) and bad events are mixed in (rejected rows).
    """
    path = tmp / "eval.jsonl"
    write_jsonl(path, generate_eval_set(n=200, dim=384, seed=2, embedding_model=MODEL))
    events = list(
        generate_events(
            SynthConfig(
                n_events=n_events,
                seed=7,
                n_tenants=5,
                rate_per_s=5.0,
                embedding_share=0.3,
                embedding_model=MODEL,
                drift_start=0.5,
                drift_end=0.9,
            )
        )
    )
    bad = [raw for raw, _ in generate_bad_events(seed=2) if len(raw) < 100_000]
    for i, raw in enumerate(bad):
        events.insert((i * 37) % len(events), raw)
    engine = Engine(
        EngineConfig(
            prices=PriceTable(),
            budgets=BudgetConfig.model_validate(BUDGETS),
            eval_sets=load_eval_sets(path),
            candidate_share=1.0,
        )
    )
    outs = []
    cuts = [*range(0, len(events), batch), len(events)]
    for i, (start, end) in enumerate(zip(cuts, cuts[1:], strict=False)):
        if i == 1:  # an empty batch between two full ones
            outs.append(engine.process([], source="llm.calls", offsets=np.zeros(0, np.int64)))
        out = engine.process(
            events[start:end],
            source="llm.calls",
            partitions=np.full(end - start, 3, np.int32),
            offsets=np.arange(start, end, dtype=np.int64),
        )
        _mangle(out)
        outs.append(out)
    assert sum(len(o.calls["event_id"]) for o in outs) > 1000
    assert sum(len(o.candidates["event_id"]) for o in outs) > 0
    assert sum(len(o.rejected["reason"]) for o in outs) > 0
    assert sum(len(o.alerts) for o in outs) > 0
    return outs


def _mangle(out: BatchOutput) -> None:
    """Put the awkward values into the first rows of every column where they fit."""
    for values in out.calls.values():
        if values.dtype == object:
            values[: len(ODD_STRINGS)] = ODD_STRINGS
    out.calls["cost_usd"][: len(ODD_FLOATS)] = ODD_FLOATS
    for name in ("latency_ms", "ttft_ms", "centroid_sim", "nn_sim"):
        out.calls[name][: len(ODD_FLOAT32)] = ODD_FLOAT32
    for name in ("input_tokens", "kafka_offset"):
        out.calls[name][: len(BIG)] = BIG
    out.usage["input_tokens"][: len(BIG)] = BIG
    for name in ("tenant_id", "app", "model"):
        out.usage[name][:2] = ODD_STRINGS[:2]
    if len(out.candidates["event_id"]):
        out.candidates["nearest_eval_id"][0] = ODD_STRINGS[0]
        out.candidates["app"][0] = ODD_STRINGS[1]
    if out.rejected["detail"]:
        out.rejected["detail"][0] = ODD_STRINGS[0]
        out.rejected["raw"][0] = b"\xff\xfe not UTF-8 \x00"
    # the string columns the sink takes as codes: the mangled values, interned
    for table, attr in (("llm_calls", "calls"), ("llm_usage_1m", "usage")):
        for name, coded in out.coded[table].items():
            values = getattr(out, attr)[name]
            out.coded[table][name] = Coded.of(coded.interner.encode(values), coded.interner)


def with_huge_counts(outs: list[BatchOutput]) -> list[BatchOutput]:
    """``outs`` with histogram counts that need 64 bits (latency) and 32 bits (lags)."""
    for out in outs:
        if len(out.usage["minute"]):
            out.usage["latency_hist"][0, 0] = 2**64 - 1
            out.usage["latency_hist"][-1, -1] = 2**63
            out.usage["stale_lag_hist"][0, 1] = 70_000
            break
    return outs


# ------------------------------------------------------------------ expected vs stored
def norm(value: Any) -> Any:
    """A value comparable with ==, NaN included; lists as tuples."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(norm(v) for v in value)
    if isinstance(value, bytes):
        return value.hex().upper()
    return value


def _rows(columns: dict[str, list[Any]]) -> Counter[tuple[Any, ...]]:
    names = list(columns)
    return Counter(tuple(norm(columns[n][i]) for n in names) for i in range(len(columns[names[0]])))


def _values(chunks: list[Any]) -> list[Any]:
    out: list[Any] = []
    for c in chunks:
        out += c.tolist() if isinstance(c, np.ndarray) else list(c)
    return out


def expected(outs: list[BatchOutput]) -> dict[str, Counter[tuple[Any, ...]]]:
    """Rows per table, as the sink is given them (columns in the engine's order)."""
    tables: dict[str, Counter[tuple[Any, ...]]] = {}
    for table, attr in (
        ("llm_calls", "calls"),
        ("llm_usage_1m", "usage"),
        ("llm_rejected", "rejected"),
        ("llm_eval_candidates", "candidates"),
    ):
        names = list(getattr(outs[0], attr))
        tables[table] = _rows({n: _values([getattr(o, attr)[n] for o in outs]) for n in names})
    alerts = [a for o in outs for a in o.alerts]
    tables["llm_alerts"] = Counter(
        (
            a.alert_id,
            a.status,
            a.type,
            a.severity,
            a.tenant_id,
            a.app,
            a.metric,
            a.value,
            a.threshold,
            iso_to_ms(a.window_start),
            iso_to_ms(a.window_end),
            iso_to_ms(a.emitted_at),
        )
        for a in alerts
    )
    states = latest_states(concat_states([o.budget_states for o in outs]))
    tables["llm_budget_state"] = _rows(
        {
            k: states[k].tolist()
            for k in (
                "tenant_id",
                "budget_id",
                "window",
                "limit_usd",
                "spend_usd",
                "remaining_usd",
                "status",
                "as_of_ms",
                "period_start_ms",
            )
        }
    )
    return tables


_SQL = {  # how a column is read back to compare with what was given
    "ts": "toUnixTimestamp64Milli(ts)",
    "minute": "toUnixTimestamp(minute)",
    "raw": "hex(raw)",
    "as_of_ms": "toUnixTimestamp64Milli(as_of)",
    "period_start_ms": "toUnixTimestamp64Milli(period_start)",
}


def stored(client: Any, db: str, outs: list[BatchOutput]) -> dict[str, Counter[tuple[Any, ...]]]:
    """Rows per table as ClickHouse returns them (ReplacingMergeTree tables with FINAL)."""
    tables: dict[str, Counter[tuple[Any, ...]]] = {}
    for table, attr in (
        ("llm_calls", "calls"),
        ("llm_usage_1m", "usage"),
        ("llm_rejected", "rejected"),
        ("llm_eval_candidates", "candidates"),
    ):
        cols = ", ".join(_SQL.get(n, n) for n in getattr(outs[0], attr))
        final = " FINAL" if table == "llm_eval_candidates" else ""
        rows = client.query(f"SELECT {cols} FROM {db}.{table}{final}").result_rows  # noqa: S608
        tables[table] = Counter(tuple(norm(v) for v in row) for row in rows)
    rows = client.query(
        "SELECT alert_id, status, type, severity, tenant_id, app, metric, value, threshold, "  # noqa: S608
        "toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end), "
        f"toUnixTimestamp64Milli(emitted_at) FROM {db}.llm_alerts FINAL"
    ).result_rows
    tables["llm_alerts"] = Counter(tuple(row) for row in rows)
    cols = ", ".join(
        _SQL.get(n, n)
        for n in (
            "tenant_id",
            "budget_id",
            "window",
            "limit_usd",
            "spend_usd",
            "remaining_usd",
            "status",
            "as_of_ms",
            "period_start_ms",
        )
    )
    rows = client.query(f"SELECT {cols} FROM {db}.llm_budget_state FINAL").result_rows  # noqa: S608
    tables["llm_budget_state"] = Counter(tuple(norm(v) for v in row) for row in rows)
    return tables


def check_roundtrip(client: Any, db: str, outs: list[BatchOutput]) -> None:
    """Flush ``outs`` into ``db`` (schema applied) and compare; the same flush again with
    the same token stores nothing more, with a new token everything once more."""
    want = expected(outs)

    def flush(token: str) -> dict[str, int]:
        sink = ClickHouseSink(client, db)
        for out in outs:
            sink.add(out)
        return sink.flush(token)

    written = flush("seg-1")
    assert written == {t: sum(rows.values()) for t, rows in want.items()}
    got = stored(client, db, outs)
    for table, rows in want.items():
        assert got[table] == rows, table
    assert flush("seg-1") == written  # a retry: written again, stored once
    assert stored(client, db, outs) == got
    flush("seg-2")
    again = stored(client, db, outs)
    for table in ("llm_calls", "llm_usage_1m", "llm_rejected"):  # plain MergeTree
        assert again[table] == got[table] + got[table], table


def chdb_roundtrip(path: str) -> None:
    """:func:`check_roundtrip` through the embedded engine at ``path`` (run it in a process
    of its own: chDB opens one path per process)."""
    from llmops_stream.stream.clickhouse.sink import apply_schema, connect

    tmp = Path(path)
    client = connect(f"chdb://{tmp / 'ch'}", "rt")
    check_roundtrip(client, "rt", engine_outputs(tmp))
    apply_schema(client, "rt_huge")
    check_roundtrip(client, "rt_huge", with_huge_counts(engine_outputs(tmp)))
    client.close()
