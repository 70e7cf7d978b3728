"""replay → chDB → report --json equals totals computed independently from the file.

Each CLI call runs in its own process (chDB serves one process); the database lives in the
test's temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from expected import expected_totals

from llmops_stream.stream.dev.synth import (
    SynthConfig,
    generate_bad_events,
    generate_eval_set,
    generate_events,
    write_jsonl,
)

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-small"
THRESHOLD = 0.8
BUDGETS = {
    "default": [
        {"id": "d", "limit_usd": 20.0, "window": "24h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "m", "limit_usd": 60.0, "window": "month", "soft": [0.5], "hard": 1.0},
    ]
}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_replay_report_equals_independent_totals(tmp_path: Path) -> None:
    events = list(
        generate_events(
            SynthConfig(
                n_events=30_000,
                seed=11,
                n_tenants=12,
                embedding_share=0.4,
                embedding_model=MODEL,
                array_embedding_share=0.1,
            )
        )
    )
    # a blank line is no event in a JSONL file (an empty Kafka message is rejected instead)
    bad = [(raw, reason) for raw, reason in generate_bad_events(seed=5) if raw.strip()]
    lines = list(events)
    for i, (raw, _) in enumerate(bad):  # spread bad events through the file
        lines.insert((i * 997) % len(lines), raw.replace(b"\n", b" "))
    data = tmp_path / "events.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    eval_path = tmp_path / "eval.jsonl"
    write_jsonl(eval_path, generate_eval_set(n=500, dim=384, seed=11, embedding_model=MODEL))
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    env = {
        **os.environ,
        "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}",
        "LLMOPS_CLICKHOUSE_DATABASE": "replay_test",
        "LLMOPS_EVAL_THRESHOLD": str(THRESHOLD),
        "LLMOPS_BATCH_SIZE": "7000",
    }

    run = cli("replay", str(data), "--eval-set", str(eval_path), "--budgets", str(budgets), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rep = cli("report", "--json", env=env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    report = json.loads(rep.stdout)

    expected = expected_totals(events, eval_path, MODEL, THRESHOLD)
    bad_by_tenant: dict[str, int] = {}
    for raw, _reason in bad:
        try:
            tenant = json.loads(raw).get("tenant_id", "")
        except (ValueError, AttributeError):
            tenant = ""
        tenant = tenant if isinstance(tenant, str) and len(tenant) <= 128 else ""
        bad_by_tenant[tenant] = bad_by_tenant.get(tenant, 0) + 1
    got = report["tenants"]
    assert set(got) == set(expected) | set(bad_by_tenant)
    for tenant, exp in expected.items():
        g = got[tenant]
        for k in (
            "calls",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "scored_calls",
            "uncovered_calls",
            "retrieval_calls",
            "stale_calls",
        ):
            assert g[k] == exp[k], (tenant, k, g[k], exp[k])
        assert g["cost_usd"] == pytest.approx(exp["cost_usd"], rel=1e-9, abs=1e-12)
    assert sum(t["rejected"] for t in got.values()) == len(bad)
    for tenant, n in bad_by_tenant.items():
        assert got[tenant]["rejected"] == n

    budget_alerts = [a for a in report["alerts"] if a["type"] == "budget"]
    assert budget_alerts, "the budgets above are sized so that tenants cross them"
    crossings = [
        (a["tenant_id"], a["details"]["budget_id"], a["details"]["level"], a["window_start"])
        for a in budget_alerts
        if a["status"] == "firing"
    ]
    # every resolution closes an episode that fired
    firing_ids = {a["alert_id"] for a in budget_alerts if a["status"] == "firing"}
    assert {a["alert_id"] for a in budget_alerts if a["status"] == "resolved"} <= firing_ids
    assert len(set(crossings)) == len(crossings)
    assert len({(a["alert_id"], a["status"]) for a in report["alerts"]}) == len(report["alerts"])

    # replaying the same file again stores nothing twice
    again = cli(
        "replay", str(data), "--eval-set", str(eval_path), "--budgets", str(budgets), env=env
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(cli("report", "--json", env=env).stdout) == report


def test_bad_file_is_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}"}
    run = cli("replay", str(tmp_path / "missing.jsonl"), env=env)
    assert run.returncode == 2
    assert "no such file" in run.stderr and "Traceback" not in run.stderr
    bad_budget = tmp_path / "b.json"
    bad_budget.write_text("{not json")
    data = tmp_path / "e.jsonl"
    data.write_text("")
    run = cli("replay", str(data), "--budgets", str(bad_budget), env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert str(bad_budget) in run.stderr.replace("\n", "")
