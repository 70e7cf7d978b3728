"""Kafka records of the engine's outputs: alerts, DLQ, budget state, eval-set candidates.

Pure functions from :class:`~.engine.BatchOutput` to ``Record`` tuples; the worker sends them
inside its Kafka transaction. Topic names follow SPEC §4, with an optional prefix.

- ``llm.alerts.<type>``: key tenant, value the alert JSON (``alerts.Alert``).
- ``llm.calls.dlq``: value = the original bytes unchanged; the reason, detail and source
  position travel in headers (``reason``, ``detail``, ``tenant_id``, ``source_topic``,
  ``source_partition``, ``source_offset``).
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

from llmops_stream.stream.core.alerts import Alert
from llmops_stream.stream.core.budget_state import latest_states
from llmops_stream.stream.core.timeutil import ms_to_iso

DLQ = "llm.calls.dlq"
BUDGET_STATE = "llm.budget.state"
CANDIDATES = "llm.eval.candidates"
ALERT_TOPICS = {t: f"llm.alerts.{t}" for t in ("budget", "drift", "freshness")}
STATUSES = ("ok", "warn", "exceeded")
_STATUS_ORDER = {s: i for i, s in enumerate(STATUSES)}


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


def dlq_records(rejected: dict[str, Any], topic: str, prefix: str = "") -> list[Record]:
    """DLQ records of a batch's ``rejected`` columns (see ``engine.BatchOutput``)."""
    out = []
    for i, raw in enumerate(rejected["raw"]):
        tenant = rejected["tenant_id"][i]
        out.append(
            Record(
                prefix + DLQ,
                tenant.encode() if tenant else None,
                bytes(raw),
                [
                    ("reason", rejected["reason"][i].encode()),
                    ("detail", rejected["detail"][i].encode()),
                    ("tenant_id", tenant.encode()),
                    ("source_topic", topic.encode()),
                    ("source_partition", str(int(rejected["kafka_partition"][i])).encode()),
                    ("source_offset", str(int(rejected["kafka_offset"][i])).encode()),
                ],
            )
        )
    return out


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
    as_of, start = _iso(st["as_of_ms"]), _iso(st["period_start_ms"])
    rank = np.vectorize(_STATUS_ORDER.__getitem__, otypes=[np.int64])(st["status"])
    tenants = st["tenant_id"]
    bounds = np.flatnonzero(np.r_[True, tenants[1:] != tenants[:-1]])
    out = []
    for lo, hi in zip(bounds, np.r_[bounds[1:], len(tenants)], strict=True):
        value = {
            "tenant_id": tenants[lo],
            "status": STATUSES[int(rank[lo:hi].max())],
            "as_of": max(as_of[lo:hi]),
            "budgets": [
                {
                    "budget_id": st["budget_id"][r],
                    "window": st["window"][r],
                    "limit_usd": float(st["limit_usd"][r]),
                    "spend_usd": float(st["spend_usd"][r]),
                    "remaining_usd": float(st["remaining_usd"][r]),
                    "status": st["status"][r],
                    "as_of": as_of[r],
                    "period_start": start[r],
                }
                for r in range(lo, hi)
            ],
        }
        out.append(
            Record(prefix + BUDGET_STATE, value["tenant_id"].encode(), orjson.dumps(value), [])
        )
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
