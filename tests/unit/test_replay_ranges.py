"""Replay flushes: fixed line ranges and tokens whatever the batch size, and the same rows
in each range (engine batches never cross a flush boundary)."""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmops_stream.stream.core.budget_state import latest_states
from llmops_stream.stream.dev.synth import (
    SynthConfig,
    generate_bad_events,
    generate_eval_set,
    generate_events,
    write_jsonl,
)
from llmops_stream.stream.files.replay import build_engine, flush_ranges, read_batches, replay
from llmops_stream.stream.runtime.settings import Settings

MODEL = "text-embedding-3-small"
FLUSH = 700
BUDGETS = {
    "default": [
        {"id": "h", "limit_usd": 0.3, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "d", "limit_usd": 3.0, "window": "24h", "soft": [0.5], "hard": 1.0},
        {"id": "m", "limit_usd": 40.0, "window": "month", "soft": [0.5]},
    ]
}


def test_flush_ranges_cut_at_multiples() -> None:
    assert flush_ranges(0, 0, 5) == []
    assert flush_ranges(0, 5, 5) == [(0, 5)]
    assert flush_ranges(0, 12, 5) == [(0, 5), (5, 10), (10, 12)]
    assert flush_ranges(8, 7, 5) == [(8, 10), (10, 15)]
    assert flush_ranges(10, 1, 5) == [(10, 11)]
    assert flush_ranges(3, 4, 1) == [(3, 4), (4, 5), (5, 6), (6, 7)]
    with pytest.raises(ValueError):
        flush_ranges(0, 1, 0)


