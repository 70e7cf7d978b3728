"""``replay --format otlp-json`` below the CLI: span lines through the engine, conversion
rejects beside the engine's, skipped spans counted, and flushes, tokens and positions that
follow from the file's content alone (whatever the batch size), so reruns store once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from otlp_spans import build_spans, otlp_json, sdk_request

from llmops_stream.stream.files.replay import build_engine, replay
from llmops_stream.stream.runtime.settings import Settings

FLUSH = 20


class Sink:
    """Keeps what each flush would insert: calls and rejects with their positions."""

    def __init__(self) -> None:
        self.flushes: list[tuple[str, dict[str, list[Any]]]] = []
        self.rows: dict[str, list[Any]] = {"calls": [], "rejected": []}
        self.rows_buffered = 0

    def add(self, out: Any) -> None:
        c, r = out.calls, out.rejected
        self.rows["calls"] += zip(
            c["event_id"], c["tenant_id"], c["kafka_partition"].tolist(),
            c["kafka_offset"].tolist(), c["cost_usd"].tolist(), strict=True,
        )  # fmt: skip
        self.rows["rejected"] += zip(
            r["reason"], r["tenant_id"], r["event_id"], r["kafka_offset"].tolist(),
            r["source"], r["raw"], strict=True,
        )  # fmt: skip

    def add_alerts(self, alerts: list[Any]) -> None:
        pass

    def add_states(self, states: Any) -> None:
        pass

    def flush(self, token: str) -> None:
        self.flushes.append((token, {k: sorted(v) for k, v in self.rows.items()}))
        self.rows = {"calls": [], "rejected": []}


@pytest.fixture(scope="module")
def otlp_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """Lines of SDK-made requests (some big, some small), a garbage line, a blank line, a
    request with no tenant; returns the file and the v1 events its good spans stand for."""
    lines: list[bytes] = []
    events: list[bytes] = []
    for i, n in enumerate([30, 3, 55, 0, 12, 70, 1]):
        batch = build_spans(n, seed=i, non_genai=1, start_ms=1_748_736_000_000 + i * 600_000)
        lines.append(batch.encode("otlp_json"))
        events += batch.events
        if i == 2:
            lines += [b"{not json", b""]
        if i == 4:
            no_tenant = sdk_request(
                [{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}] * 2,
                resource={"service.name": "bot"},
            )
            lines.append(build_spans(0).encode("otlp_json"))  # an empty-ish request
            lines.append(otlp_json(no_tenant))
    path = tmp_path_factory.mktemp("otlp") / "spans.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, events


def run(path: Path, batch_size: int, **kw: Any) -> tuple[list[Any], Any]:
    sink = Sink()
    result = replay(
        [str(path)],
        build_engine(Settings()),
        sink,  # type: ignore[arg-type]
        batch_size=batch_size,
        flush_rows=FLUSH,
        fmt="otlp-json",
        **kw,
    )
    return sink.flushes, result


def test_calls_rejects_and_skipped_spans(otlp_file: tuple[Path, list[bytes]]) -> None:
    path, events = otlp_file
    flushes, result = run(path, batch_size=50)
    calls = [row for _, rows in flushes for row in rows["calls"]]
    rejected = [row for _, rows in flushes for row in rows["rejected"]]
    assert sorted(c[0] for c in calls) == sorted(orjson.loads(e)["event_id"] for e in events)
    assert sorted((r[0], r[1]) for r in rejected) == [
        ("invalid_otlp", ""),
        ("missing_field", ""),
        ("missing_field", ""),
    ]
    assert all(r[4] == "replay:spans.jsonl" for r in rejected)
    garbage = next(r for r in rejected if r[0] == "invalid_otlp")
    assert garbage[5] == b"{not json"
    spans = [orjson.loads(r[5]) for r in rejected if r[0] == "missing_field"]
    assert {s["traceId"] + s["spanId"] for s in spans} == {r[2] for r in rejected if r[2]}
    stats = result.stats
    assert stats["valid"] == len(events) and stats["rejected"] == 3
    assert stats["rejected:missing_field"] == 2 and stats["rejected:invalid_otlp"] == 1
    assert stats["events"] == stats["valid"] + stats["duplicates"] + stats["rejected"]
    # one non-GenAI span per tenant (2) in each of 7 requests, 2 per tenant in the empty one
    assert stats["spans_skipped"] == 7 * 2 + 4


def test_positions_count_spans_and_are_unique(otlp_file: tuple[Path, list[bytes]]) -> None:
    path, _ = otlp_file
    flushes, result = run(path, batch_size=10_000)
    calls = [row for _, rows in flushes for row in rows["calls"]]
    rejected = [row for _, rows in flushes for row in rows["rejected"]]
    offsets = [c[3] for c in calls] + [r[3] for r in rejected]
    assert len(set(offsets)) == len(offsets)
    assert {c[2] for c in calls} == {0}  # file number
    # every span of the file has a number (the garbage line takes one); calls and rejects
    # hold all but the skipped ones
    total = len(calls) + len(rejected) + result.stats["spans_skipped"]
    assert set(offsets) < set(range(total)) and len(offsets) == total - 18
    # within a request, calls are numbered in span order: the file order of event ids
    by_offset = [c[0] for c in sorted(calls, key=lambda c: c[3])]
    assert by_offset == [orjson.loads(e)["event_id"] for e in otlp_file[1]]


@pytest.mark.parametrize("batch_size", [1, 7, 64, 100_000])
def test_flushes_do_not_depend_on_batch_size(
    otlp_file: tuple[Path, list[bytes]], batch_size: int
) -> None:
    path, _ = otlp_file
    base, _ = run(path, batch_size=33)
    assert len(base) > 4, "several flushes: the file holds more than a few FLUSH of spans"
    assert run(path, batch_size=batch_size)[0] == base
    tokens = [tok for tok, _ in base]
    assert tokens[-1].startswith("replay:final:") and len(set(tokens)) == len(tokens)
    # a flush falls after the line where the span count passes a multiple of FLUSH, so no
    # flush holds more than FLUSH plus one line's spans
    assert all(len(rows["calls"]) <= FLUSH + 2 * 70 for _, rows in base)


def test_tokens_name_format_and_tenant_attribute(
    otlp_file: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    """The same bytes read as JSONL, or with another tenant attribute, are other rows, so
    their tokens differ; a copy of the file under another name has the same tokens."""
    path, _ = otlp_file
    base = [tok for tok, _ in run(path, batch_size=100)[0]]
    other = [tok for tok, _ in run(path, batch_size=100, tenant_attribute="org.id")[0]]
    assert not set(base) & set(other)
    sink = Sink()
    replay([str(path)], build_engine(Settings()), sink, batch_size=100, flush_rows=FLUSH)  # type: ignore[arg-type]
    assert not set(base) & {tok for tok, _ in sink.flushes}
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    assert [tok for tok, _ in run(copy, batch_size=5)[0]] == base


def test_custom_tenant_attribute_reads_other_tenants(tmp_path: Path) -> None:
    batch = build_spans(20, tenants=("x", "y"), tenant_attribute="org.id", non_genai=0)
    path = tmp_path / "org.jsonl"
    path.write_bytes(batch.encode("otlp_json") + b"\n")
    flushes, result = run(path, batch_size=100, tenant_attribute="org.id")
    assert sorted({c[1] for _, rows in flushes for c in rows["calls"]}) == ["x", "y"]
    flushes, result = run(path, batch_size=100)
    assert result.stats["rejected:missing_field"] == 20 and result.stats["valid"] == 0


def test_unknown_format(otlp_file: tuple[Path, list[bytes]]) -> None:
    with pytest.raises(ValueError, match="jsonl, otlp-json"):
        replay([str(otlp_file[0])], build_engine(Settings()), None, batch_size=1, flush_rows=1,
               fmt="otlp")  # fmt: skip
