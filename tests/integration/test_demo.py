"""``llmops-stream demo`` as a new user first runs it: synthetic traffic through the whole
engine into the embedded ClickHouse, a summary that shows the engine's own rate apart from
generating the traffic, and data that ``report --json`` reads back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_summary_and_report(tmp_path: Path) -> None:
    env = {**os.environ, "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}", "COLUMNS": "200"}
    run = _cli(["demo", "--events", "4000", "--tenants", "6", "--seed", "3"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    processed = re.search(r"Processed ([\d,]+) events in ([\d.]+) s .*?([\d,]+) valid", out)
    assert processed, out
    events, valid = (int(processed[i].replace(",", "")) for i in (1, 3))
    assert events >= 4000
    engine = re.search(r"Engine and ClickHouse: ([\d,]+) events/s \(([\d.]+) s\)", out)
    assert engine, out
    # the engine's own rate excludes generation, so it is at least the overall rate
    overall = events / max(float(processed[2]), 1e-9)
    assert int(engine[1].replace(",", "")) >= overall * 0.99
    assert float(engine[2]) <= float(processed[2])
    report = _cli(["report", "--json"], env)
    assert report.returncode == 0, report.stderr[-3000:]
    tenants = json.loads(report.stdout)["tenants"]
    assert sum(t["calls"] for t in tenants.values()) == valid
    assert sum(t["cost_usd"] for t in tenants.values()) > 0
