"""Replay's background flushes against chDB: the inserts they make are the inline ones
(same tokens, same rows: a background replay after an inline one stores nothing new), and
an insert that fails on the flush thread fails the replay.

Each replay runs in its own process (chDB serves one process); the database lives in the
test's temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmops_stream.stream.dev.synth import SynthConfig, generate_bad_events, generate_events

pytestmark = pytest.mark.integration

DATABASE = "replay_bg"
BUDGETS = {"default": [{"id": "h", "limit_usd": 1.0, "window": "1h", "soft": [0.5], "hard": 1.0}]}

# replay argv[2] into database argv[3] of argv[1]: inline (one sink) or in the background
REPLAY = """
import sys
from llmops_stream.stream.clickhouse.sink import ClickHouseSink, connect
from llmops_stream.stream.files.flushing import BackgroundFlusher
from llmops_stream.stream.files.replay import build_engine, replay
from llmops_stream.stream.runtime.settings import Settings

url, path, db, budgets, mode, sink_db = sys.argv[1:]
client = connect(url, db)
settings = Settings(budgets=budgets)
engine = build_engine(settings)
kw = dict(batch_size=700, flush_rows=settings.flush_rows)
if mode == "inline":
    replay([path], engine, ClickHouseSink(client, sink_db), **kw)
else:
    with BackgroundFlusher(ClickHouseSink(client, sink_db), ClickHouseSink(client, sink_db)) as f:
        try:
            replay([path], engine, f, **kw)
        except Exception as exc:
            print("replay raised", type(exc).__name__, str(exc)[:200])
            raise
print("replayed")
"""
COUNTS = """
import json, sys
from llmops_stream.stream.clickhouse.sink import connect
client = connect(sys.argv[1], sys.argv[2], create=False)
# plain MergeTree tables keep a second copy of a row: their counts prove it was not stored;
# the Replacing ones merge copies away whenever they like, so only their keys are compared
queries = {
    "llm_calls": "count(), uniqExact(tenant_id, event_id), round(sum(cost_usd), 6)",
    "llm_usage_1m": "count(), sum(calls), sum(input_tokens)",
    "llm_rejected": "count()",
    "llm_alerts": "uniqExact(alert_id, status)",
    "llm_budget_state": "uniqExact(tenant_id, budget_id, window, period)",
}
print(json.dumps({t: list(client.query(f"SELECT {q} FROM {sys.argv[2]}.{t}").result_rows[0])
                  for t, q in queries.items()}))
"""


def python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    lines = list(
        generate_events(
            SynthConfig(n_events=12_000, seed=31, n_tenants=6, rate_per_s=2.0, duplicate_share=0.01)
        )
    )
    for i, (raw, _) in enumerate(generate_bad_events(seed=2)):
        lines.insert((i * 613) % len(lines), raw.replace(b"\n", b" "))
    data = tmp_path / "events.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    env = {
        **os.environ,
        "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}",
        "LLMOPS_CLICKHOUSE_DATABASE": DATABASE,
        "LLMOPS_FLUSH_ROWS": "2000",  # seven flushes over the file
    }
    return data, budgets, env


def counts(env: dict[str, str]) -> dict[str, list[Any]]:
    run = python(COUNTS, env["LLMOPS_CLICKHOUSE"], DATABASE, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out: dict[str, list[Any]] = json.loads(run.stdout)
    return out


def test_background_replay_writes_the_inline_inserts(
    setup: tuple[Path, Path, dict[str, str]],
) -> None:
    data, budgets, env = setup
    url = env["LLMOPS_CLICKHOUSE"]
    inline = python(REPLAY, url, str(data), DATABASE, str(budgets), "inline", DATABASE, env=env)
    assert inline.returncode == 0, inline.stderr[-3000:]
    once = counts(env)
    calls, distinct, _ = once["llm_calls"]
    assert calls == distinct > 10_000 and once["llm_rejected"][0] > 0
    assert once["llm_alerts"][0] > 0, "the budget is sized so that tenants cross it"

    # the same file in the background: every insert repeats an inline one, token and rows
    bg = python(REPLAY, url, str(data), DATABASE, str(budgets), "background", DATABASE, env=env)
    assert bg.returncode == 0, bg.stderr[-3000:]
    assert counts(env) == once

    # and through the command line, with another batch size
    cli = subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", "replay", str(data)]
        + ["--budgets", str(budgets), "--batch-size", "3001"],
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-3000:].decode()
    assert counts(env) == once


def test_failed_insert_on_the_flush_thread_fails_the_replay(
    setup: tuple[Path, Path, dict[str, str]],
) -> None:
    data, budgets, env = setup
    url = env["LLMOPS_CLICKHOUSE"]
    # the sinks write to a database that does not exist: the first insert fails
    run = python(REPLAY, url, str(data), DATABASE, str(budgets), "background", "nowhere", env=env)
    assert run.returncode != 0
    assert "replay raised" in run.stdout and "nowhere" in run.stdout
    assert "replayed" not in run.stdout.splitlines()
    assert counts(env)["llm_calls"][0] == 0
