"""Replaying the same file again, with another --batch-size (or from stdin), stores nothing
twice: every table holds one copy of each row.

Each CLI call runs in its own process (chDB serves one process); the database lives in the
test's temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
DATABASE = "replay_idem"
BUDGETS = {
    "default": [
        {"id": "h", "limit_usd": 2.0, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "d", "limit_usd": 20.0, "window": "24h", "soft": [0.5, 0.8], "hard": 1.0},
    ]
}

# what one copy of the data looks like, read back from every table the replay writes
COUNTS = {
    "llm_calls": "count(), uniqExact(tenant_id, event_id), sum(cost_usd), sum(input_tokens)",
    "llm_usage_1m": "sum(calls), sum(cost_usd), sum(input_tokens), sum(duplicates), sum(scored)",
    "llm_rejected": "count()",
    "llm_eval_candidates": "count()",
    "llm_alerts": "count(), uniqExact(alert_id, status)",
    "llm_budget_state": "count()",
}
QUERY = """
import json, sys
from llmops_stream.stream.clickhouse.sink import connect
client = connect(sys.argv[1], sys.argv[2], create=False)
queries = json.loads(sys.argv[3])
out = {t: list(client.query(f"SELECT {q} FROM {sys.argv[2]}.{t}").result_rows[0])
       for t, q in queries.items()}
print(json.dumps(out))
"""


def cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=600,
        check=False,
    )


def table_counts(env: dict[str, str]) -> dict[str, list[Any]]:
    run = subprocess.run(
        [sys.executable, "-c", QUERY, env["LLMOPS_CLICKHOUSE"], DATABASE, json.dumps(COUNTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    counts: dict[str, list[Any]] = json.loads(run.stdout)
    return counts


def report(env: dict[str, str]) -> dict[str, Any]:
    rep = cli("report", "--json", env=env)
    assert rep.returncode == 0, rep.stderr[-3000:].decode()
    out: dict[str, Any] = json.loads(rep.stdout)
    return out


def same(a: Any, b: Any) -> bool:
    """Equal, floats up to summation order (ClickHouse sums parts in any order)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


def test_replay_twice_with_other_batch_sizes_stores_once(tmp_path: Path) -> None:
    events = list(
        generate_events(
            SynthConfig(
                n_events=20_000,
                seed=21,
                n_tenants=8,
                rate_per_s=2.0,  # ~2.8 h of event time: hourly budgets fire and resolve
                jitter_ms=30_000.0,
                duplicate_share=0.01,
                embedding_share=0.4,
                embedding_model=MODEL,
            )
        )
    )
    bad = [raw.replace(b"\n", b" ") for raw, _ in generate_bad_events(seed=5) if raw.strip()]
    lines = list(events)
    for i, raw in enumerate(bad):
        lines.insert((i * 997) % len(lines), raw)
    data = tmp_path / "events.jsonl"
    write_jsonl(data, lines)
    eval_path = tmp_path / "eval.jsonl"
    write_jsonl(eval_path, generate_eval_set(n=500, dim=384, seed=21, embedding_model=MODEL))
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    env = {
        **os.environ,
        "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}",
        "LLMOPS_CLICKHOUSE_DATABASE": DATABASE,
        "LLMOPS_FLUSH_ROWS": "3000",  # seven flushes over the file
    }
    flags = ("--eval-set", str(eval_path), "--budgets", str(budgets))

    first = cli("replay", str(data), *flags, "--batch-size", "1000", env=env)
    assert first.returncode == 0, first.stderr[-3000:].decode()
    once = report(env)
    counts = table_counts(env)

    valid = sum(t["calls"] for t in expected_totals(events).values())
    assert counts["llm_calls"][:2] == [valid, valid]  # one row per call, retries dropped
    assert counts["llm_usage_1m"][0] == valid
    assert counts["llm_calls"][3] == counts["llm_usage_1m"][2]
    assert counts["llm_rejected"] == [len(bad)]
    alerts, distinct = counts["llm_alerts"]
    assert alerts == distinct > 0, "the budgets above are sized so that tenants cross them"
    assert any(a["status"] == "resolved" for a in once["alerts"])

    again = cli("replay", str(data), *flags, "--batch-size", "7000", env=env)
    assert again.returncode == 0, again.stderr[-3000:].decode()
    assert same(table_counts(env), counts)
    assert same(report(env), once)

    # stdin has the file's identity too: its content, hashed as it is read
    piped = cli("replay", "-", *flags, "--batch-size", "2500", env=env, stdin=data.read_bytes())
    assert piped.returncode == 0, piped.stderr[-3000:].decode()
    assert same(table_counts(env), counts)
    assert same(report(env), once)