@pytest.mark.parametrize("every", [1, 3, 7, 100])
def test_flush_ranges_independent_of_batching(every: int) -> None:
    """Cutting batches of any size yields the same pieces between boundaries."""
    total = 250
    for size in (1, 2, 5, 7, 64, 1000):
        pieces = [
            p
            for start in range(0, total, size)
            for p in flush_ranges(start, min(size, total - start), every)
        ]
        assert pieces[0][0] == 0 and pieces[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
        assert all(lo // every == (hi - 1) // every for lo, hi in pieces)  # no crossing
        ends = sorted({hi for _, hi in pieces if hi % every == 0} | {total})
        assert ends == [*range(every, total + 1, every), *([total] if total % every else [])]


class RecordingSink:
    """Stands in for :class:`ClickHouseSink`: keeps what each flush would insert."""

    def __init__(self) -> None:
        self.flushes: list[tuple[str, dict[str, Any]]] = []
        self._new()

    def _new(self) -> None:
        self.buf: dict[str, Any] = {"calls": [], "usage": Counter(), "rejected": []}
        self.buf |= {"candidates": [], "alerts": [], "states": []}
        self.rows_buffered = 0

    def add(self, out: Any) -> None:
        c = out.calls
        self.buf["calls"] += zip(
            c["event_id"], c["cost_usd"].tolist(), c["kafka_partition"].tolist(),
            c["kafka_offset"].tolist(), c["scored"].tolist(), c["uncovered"].tolist(),
            c["stale"].tolist(), strict=True,
        )  # fmt: skip
        u = out.usage
        for i in range(len(u["minute"])):
            key = (u["tenant_id"][i], int(u["minute"][i]), u["app"][i], u["model"][i])
            for col in ("calls", "duplicates", "input_tokens", "scored", "uncovered"):
                self.buf["usage"][(*key, col)] += int(u[col][i])
        self.buf["rejected"] += zip(
            out.rejected["reason"], out.rejected["kafka_offset"].tolist(), strict=True
        )
        self.buf["candidates"] += list(out.candidates.get("event_id", []))
        self.add_alerts(out.alerts)
        self.add_states(out.budget_states)
        self.rows_buffered += len(c["event_id"])

    def add_alerts(self, alerts: list[Any]) -> None:
        self.buf["alerts"] += [
            (a.alert_id, a.status, a.value, a.window_end, a.emitted_at,
             json.dumps(a.details, sort_keys=True))
            for a in alerts
        ]  # fmt: skip

    def add_states(self, states: dict[str, np.ndarray]) -> None:
        if len(states.get("tenant_id", ())):
            self.buf["states"].append(states)

    def flush(self, token: str) -> None:
        b = self.buf
        states: list[tuple[str, ...]] = []
        if b["states"]:
            cols = latest_states(
                {k: np.concatenate([s[k] for s in b["states"]]) for k in b["states"][0]}
            )
            states = sorted(
                tuple(str(cols[k][i]) for k in sorted(cols)) for i in range(len(cols["tenant_id"]))
            )
        rows = {
            "calls": sorted(b["calls"]),
            "usage": {k: v for k, v in b["usage"].items() if v},
            "rejected": sorted(b["rejected"]),
            "candidates": sorted(b["candidates"]),
            "alerts": sorted(b["alerts"]),
            "states": states,
        }
        self.flushes.append((token, rows))
        self._new()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    tmp = tmp_path_factory.mktemp("replay")
    eval_path = tmp / "eval.jsonl"
    write_jsonl(eval_path, generate_eval_set(n=300, dim=384, seed=4, embedding_model=MODEL))
    budgets = tmp / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    lines = list(
        generate_events(
            SynthConfig(
                n_events=4000,
                seed=4,
                n_tenants=6,
                rate_per_s=1.0,
                jitter_ms=90_000.0,  # events out of order across batch cuts
                duplicate_share=0.02,
                embedding_share=0.5,
                embedding_model=MODEL,
            )
        )
    )
    bad = [raw.replace(b"\n", b" ") for raw, _ in generate_bad_events(seed=1) if raw.strip()]
    for i, raw in enumerate(bad):
        lines.insert((i * 131) % len(lines), raw)
    for i in range(0, len(lines), 333):
        lines.insert(i, b"")  # blank lines count as lines
    data = tmp / "events.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    settings = Settings(eval_set=eval_path, budgets=budgets, drift_min_count=5)
    return data, settings


def run(data: Path | None, settings: Settings, batch_size: int, flush_rows: int = FLUSH) -> Any:
    sink = RecordingSink()
    replay(
        [str(data) if data else "-"],
        build_engine(settings),
        sink,  # type: ignore[arg-type]
        batch_size=batch_size,
        flush_rows=flush_rows,
    )
    return sink.flushes


def test_flushes_do_not_depend_on_batch_size(inputs: tuple[Path, Settings]) -> None:
    data, settings = inputs
    n_lines = data.read_bytes().count(b"\n")
    base = run(data, settings, batch_size=FLUSH)
    ranges = [tuple(map(int, tok.split(":")[1].split("-"))) for tok, _ in base[:-1]]
    assert ranges == flush_ranges(0, n_lines, FLUSH)
    assert base[-1][0].startswith("replay:final:")
    assert sum(len(rows["calls"]) for _, rows in base) > 3000
    assert sum(len(rows["alerts"]) for _, rows in base) > 5, "budgets sized to fire"
    assert sum(len(rows["rejected"]) for _, rows in base) > 0
    for batch_size in (97, 1000, 2600, 100_000):
        assert run(data, settings, batch_size) == base, batch_size


def test_stdin_gets_the_tokens_of_the_file(
    inputs: tuple[Path, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, settings = inputs
    from_file = run(data, settings, batch_size=1500)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.read_bytes())))
    assert [tok for tok, _ in run(None, settings, batch_size=333)] == [tok for tok, _ in from_file]


def test_tokens_name_the_content(tmp_path: Path) -> None:
    """A changed line changes the token of its range and of every later range."""
    lines = [b'{"n": %d}' % i for i in range(25)]
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"\n".join(lines) + b"\n")
    b = tmp_path / "b.jsonl"
    b.write_bytes(b"\n".join([*lines[:12], b'{"n": -1}', *lines[13:]]) + b"\r\n")
    tokens = [[tok for tok, _ in run(p, Settings(), batch_size=4, flush_rows=10)] for p in (a, b)]
    assert [t.split(":")[1] for t in tokens[0]] == ["0-10", "10-20", "20-25", "final"]
    assert tokens[0][0] == tokens[1][0]
    assert all(x != y for x, y in zip(tokens[0][1:], tokens[1][1:], strict=True))


def test_read_batches_keeps_every_line() -> None:
    raw = b"a\n\nb\r\nc"
    batches = list(read_batches(io.BytesIO(raw), 2))
    assert [lines for lines, _ in batches] == [[b"a", b""], [b"b", b"c"]]
    assert sum(n for _, n in batches) == len(raw)
