"""Per-tenant totals and alerts read back from ClickHouse (``llmops-stream report``).

The JSON shape is a contract (SPEC §4): ``{"tenants": {"<id>": {calls, cost_usd,
input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, scored_calls,
uncovered_calls, retrieval_calls, stale_calls, rejected}}, "alerts": [<alert>…]}``.
Rejected events whose tenant could not be read are reported under the tenant id ``""``.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmops_stream.stream.core.timeutil import ms_to_iso

TENANT_FIELDS = (
    "calls",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "scored_calls",
    "uncovered_calls",
    "retrieval_calls",
    "stale_calls",
    "duplicates",
    "rejected",
)


def build_report(client: Any, database: str) -> dict[str, Any]:
    """Read the report from ``database`` (sums over ``llm_usage_1m``, ``llm_rejected``)."""
    db = database
    tenants: dict[str, dict[str, Any]] = {}
    rows = client.query(
        f"""SELECT tenant_id, sum(calls), sum(cost_usd), sum(input_tokens), sum(output_tokens),
                  sum(cache_read_tokens), sum(cache_write_tokens), sum(scored), sum(uncovered),
                  sum(retrieval_calls), sum(stale_calls), sum(duplicates)
           FROM {db}.llm_usage_1m GROUP BY tenant_id ORDER BY tenant_id"""
    ).result_rows
    for row in rows:
        values = dict(zip(TENANT_FIELDS[:-1], row[1:], strict=True))
        tenants[row[0]] = {k: (float(v) if k == "cost_usd" else int(v)) for k, v in values.items()}
        tenants[row[0]]["rejected"] = 0
    for tenant, count in client.query(
        f"SELECT tenant_id, count() FROM {db}.llm_rejected GROUP BY tenant_id ORDER BY tenant_id"
    ).result_rows:
        entry = tenants.setdefault(tenant, {k: 0 for k in TENANT_FIELDS})
        entry["cost_usd"] = float(entry["cost_usd"])
        entry["rejected"] = int(count)
    alerts = []
    for r in client.query(
        f"""SELECT alert_id, status, type, severity, tenant_id, app, metric, value, threshold,
                  toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end),
                  toUnixTimestamp64Milli(emitted_at), details
           FROM {db}.llm_alerts FINAL
           ORDER BY emitted_at, tenant_id, alert_id, status = 'resolved'"""
    ).result_rows:
        alerts.append(
            {
                "alert_id": r[0],
                "status": r[1],
                "type": r[2],
                "severity": r[3],
                "tenant_id": r[4],
                "app": r[5],
                "metric": r[6],
                "value": r[7],
                "threshold": r[8],
                "window_start": ms_to_iso(r[9]),
                "window_end": ms_to_iso(r[10]),
                "emitted_at": ms_to_iso(r[11]),
                "details": orjson.loads(r[12]) if r[12] else {},
            }
        )
    return {"tenants": tenants, "alerts": alerts}


def budget_states(client: Any, database: str) -> list[tuple[Any, ...]]:
    """Latest budget state rows (the current period of calendar budgets):
    (tenant, budget, window, spend, limit, status)."""
    return list(
        client.query(
            f"""SELECT tenant_id, budget_id, window, spend_usd, limit_usd, status
               FROM (SELECT * FROM {database}.llm_budget_state FINAL
                     ORDER BY tenant_id, budget_id, period DESC)
               LIMIT 1 BY tenant_id, budget_id"""
        ).result_rows
    )
