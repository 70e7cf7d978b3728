"""replay --format otlp-json of a file of SDK-made OTel GenAI spans → chDB → report --json:
the same totals, rejects and alerts as replaying the equivalent call events as JSONL, and
a rerun stores nothing twice.

Each CLI call runs in its own process (chDB serves one process); the databases live in the
test's temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from otlp_spans import build_spans, otlp_json, sdk_request

pytestmark = pytest.mark.integration

BUDGETS = {
    "default": [{"id": "d", "limit_usd": 0.5, "window": "24h", "soft": [0.5, 0.8], "hard": 1.0}]
}
TENANTS = ("acme", "globex", "initech", "umbrella")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def make_files(tmp: Path) -> tuple[Path, Path, int]:
    """An OTLP JSON file and the JSONL file of the calls it stands for, with matching bad
    lines (an unreadable line; two calls without a tenant); returns them and the number of
    non-inference spans in the OTLP file."""
    spans: list[bytes] = []
    events: list[bytes] = []
    skipped = 0
    for i in range(8):
        batch = build_spans(
            450,
            tenants=TENANTS[: 2 + i % 3],
            seed=i,
            legacy=i % 2 == 1,
            tenant_in_span=i == 5,
            error_every=13,
            non_genai=3,
            start_ms=1_748_736_000_000 + i * 700_000,
        )
        spans.append(batch.encode("otlp_json"))
        events += batch.events
        skipped += batch.skipped
    spans.append(b"{not an export request")
    events.append(b"{not an event")
    no_tenant = sdk_request(
        [{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
          "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 1}] * 2,
        resource={"service.name": "bot"},
    )  # fmt: skip
    spans.append(otlp_json(no_tenant))
    events += [b'{"event_id": "e1", "ts": 1748736000000, "model": "gpt-4o"}'] * 2
    otlp_path, jsonl_path = tmp / "spans.otlp.jsonl", tmp / "calls.jsonl"
    otlp_path.write_bytes(b"\n".join(spans) + b"\n")
    jsonl_path.write_bytes(b"\n".join(events) + b"\n")
    return otlp_path, jsonl_path, skipped


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what depends on when it was written (alert emission times)."""
    alerts = sorted(
        (a["alert_id"], a["status"], a["type"], a["tenant_id"], a["value"])
        for a in report["alerts"]
    )
    return {"tenants": report["tenants"], "alerts": alerts}


def test_otlp_replay_reports_as_the_equivalent_events(tmp_path: Path) -> None:
    otlp_path, jsonl_path, skipped = make_files(tmp_path)
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")},
        "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}",
        "LLMOPS_BUDGETS": str(budgets),
        "LLMOPS_FLUSH_ROWS": "1000",
    }
    env_spans = {**base, "LLMOPS_CLICKHOUSE_DATABASE": "otlp_spans", "LLMOPS_BATCH_SIZE": "700"}
    env_events = {**base, "LLMOPS_CLICKHOUSE_DATABASE": "otlp_events"}

    run = cli("replay", "--format", "otlp-json", str(otlp_path), env=env_spans)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Skipped {skipped:,} OTel spans" in run.stdout.replace("\n", " ")
    run = cli("replay", str(jsonl_path), env=env_events)
    assert run.returncode == 0, run.stderr[-3000:]

    reports = []
    for env in (env_spans, env_events):
        rep = cli("report", "--json", env=env)
        assert rep.returncode == 0, rep.stderr[-3000:]
        reports.append(json.loads(rep.stdout))
    spans, events = map(comparable, reports)
    assert set(spans["tenants"]) == {*TENANTS, ""}
    assert spans["tenants"][""]["rejected"] == 3  # the unreadable line, two without tenant
    assert sum(t["calls"] for t in spans["tenants"].values()) == 8 * 450
    assert any(a[2] == "budget" for a in spans["alerts"]), "budgets sized to fire"
    for tenant, totals in events["tenants"].items():
        got = spans["tenants"][tenant]
        assert got["cost_usd"] == pytest.approx(totals["cost_usd"], rel=1e-9)
        assert {**got, "cost_usd": 0} == {**totals, "cost_usd": 0}, tenant
    assert spans["tenants"].keys() == events["tenants"].keys()
    assert spans["alerts"] == events["alerts"]

    # the same file again, with another batch size: nothing stored twice
    again = cli("replay", "--format", "otlp-json", str(otlp_path),
                env={**env_spans, "LLMOPS_BATCH_SIZE": "3000"})  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    rep = cli("report", "--json", env=env_spans)
    after = comparable(json.loads(rep.stdout))
    # ClickHouse sums in the order of its parts: the same rows may differ in the last bit
    for tenant, totals in spans["tenants"].items():
        got = after["tenants"][tenant]
        assert got["cost_usd"] == pytest.approx(totals["cost_usd"], rel=1e-12)
        assert {**got, "cost_usd": 0} == {**totals, "cost_usd": 0}, tenant
    assert after["tenants"].keys() == spans["tenants"].keys()
    assert after["alerts"] == spans["alerts"]


def test_bad_format_and_tenant_attribute_are_one_line_errors(tmp_path: Path) -> None:
    data = tmp_path / "spans.jsonl"
    data.write_bytes(orjson.dumps({"resourceSpans": []}) + b"\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")},
        "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}",
    }
    for args, message in (
        (["--format", "otlp"], "bad --format 'otlp': use one of jsonl, otlp-json"),
        (["--format", "otlp-json", "--tenant-attribute", ""], "--tenant-attribute"),
    ):
        run = cli("replay", *args, str(data), env=env)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], run.stderr
