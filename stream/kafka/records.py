"""Kafka records of the engine's outputs: alerts, DLQ, budget state, eval-set candidates.

Pure functions from :class:`~.engine.BatchOutput` to ``Record`` tuples; the worker sends
alerts, DLQ records and candidates inside its Kafka transaction, and budget states on its
state publisher (:mod:`.states`). Topic names follow SPEC §4, with an optional prefix.

- ``llm.alerts.<type>``: key tenant, value the alert JSON (``alerts.Alert``).
- ``llm.calls.dlq``: value = the original bytes; the reason, detail and source position
  travel in headers (``reason``, ``detail``, ``tenant_id``, ``source_topic``,
  ``source_partition``, ``source_offset``). A record never exceeds ``max_record_bytes``
  (:data:`DLQ_MAX_RECORD_BYTES` by default): a message too large for that keeps only a
  prefix of its bytes, with headers ``truncated`` = ``1`` and ``original_size`` (its size in
  bytes). The whole message is always stored in ClickHouse (``llm_rejected.raw``).
- ``llm.budget.state`` (compacted): key tenant, value ``{"tenant_id", "status", "as_of",
  "budgets": [...]}`` with every budget of the tenant, so the latest record is complete.
- ``llm.eval.candidates``: key tenant, value JSON with the embedding as base64 float32.
"""

from __future__ import annotations

import base64
from typing import Any, NamedTuple

import msgspec
import numpy as np
import orjson

from llmops_stream.stream.core.alerts import ALERT_TYPES, Alert
from llmops_stream.stream.core.budget_state import latest_states
from llmops_stream.stream.core.timeutil import ms_to_iso

DLQ = "llm.calls.dlq"
BUDGET_STATE = "llm.budget.state"
CANDIDATES = "llm.eval.candidates"
ALERT_TOPICS = {t: f"llm.alerts.{t}" for t in ALERT_TYPES}
STATUSES = ("ok", "warn", "exceeded")
_STATUS_ORDER = {s: i for i, s in enumerate(STATUSES)}

DLQ_MAX_RECORD_BYTES = 1_000_000
"""Default bound of a DLQ record: value + key + header keys and values, plus
:data:`DLQ_RECORD_MARGIN`. A rejected message may be as large as the broker accepts (its
``message.max.bytes``, 1 MiB + 12 B by default), and its headers come on top: sent whole, it
could exceed the producer's ``max_request_size`` (aiokafka: 1,048,576 by default), fail on
every retry and block its partition. 1,000,000 leaves room below both defaults; a caller whose
producer or DLQ topic has a lower limit passes that limit."""

DLQ_RECORD_MARGIN = 512
"""Bytes kept free within ``max_record_bytes`` for the framing of the record and its batch:
the batch header (61 B), the record overhead (at most 21 B) and the length varints of the
key, the value, the header count and each header's name and value (under 40 B for the eight
headers of a DLQ record): about 120 B in all."""

_DLQ_TRUNCATED = ("truncated", b"1")


class Record(NamedTuple):
    """One Kafka record to send."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def output_topics(prefix: str = "") -> dict[str, str]:
    """Every output topic by role, with ``prefix`` applied."""
    topics = {"dlq": DLQ, "budget_state": BUDGET_STATE, "candidates": CANDIDATES}
    topics.update({f"alerts.{t}": name for t, name in ALERT_TOPICS.items()})
    return {role: prefix + name for role, name in topics.items()}


def alert_records(alerts: list[Alert], prefix: str = "") -> list[Record]:
    """One record per alert on its type's topic."""
    enc = msgspec.json.encode
    return [Record(prefix + ALERT_TOPICS[a.type], a.tenant_id.encode(), enc(a), []) for a in alerts]


def dlq_records(
    rejected: dict[str, Any],
    topic: str,
    prefix: str = "",
    max_record_bytes: int = DLQ_MAX_RECORD_BYTES,
) -> list[Record]:
    """DLQ records of a batch's ``rejected`` columns (see ``engine.BatchOutput``).

    Each record stays within ``max_record_bytes`` (value + key + headers +
    :data:`DLQ_RECORD_MARGIN`): a longer message is cut to the prefix that fits, marked by
    the headers ``truncated`` and ``original_size``. Raises ``ValueError`` if the key and
    headers alone do not fit (a limit far below any broker's: the decoder bounds ids and
    details to a few KB).
    """
    out = []
    for i, raw in enumerate(rejected["raw"]):
        tenant = rejected["tenant_id"][i]
        key = tenant.encode() if tenant else None
        value = bytes(raw)
        headers = [
            ("reason", rejected["reason"][i].encode()),
            ("detail", rejected["detail"][i].encode()),
            ("tenant_id", tenant.encode()),
            ("source_topic", topic.encode()),
            ("source_partition", str(int(rejected["kafka_partition"][i])).encode()),
            ("source_offset", str(int(rejected["kafka_offset"][i])).encode()),
        ]
        room = max_record_bytes - DLQ_RECORD_MARGIN - record_size(key, b"", headers)
        if len(value) > room:
            headers += [_DLQ_TRUNCATED, ("original_size", str(len(value)).encode())]
            room = max_record_bytes - DLQ_RECORD_MARGIN - record_size(key, b"", headers)
            if room < 0:
                raise ValueError(
                    f"a DLQ record's key and headers alone exceed max_record_bytes "
                    f"({max_record_bytes}) less the margin ({DLQ_RECORD_MARGIN})"
                )
            value = value[:room]
        out.append(Record(prefix + DLQ, key, value, headers))
    return out


