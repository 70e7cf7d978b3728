"""ClickHouse sink: buffers engine outputs and writes them as large columnar Arrow inserts.

Contract: ``add(output)`` buffers one :class:`~.engine.BatchOutput`; ``flush(token)``
writes everything buffered, one insert per table, each with the insert deduplication token
``f"{token}:{table}"``. The caller picks tokens that name exactly what a flush covers (e.g.
source positions), so writing the same flush twice — a retry, or a replay after a crash —
stores it once.

URLs: ``chdb://PATH`` opens the embedded engine (chDB, one path per process; ``~`` is
expanded, relative paths are relative to the working directory); ``http(s)://host:port``
speaks to a server. Credentials come from settings and are never logged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa

from llmops_stream.schemas import read_text

from .alerts import Alert
from .engine import BatchOutput
from .errors import ConfigError
from .timeutil import iso_to_ms, now_ms

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
    """Create the database and every table of ``schemas/clickhouse.sql`` if missing."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    for statement in read_text("clickhouse.sql").split("\n;\n"):
        body = "\n".join(
            line for line in statement.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if body:
            client.command(body.replace("{db}", database))


def _strings(values: Any) -> pa.Array:
    return pa.array(values, type=pa.string())


def _ms(values: Any) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64), type=pa.int64()).cast(_TS_MS)


# Only what Arrow cannot infer from the numpy dtype needs a type here; ClickHouse casts
# numeric Arrow columns to the table's types on insert.
_CALL_TYPES: dict[str, Any] = {"ts": _ms}


def _arrow(columns: dict[str, list[Any]], types: dict[str, Any]) -> pa.Table:
    """Concatenate buffered column chunks into one Arrow table.

    Object columns become strings, numeric ones keep their numpy dtype; ``types`` maps a
    name to a converter function or an Arrow list type (nested Python lists).
    """
    arrays = {}
    for name, chunks in columns.items():
        kind = types.get(name)
        if kind == "matrix":  # 2-d numpy chunks → one Array(...) per row
            mat = np.concatenate(chunks)
            offsets = np.arange(0, mat.size + 1, max(mat.shape[1], 1), dtype=np.int32)
            arrays[name] = pa.ListArray.from_arrays(offsets, mat.reshape(-1))
            continue
        if isinstance(kind, pa.ListType):
            arrays[name] = pa.array([x for c in chunks for x in c], type=kind)
            continue
        values = np.concatenate(chunks)
        if callable(kind):
            arrays[name] = kind(values)
        elif values.dtype == object:
            arrays[name] = pa.array(values, type=pa.string())
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


_USAGE_TYPES: dict[str, Any] = {
    "minute": lambda v: pa.array(np.asarray(v, np.int64)).cast(_TS_S),
    "latency_hist": "matrix",
    "stale_lag_hist": "matrix",
}
_REJECTED_TYPES: dict[str, Any] = {}
_CANDIDATE_TYPES: dict[str, Any] = {
    "ts": _ms,
    "embedding": pa.list_(pa.float32()),
}


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
        """Buffer one batch's outputs (no I/O)."""
        for buf, cols in (
            (self._calls, out.calls),
            (self._usage, out.usage),
            (self._rejected, out.rejected),
            (self._candidates, out.candidates),
        ):
            for name, values in cols.items():
                buf.setdefault(name, []).append(
                    values if isinstance(values, np.ndarray) else _as_array(values)
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
            tbl = _arrow(self._calls, _CALL_TYPES)
            tbl = tbl.append_column(
                "ingested_at", pa.array(np.full(tbl.num_rows, ingested, np.int64)).cast(_TS_MS)
            )
            written["llm_calls"] = self._insert("llm_calls", tbl, token)
        if self._usage and sum(len(c) for c in self._usage["minute"]):
            written["llm_usage_1m"] = self._insert(
                "llm_usage_1m", _arrow(self._usage, _USAGE_TYPES), token
            )
        if self._rejected and sum(len(c) for c in self._rejected["reason"]):
            # the buffer stays intact until every insert succeeded: a failed flush is retried
            raw = [bytes(x) for c in self._rejected["raw"] for x in c]
            tbl = _arrow({k: v for k, v in self._rejected.items() if k != "raw"},
                         _REJECTED_TYPES)
            tbl = tbl.append_column("raw", pa.array(raw, type=pa.binary()))
            tbl = tbl.append_column(
                "received_at", pa.array(np.full(tbl.num_rows, ingested, np.int64)).cast(_TS_MS)
            )
            written["llm_rejected"] = self._insert("llm_rejected", tbl, token)
        if self._candidates and sum(len(c) for c in self._candidates["event_id"]):
            written["llm_eval_candidates"] = self._insert(
                "llm_eval_candidates", _arrow(self._candidates, _CANDIDATE_TYPES), token
            )
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
        self.client.insert_arrow(
            f"{self.database}.{table}",
            tbl,
            settings={"insert_deduplication_token": f"{token}:{table}"},
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


def latest_states(states: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the last row of each (tenant, budget) of concatenated state columns."""
    keys = pd.MultiIndex.from_arrays([states["tenant_id"], states["budget_id"]])
    keep = ~keys.duplicated(keep="last")
    return {k: v[keep] for k, v in states.items()}


def states_table(states: dict[str, np.ndarray]) -> pa.Table:
    """``llm_budget_state`` rows (the latest per tenant and budget) as an Arrow table.

    ``version`` is the write time, so ReplacingMergeTree keeps the newest state.
    """
    s = latest_states(states)
    n = len(s["tenant_id"])
    now = now_ms()
    return pa.table(
        {
            "tenant_id": pa.array(s["tenant_id"], pa.string()),
            "budget_id": pa.array(s["budget_id"], pa.string()),
            "window": pa.array(s["window"], pa.string()),
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
