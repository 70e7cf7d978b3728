"""ClickHouse sink: buffers engine outputs and writes them as large columnar Arrow inserts.

Contract: ``add(output)`` buffers one :class:`~.engine.BatchOutput`; ``flush(token)``
writes everything buffered, one insert per table, each with the insert deduplication token
``f"{token}:{table}"``. The caller picks tokens that name exactly what a flush covers (e.g.
source positions), so writing the same flush twice — a retry, or a replay after a crash —
stores it once.

The worker flushes on a background thread while the next batch is processed, so a flush
holds the GIL as little as it can: values held as Python objects (strings, the rare nested
lists) are read once, by Arrow's converter, and everything after that is Arrow or numpy
work, which runs without the GIL. ``LowCardinality`` columns go as Arrow dictionaries
(ClickHouse reads them into its own dictionary), histogram counts in the narrowest integer
type that holds them (ClickHouse casts them back to the column's type), and the Arrow IPC
payload goes to clickhouse-connect's ``raw_insert`` as a buffer view, which it writes out
without copying. What is stored is the same as with plain string and UInt64 columns.

URLs: ``chdb://PATH`` opens the embedded engine (chDB, one path per process; ``~`` is
expanded, relative paths are relative to the working directory); ``http(s)://host:port``
speaks to a server. Credentials come from settings and are never logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import msgspec
import numpy as np
import pyarrow as pa

from llmops_stream.schemas import read_text
from llmops_stream.stream.core.alerts import Alert
from llmops_stream.stream.core.budget_state import latest_states
from llmops_stream.stream.core.engine import BatchOutput
from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.core.interning import INTERNED, Coded
from llmops_stream.stream.core.timeutil import iso_to_ms, now_ms

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

_TS_MS = pa.timestamp("ms", tz="UTC")
_TS_S = pa.timestamp("s", tz="UTC")


def connect(
    url: str, database: str, *, user: str = "default", password: str = "", create: bool = True
) -> Any:
    """A clickhouse-connect client for ``url``, with ``database`` created and the schema applied.

    Raises :class:`ConfigError` for a malformed URL or database name, or an unreachable server.
    """
    import clickhouse_connect  # noqa: PLC0415 - heavy import, only when a sink is used

    if not _DB_NAME.match(database):
        raise ConfigError(f"invalid ClickHouse database name {database!r} (letters, digits, _)")
    parsed = urlparse(url)
    try:
        if parsed.scheme == "chdb":
            path = os.path.expanduser(url[len("chdb://") :]) or "."
            os.makedirs(path, exist_ok=True)
            client = clickhouse_connect.get_client(interface="chdb", path=path)
        elif parsed.scheme in ("http", "https"):
            client = clickhouse_connect.get_client(
                host=parsed.hostname or "localhost",
                port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
                secure=parsed.scheme == "https",
                username=parsed.username or user,
                password=parsed.password or password,
            )
        else:
            raise ConfigError(
                f"unsupported ClickHouse URL {_redact(url)!r}: use chdb://PATH or http(s)://HOST:PORT"
            )
    except ConfigError:
        raise
    except Exception as exc:  # connection errors come in many types across interfaces
        raise ConfigError(f"cannot open ClickHouse at {_redact(url)}: {exc}") from exc
    if create:
        apply_schema(client, database)
    return client


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def apply_schema(client: Any, database: str) -> None:
    """Create the database and every table of ``schemas/clickhouse.sql`` if missing.

    ``ALTER TABLE {db}.t MODIFY TTL expr`` statements (TTLs added after a table was first
    created) run only when the table does not show exactly ``TTL expr`` already (as
    ``system.tables.engine_full`` prints it, whitespace aside): a start then changes
    nothing, not even a ``MATERIALIZE TTL`` mutation on servers that would run one again.
    """
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    modify_ttl = re.compile(r"ALTER TABLE \{db\}\.(\w+) MODIFY TTL (.+)", re.S)
    for statement in read_text("clickhouse.sql").split("\n;\n"):
        body = "\n".join(
            line for line in statement.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if not body:
            continue
        ttl = modify_ttl.fullmatch(body)
        if ttl is not None:
            rows = client.query(
                "SELECT engine_full FROM system.tables WHERE database = %(d)s AND name = %(t)s",
                parameters={"d": database, "t": ttl.group(1)},
            ).result_rows
            want = " TTL " + " ".join(ttl.group(2).split()) + " "
            if rows and want in " " + " ".join(str(rows[0][0]).split()) + " ":
                continue
        client.command(body.replace("{db}", database))


def _strings(values: Any) -> pa.Array:
    return pa.array(values, type=pa.string())


def _ms(values: Any) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64), type=_TS_MS)


# ----------------------------------------------------------------- column encoders
# An encoder turns one buffered column (the list of chunks added batch by batch) into one
# Arrow array. Numeric chunks keep their numpy dtype: ClickHouse casts numeric Arrow
# columns to the table's types on insert.
Encoder = Callable[[list[Any]], pa.Array]


def _concat(chunks: list[Any]) -> np.ndarray:
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _plain(chunks: list[Any]) -> pa.Array:
    """Numeric chunks as their numpy dtype; object chunks (``str``) as a string array."""
    if isinstance(chunks[0], Coded):
        return _utf8([c.strings() for c in chunks])
    if chunks[0].dtype == object:
        return _utf8(chunks)
    return pa.array(_concat(chunks))


def _utf8(chunks: list[Any]) -> pa.Array:
    """Object chunks of ``str`` as one Arrow string array.

    Reading the values is the one step that needs the GIL, and it is bound by memory
    latency (the ``str`` objects lie scattered over the heap), so each value is visited
    once: chunk by chunk by Arrow's converter. Concatenating the object chunks first would
    touch every object one more time (reference counts); Arrow joins its own chunks
    without the GIL.
    """
    arrays = [pa.array(c, type=pa.string()) for c in chunks]
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _dictionary(chunks: list[Any]) -> pa.Array:
    """Low-cardinality strings as a dictionary array.

    The payload shrinks to one index per row (these strings were half of the call payload's
    bytes), and ClickHouse reads Arrow's dictionary into its ``LowCardinality`` column.
    Chunks the engine handed over as codes of one interner (:class:`.interning.Coded`)
    become the dictionary array directly, without touching a string per row; others are
    read as strings and hashed by Arrow (without the GIL).
    """
    if all(isinstance(c, Coded) for c in chunks) and all(
        c.interner is chunks[0].interner for c in chunks
    ):
        return _coded_dictionary(chunks)
    plain = [c.strings() if isinstance(c, Coded) else c for c in chunks]
    return _utf8(plain).dictionary_encode()


def _coded_dictionary(chunks: list[Coded]) -> pa.Array:
    """Codes of one interner → a dictionary array whose dictionary holds only the values
    used, in code order: O(rows + dictionary size) of numpy and Arrow work."""
    interner = chunks[0].interner
    codes = _concat([c.codes for c in chunks])
    size = max(c.size for c in chunks)
    used = np.zeros(size, dtype=bool)
    used[codes] = True
    remap = np.cumsum(used, dtype=np.int32) - 1
    dictionary = interner.arrow(size).take(pa.array(np.flatnonzero(used)))
    return pa.DictionaryArray.from_arrays(pa.array(remap[codes], type=pa.int32()), dictionary)


def _ms_chunks(chunks: list[Any]) -> pa.Array:
    """Epoch milliseconds → ``DateTime64(3, 'UTC')``."""
    return pa.array(_concat(chunks).astype(np.int64, copy=False), type=_TS_MS)


def _seconds_chunks(chunks: list[Any]) -> pa.Array:
    """Epoch seconds → ``DateTime('UTC')``."""
    return pa.array(_concat(chunks).astype(np.int64, copy=False), type=_TS_S)


def _counts(chunks: list[Any]) -> pa.Array:
    """2-d count chunks (one row per table row) → ``Array(UInt64)``, one list per row.

    The counts go in the narrowest unsigned type that holds the largest of them: histogram
    bins are mostly zero and small, and at 8 bytes each they were most of the usage
    payload. ClickHouse casts the lists back to ``Array(UInt64)``, so the stored values are
    the same.
    """
    top = max((int(c.max()) for c in chunks if c.size), default=0)
    mat = np.concatenate(chunks, dtype=np.min_scalar_type(top), casting="unsafe")
    offsets = np.arange(0, mat.size + 1, max(mat.shape[1], 1), dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, mat.reshape(-1))


def _lists(kind: pa.DataType) -> Encoder:
    """Chunks of Python lists (e.g. embeddings) → a list array of ``kind``."""

    def encode(chunks: list[Any]) -> pa.Array:
        return pa.array([x for c in chunks for x in c], type=kind)

    return encode


def _table(columns: dict[str, list[Any]], encoders: dict[str, Encoder]) -> pa.Table:
    """One Arrow table of buffered columns; columns without an encoder are :func:`_plain`."""
    return pa.table({name: encoders.get(name, _plain)(chunks) for name, chunks in columns.items()})


def _with_dictionaries(names: tuple[str, ...], **others: Encoder) -> dict[str, Encoder]:
    return {**dict.fromkeys(names, _dictionary), **others}


# Encoders by table. Every LowCardinality(String) column of schemas/clickhouse.sql goes as
# a dictionary, and only those (a unit test keeps this in step with the schema).
ENCODERS: dict[str, dict[str, Encoder]] = {
    "llm_calls": _with_dictionaries(
        (*INTERNED, "status", "eval_set_version", "source"),
        ts=_ms_chunks,
    ),
    "llm_usage_1m": _with_dictionaries(
        ("tenant_id", "app", "model", "prompt_version", "index_version"),
        minute=_seconds_chunks,
        latency_hist=_counts,
        stale_lag_hist=_counts,
    ),
    "llm_rejected": _with_dictionaries(("reason", "source")),
    "llm_eval_candidates": _with_dictionaries(
        ("tenant_id", "app", "embedding_model", "eval_set_version"),
        ts=_ms_chunks,
        embedding=_lists(pa.list_(pa.float32())),
    ),
}


def arrow_payload(tbl: pa.Table, compression: str | None = None) -> memoryview:
    """``tbl`` in the Arrow IPC file format (ClickHouse's ``Arrow``), as a view of the buffer.

    A view rather than the pyarrow buffer itself: clickhouse-connect's chDB backend writes a
    bytes-like block to its input file as it is, but first copies a pyarrow buffer into a
    ``bytes`` object, holding the GIL (over HTTP, either is sent as it is). Arrow writes the
    IPC data without the GIL.
    """
    options = pa.ipc.IpcWriteOptions(compression=compression) if compression else None
    out = pa.BufferOutputStream()
    with pa.ipc.new_file(out, tbl.schema, options=options) as writer:
        writer.write_table(tbl)
    return memoryview(out.getvalue())


@dataclass
class ClickHouseSink:
    """Buffers :class:`BatchOutput` columns and inserts them table by table on flush."""

    client: Any
    database: str
    _calls: dict[str, list[Any]] = field(default_factory=dict)
    _usage: dict[str, list[Any]] = field(default_factory=dict)
    _rejected: dict[str, list[Any]] = field(default_factory=dict)
    _candidates: dict[str, list[Any]] = field(default_factory=dict)
    _alerts: list[Alert] = field(default_factory=list)
    _states: dict[str, list[Any]] = field(default_factory=dict)
    rows_buffered: int = 0

    def add(self, out: BatchOutput) -> None:
        """Buffer one batch's outputs (no I/O); string columns the engine also gave as codes
        are kept as codes."""
        for buf, cols, coded in (
            (self._calls, out.calls, out.coded.get("llm_calls", {})),
            (self._usage, out.usage, out.coded.get("llm_usage_1m", {})),
            (self._rejected, out.rejected, {}),
            (self._candidates, out.candidates, {}),
        ):
            for name, values in cols.items():
                buf.setdefault(name, []).append(
                    coded[name]
                    if name in coded
                    else values
                    if isinstance(values, np.ndarray)
                    else _as_array(values)
                )
        self._alerts.extend(out.alerts)
        self.add_states(out.budget_states)
        self.rows_buffered += len(out.calls["event_id"])

    def add_alerts(self, alerts: list[Alert]) -> None:
        """Buffer alerts produced outside a batch (e.g. windows closed at the end)."""
        self._alerts.extend(alerts)

    def add_states(self, states: dict[str, np.ndarray]) -> None:
        """Buffer budget-state columns (``BudgetTracker.state_columns()``); latest wins."""
        for name, values in states.items():
            self._states.setdefault(name, []).append(values)

    def flush(self, token: str) -> dict[str, int]:
        """Insert everything buffered; returns rows written per table. Idempotent per token."""
        written: dict[str, int] = {}
        ingested = now_ms()
        if self._calls and sum(len(c) for c in self._calls["event_id"]):
            tbl = _table(self._calls, ENCODERS["llm_calls"])
            tbl = tbl.append_column("ingested_at", _ms(np.full(tbl.num_rows, ingested)))
            written["llm_calls"] = self._insert("llm_calls", tbl, token)
        if self._usage and sum(len(c) for c in self._usage["minute"]):
            written["llm_usage_1m"] = self._insert(
                "llm_usage_1m", _table(self._usage, ENCODERS["llm_usage_1m"]), token
            )
        if self._rejected and sum(len(c) for c in self._rejected["reason"]):
            # the buffer stays intact until every insert succeeded: a failed flush is retried
            raw = [bytes(x) for c in self._rejected["raw"] for x in c]
            tbl = _table(
                {k: v for k, v in self._rejected.items() if k != "raw"}, ENCODERS["llm_rejected"]
            )
            tbl = tbl.append_column("raw", pa.array(raw, type=pa.binary()))
            tbl = tbl.append_column("received_at", _ms(np.full(tbl.num_rows, ingested)))
            written["llm_rejected"] = self._insert("llm_rejected", tbl, token)
        if self._candidates and sum(len(c) for c in self._candidates["event_id"]):
            tbl = _table(self._candidates, ENCODERS["llm_eval_candidates"])
            written["llm_eval_candidates"] = self._insert("llm_eval_candidates", tbl, token)
        if self._alerts:
            written["llm_alerts"] = self._insert("llm_alerts", alerts_table(self._alerts), token)
        if self._states and sum(len(c) for c in self._states["tenant_id"]):
            states = {k: np.concatenate(v) for k, v in self._states.items()}
            written["llm_budget_state"] = self._insert(
                "llm_budget_state", states_table(states), token
            )
        self._calls, self._usage, self._rejected, self._candidates = {}, {}, {}, {}
        self._alerts, self._states = [], {}
        self.rows_buffered = 0
        return written

    def _insert(self, table: str, tbl: pa.Table, token: str) -> int:
        # insert_arrow's request, with the payload as a view (see arrow_payload) and the
        # IPC compression insert_arrow picks for this client (none for chDB)
        compression = getattr(self.client, "write_compression", None)
        if compression not in ("lz4", "zstd"):
            compression = None
        self.client.raw_insert(
            f"{self.database}.{table}",
            column_names=tbl.column_names,
            insert_block=arrow_payload(tbl, compression),
            settings={"insert_deduplication_token": f"{token}:{table}"},
            fmt="Arrow",
        )
        return int(tbl.num_rows)


def _as_array(values: Any) -> np.ndarray:
    """A list column as a 1-d object array (keeps nested lists as elements)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def alerts_table(alerts: list[Alert]) -> pa.Table:
    """``llm_alerts`` rows as an Arrow table."""
    return pa.table(
        {
            "alert_id": _strings([a.alert_id for a in alerts]),
            "status": _strings([a.status for a in alerts]),
            "type": _strings([a.type for a in alerts]),
            "severity": _strings([a.severity for a in alerts]),
            "tenant_id": _strings([a.tenant_id for a in alerts]),
            "app": _strings([a.app for a in alerts]),
            "metric": _strings([a.metric for a in alerts]),
            "value": pa.array([a.value for a in alerts], type=pa.float64()),
            "threshold": pa.array([a.threshold for a in alerts], type=pa.float64()),
            "window_start": _ms([iso_to_ms(a.window_start) for a in alerts]),
            "window_end": _ms([iso_to_ms(a.window_end) for a in alerts]),
            "emitted_at": _ms([iso_to_ms(a.emitted_at) for a in alerts]),
            "details": _strings([msgspec.json.encode(a.details).decode() for a in alerts]),
        }
    )


def states_table(states: dict[str, np.ndarray]) -> pa.Table:
    """``llm_budget_state`` rows (the latest per tenant, budget and period) as an Arrow table.

    ``version`` is the write time, so ReplacingMergeTree keeps the newest state.
    """
    s = latest_states(states)
    day = s["window"] == "day"
    month = s["window"] == "month"
    start = s["period_start_ms"].astype("datetime64[ms]")
    period = np.where(
        day,
        np.datetime_as_string(start, unit="D"),
        np.where(month, np.datetime_as_string(start, unit="M"), ""),
    )
    n = len(s["tenant_id"])
    now = now_ms()
    return pa.table(
        {
            "tenant_id": pa.array(s["tenant_id"], pa.string()),
            "budget_id": pa.array(s["budget_id"], pa.string()),
            "window": pa.array(s["window"], pa.string()),
            "period": pa.array(period.astype(object), pa.string()),
            "limit_usd": pa.array(s["limit_usd"], pa.float64()),
            "spend_usd": pa.array(s["spend_usd"], pa.float64()),
            "remaining_usd": pa.array(s["remaining_usd"], pa.float64()),
            "status": pa.array(s["status"], pa.string()),
            "as_of": _ms(s["as_of_ms"]),
            "period_start": _ms(s["period_start_ms"]),
            "updated_at": _ms(np.full(n, now)),
            "version": pa.array(np.full(n, now, dtype=np.uint64)),
        }
    )