def record_size(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """Bytes of a record's key, value, header keys (UTF-8) and header values, without the
    framing (:data:`DLQ_RECORD_MARGIN` covers that)."""
    return (
        len(key or b"") + len(value) + sum(len(name.encode()) + len(data) for name, data in headers)
    )


def _iso(ms: np.ndarray) -> np.ndarray:
    """RFC 3339 UTC strings (``…T…\u200b.mmmZ``) of epoch-ms int64[n], vectorised."""
    return np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")


def budget_state_records(states: dict[str, np.ndarray], prefix: str = "") -> list[Record]:
    """One compacted record per tenant holding all of its budgets (latest state wins).

    ``states``: columns of ``BudgetTracker.state_columns()`` (rows of several batches may
    repeat a (tenant, budget); the last row is the current one).
    """
    if not len(states.get("tenant_id", ())):
        return []
    latest = latest_states(states, current_only=True)
    if not len(latest["tenant_id"]):
        return []
    order = np.argsort(latest["tenant_id"], kind="stable")
    st = {k: v[order] for k, v in latest.items()}
    tenants = st["tenant_id"]
    bounds = np.flatnonzero(np.r_[True, tenants[1:] != tenants[:-1]])
    # per tenant: its worst status and its latest as_of, as arrays; per row: plain lists,
    # so the loop below touches no numpy scalar (this runs after every engine batch)
    rank = np.vectorize(_STATUS_ORDER.__getitem__, otypes=[np.int64])(st["status"])
    worst = np.maximum.reduceat(rank, bounds).tolist()
    latest_as_of = _iso(np.maximum.reduceat(st["as_of_ms"], bounds)).tolist()
    rows = [
        {
            "budget_id": budget,
            "window": window,
            "limit_usd": limit,
            "spend_usd": spend,
            "remaining_usd": remaining,
            "status": status,
            "as_of": as_of,
            "period_start": start,
        }
        for budget, window, limit, spend, remaining, status, as_of, start in zip(
            st["budget_id"].tolist(),
            st["window"].tolist(),
            st["limit_usd"].astype(np.float64).tolist(),
            st["spend_usd"].astype(np.float64).tolist(),
            st["remaining_usd"].astype(np.float64).tolist(),
            st["status"].tolist(),
            _iso(st["as_of_ms"]).tolist(),
            _iso(st["period_start_ms"]).tolist(),
            strict=True,
        )
    ]
    topic = prefix + BUDGET_STATE
    dumps = orjson.dumps
    out = []
    ends = [*bounds[1:].tolist(), len(tenants)]
    for k, (lo, hi) in enumerate(zip(bounds.tolist(), ends, strict=True)):
        tenant = tenants[lo]
        value = {
            "tenant_id": tenant,
            "status": STATUSES[worst[k]],
            "as_of": latest_as_of[k],
            "budgets": rows[lo:hi],
        }
        out.append(Record(topic, tenant.encode(), dumps(value), []))
    return out


def candidate_records(candidates: dict[str, Any], prefix: str = "") -> list[Record]:
    """Eval-set candidate records (uncovered inputs sampled by the engine)."""
    out = []
    for i in range(len(candidates.get("event_id", ()))):
        emb = np.asarray(candidates["embedding"][i], dtype="<f4").tobytes()
        value = {
            "event_id": candidates["event_id"][i],
            "ts": ms_to_iso(int(candidates["ts"][i])),
            "tenant_id": candidates["tenant_id"][i],
            "app": candidates["app"][i],
            "embedding_model": candidates["embedding_model"][i],
            "eval_set_version": candidates["eval_set_version"][i],
            "nn_sim": float(candidates["nn_sim"][i]),
            "centroid_sim": float(candidates["centroid_sim"][i]),
            "nearest_eval_id": candidates["nearest_eval_id"][i],
            "embedding": base64.b64encode(emb).decode(),
        }
        out.append(
            Record(
                prefix + CANDIDATES, candidates["tenant_id"][i].encode(), orjson.dumps(value), []
            )
        )
    return out
