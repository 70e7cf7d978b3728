"""replay → chDB → ``report --html``: the page holds the report's figures and a chart per
section, needs no network, escapes tenant ids, and says so when there is no data.

Each CLI call runs in its own process (chDB serves one process); the database lives in the
test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmops_stream.stream.dev.synth import (
    SynthConfig,
    generate_eval_set,
    generate_events,
    write_jsonl,
)

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-small"
# a tenant id that would run a script if it reached the page unescaped; "$" would start
# matplotlib's math mode
EVIL = 'acme<script>alert("$x$")</script>&co'
BUDGETS = {
    "default": [
        {"id": "daily", "limit_usd": 20.0, "window": "24h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "hourly", "limit_usd": 4.0, "window": "1h", "soft": [0.8], "hard": 1.0},
    ]
}
SECTIONS_WITH_CHARTS = {"cost": 2, "budgets": 1, "shares": 1, "alerts": 1}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


class Page(HTMLParser):
    """What a reader sees: per section, its text, its <svg> count and its table rows; and
    every tag and attribute of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.text: dict[str, list[str]] = {}
        self.svgs: Counter[str] = Counter()
        self.rows: dict[str, list[list[str]]] = {}
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += [(k, v or "") for k, v in attrs]
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
        elif tag == "svg":
            self.svgs[self.section] += 1
        elif tag == "tr":
            self.rows.setdefault(self.section, []).append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[self.section][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.setdefault(self.section, []).append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> Page:
    parsed = Page()
    parsed.feed(page)
    parsed.close()
    return parsed


def assert_offline(page: str, parsed: Page) -> None:
    """Nothing of the page comes from elsewhere: no URL at all, no script, no import."""
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(//" not in page
    for tag in ("script", "link", "img", "iframe", "object", "embed"):
        assert parsed.tags[tag] == 0, tag
    for key, value in parsed.attrs:
        if key in ("src", "href", "xlink:href"):
            assert value.startswith("#"), (key, value)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("html")
    events = list(
        generate_events(
            SynthConfig(
                n_events=30_000,
                seed=3,
                n_tenants=12,
                rate_per_s=2.5,  # ~3.3 h of event time: a dozen alert windows
                embedding_share=0.5,
                embedding_model=MODEL,
                stale_share=0.25,
            )
        )
    )
    top = Counter(orjson.loads(e)["tenant_id"] for e in events).most_common(1)[0][0]
    plain = b'"tenant_id":' + orjson.dumps(top) + b","
    evil = b'"tenant_id":' + orjson.dumps(EVIL) + b","
    lines = [e.replace(plain, evil, 1) for e in events]
    data = tmp / "events.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    eval_path = tmp / "eval.jsonl"
    write_jsonl(eval_path, generate_eval_set(n=500, dim=384, seed=3, embedding_model=MODEL))
    budgets = tmp / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    env = {
        **os.environ,
        "LLMOPS_CLICKHOUSE": f"chdb://{tmp / 'ch'}",
        "LLMOPS_CLICKHOUSE_DATABASE": "html_test",
        "LLMOPS_EVAL_THRESHOLD": "0.8",
        "LLMOPS_DRIFT_THRESHOLD": "0.12",
    }
    run = cli("replay", str(data), "--eval-set", str(eval_path), "--budgets", str(budgets), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp, env


def test_page_holds_the_report_and_a_chart_per_section(
    replayed: tuple[Path, dict[str, str]],
) -> None:
    tmp, env = replayed
    rep = cli("report", "--json", env=env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    report: dict[str, Any] = json.loads(rep.stdout)
    out = tmp / "report.html"
    run = cli("report", "--html", str(out), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("\n") == 1 and str(out) in run.stdout
    page = out.read_text(encoding="utf-8")
    assert len(page.encode()) < 1_500_000
    parsed = parse(page)
    assert_offline(page, parsed)

    for section, charts in SECTIONS_WITH_CHARTS.items():
        assert parsed.svgs[section] == charts, (section, parsed.svgs)

    # the totals: each tenant's figures as `report` prints them, then the sum
    tenants = report["tenants"]
    assert EVIL in tenants
    rows = {r[0]: r for r in parsed.rows["totals"][1:-1]}
    assert set(rows) == {t or "(unreadable)" for t in tenants}
    for tenant, t in tenants.items():
        row = rows[tenant or "(unreadable)"]
        assert row[1] == f"{t['calls']:,}" and row[2] == f"{t['cost_usd']:,.4f}", tenant
        assert row[3:9] == [
            f"{t[k]:,}"
            for k in (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "scored_calls",
                "uncovered_calls",
            )
        ]
        assert row[-3:-1] == [f"{t['rejected']:,}", f"{t['duplicates']:,}"]
    total_calls = sum(t["calls"] for t in tenants.values())
    total_cost = sum(t["cost_usd"] for t in tenants.values())
    assert parsed.rows["totals"][-1][:3] == ["total", f"{total_calls:,}", f"{total_cost:,.4f}"]
    summary = parsed.text["summary"]
    assert f"{total_calls:,}" in summary and f"{total_cost:,.4f}" in summary

    # the tenant with "<script>" is the top spender: in the cost legend, bars, table, rows
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;") >= 4
    assert any(EVIL in text for text in parsed.text["cost"])
    assert any(text.startswith(EVIL) for text in parsed.text["budgets"])

    # every alert type of the data is on the timeline, counted as in the report
    alerts = report["alerts"]
    types = {a["type"] for a in alerts}
    assert types == {"budget", "drift", "freshness", "model"}, types
    timeline_text = parsed.text["alerts"]
    counts = {r[0]: r[1:] for r in parsed.rows["alerts"][1:]}
    for kind in types:
        assert kind in timeline_text, kind  # the legend of the chart
        fired = {a["alert_id"] for a in alerts if a["type"] == kind and a["status"] == "firing"}
        done = {a["alert_id"] for a in alerts if a["type"] == kind and a["status"] == "resolved"}
        assert counts[kind] == [f"{len(fired):,}", f"{len(done):,}", f"{len(fired - done):,}"]

    # the shares are drawn against the thresholds the engine ran with (settings)
    shares = " ".join(parsed.text["shares"])
    assert "alert threshold 12 % (LLMOPS_DRIFT_THRESHOLD)" in shares
    assert "alert threshold 20 % (LLMOPS_FRESHNESS_THRESHOLD)" in shares


def test_empty_database_gives_a_page_saying_so(tmp_path: Path) -> None:
    env = {**os.environ, "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}"}
    out = tmp_path / "empty.html"
    run = cli("report", "--html", str(out), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    page = out.read_text(encoding="utf-8")
    parsed = parse(page)
    assert_offline(page, parsed)
    assert "No data in this database yet" in page
    assert sum(parsed.svgs.values()) == 0
    for section in (*SECTIONS_WITH_CHARTS, "totals"):
        assert any(t.startswith("No data") for t in parsed.text[section]), section


def test_bad_paths_and_flags_are_one_line_errors(tmp_path: Path) -> None:
    env = {**os.environ, "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}"}
    for target, reason in (
        (tmp_path / "missing" / "r.html", "no such directory"),
        (tmp_path, "is a directory"),
    ):
        run = cli("report", "--html", str(target), env=env)
        assert run.returncode == 2
        assert "Traceback" not in run.stderr and reason in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    run = cli("report", "--json", "--html", str(tmp_path / "r.html"), env=env)
    assert run.returncode == 2 and "not allowed with" in run.stderr
    assert not (tmp_path / "r.html").exists()


def test_matplotlib_is_imported_only_for_html(tmp_path: Path) -> None:
    env = {**os.environ, "LLMOPS_CLICKHOUSE": f"chdb://{tmp_path / 'ch'}"}
    probe = (
        "import contextlib, io, sys\n"
        "from llmops_stream.stream.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in (['--help'], ['report', '--help'], ['report', '--json'], ['report']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print('matplotlib' in sys.modules)\n"
        f"main(['report', '--html', {str(tmp_path / 'r.html')!r}])\n"
        "print('matplotlib' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.findall(r"^(True|False)$", run.stdout, re.M) == ["False", "True"]
