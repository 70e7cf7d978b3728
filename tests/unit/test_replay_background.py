"""Replay's flushes on a background thread (:class:`BackgroundFlusher`): the same flushes,
tokens and rows as inline, in order, one at a time, while the engine goes on; a flush's
error reaches the caller; replay returns only once the final flush is written."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from otlp_spans import build_spans

from llmops_stream.stream.dev.synth import SynthConfig, generate_bad_events, generate_events
from llmops_stream.stream.files.flushing import BackgroundFlusher, Flusher
from llmops_stream.stream.files.replay import ReplayStats, build_engine, finish, replay
from llmops_stream.stream.runtime.settings import Settings

FLUSH = 500
BUDGETS = '{"default": [{"id": "h", "limit_usd": 0.2, "window": "1h", "soft": [0.5], "hard": 1}]}'


class Recorder:
    """A sink keeping what each flush would insert; a pair shares one ``log`` of flushes.

    ``delay``: seconds each flush takes; ``fail``: the token prefix whose flush raises.
    """

    def __init__(self, log: list[Any], *, delay: float = 0.0, fail: str | None = None) -> None:
        self.log = log
        self.delay = delay
        self.fail = fail
        self.adds = 0
        self.running = 0
        self.most_running = 0
        self.failed = threading.Event()
        self._new()

    def _new(self) -> None:
        self.buf: dict[str, list[Any]] = {"calls": [], "rejected": [], "alerts": [], "states": []}

    def add(self, out: Any) -> None:
        self.adds += 1
        c, r = out.calls, out.rejected
        self.buf["calls"] += zip(c["event_id"], c["kafka_offset"].tolist(), strict=True)
        self.buf["rejected"] += zip(r["reason"], r["kafka_offset"].tolist(), strict=True)
        self.add_alerts(out.alerts)
        self.add_states(out.budget_states)

    def add_alerts(self, alerts: list[Any]) -> None:
        self.buf["alerts"] += [(a.alert_id, a.status) for a in alerts]

    def add_states(self, states: dict[str, Any]) -> None:
        self.buf["states"] += list(states.get("tenant_id", []))

    def flush(self, token: str) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.delay)
            if self.fail is not None and token.startswith(self.fail):
                raise RuntimeError(f"insert of {token} refused")
            rows = {k: sorted(v) for k, v in self.buf.items()}
            self.log.append((token, rows, threading.current_thread() is threading.main_thread()))
            self._new()
        finally:
            self.running -= 1
            if self.fail is not None and token.startswith(self.fail):
                self.failed.set()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    tmp = tmp_path_factory.mktemp("background")
    lines = list(
        generate_events(
            SynthConfig(n_events=3000, seed=9, n_tenants=5, rate_per_s=1.0, duplicate_share=0.02)
        )
    )
    for i, raw in enumerate(r.replace(b"\n", b" ") for r, _ in generate_bad_events(3)):
        lines.insert((i * 97) % len(lines), raw)
    for i in range(0, len(lines), 401):
        lines.insert(i, b"")
    path = tmp / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    budgets = tmp / "budgets.json"
    budgets.write_text(BUDGETS)
    return path, Settings(budgets=budgets)


def inline(path: Path, settings: Settings, **kw: Any) -> list[Any]:
    log: list[Any] = []
    kw.setdefault("flush_rows", FLUSH)
    replay([str(path)], build_engine(settings), Recorder(log), **kw)
    return log


def background(path: Path, settings: Settings, delay: float, **kw: Any) -> list[Any]:
    log: list[Any] = []
    pair = Recorder(log, delay=delay), Recorder(log, delay=delay)
    with BackgroundFlusher(*pair) as flusher:
        replay([str(path)], build_engine(settings), flusher, **{"flush_rows": FLUSH, **kw})
        assert len(log) == len(inline(path, settings, **kw)), "replay returned before the end"
    assert max(s.most_running for s in pair) == 1
    assert sum(s.running for s in pair) == 0
    return log


def test_same_flushes_in_order_off_the_main_thread(data: tuple[Path, Settings]) -> None:
    path, settings = data
    base = inline(path, settings, batch_size=300)
    assert len(base) > 6 and all(on_main for *_, on_main in base)
    assert sum(len(rows["alerts"]) for _, rows, _ in base) > 0, "budget sized to fire"
    assert sum(len(rows["rejected"]) for _, rows, _ in base) > 0
    got = background(path, settings, delay=0.02, batch_size=300)
    assert [tok for tok, *_ in got] == [tok for tok, *_ in base]
    assert [rows for _, rows, _ in got] == [rows for _, rows, _ in base]
    assert not any(on_main for *_, on_main in got)


def test_tokens_name_line_ranges_and_content(data: tuple[Path, Settings]) -> None:
    """The tokens are those of the module doc, computed here from the file alone."""
    path, settings = data
    lines = path.read_bytes().split(b"\n")[:-1]
    got = [tok for tok, *_ in background(path, settings, delay=0.0, batch_size=777)]
    ends = [*range(FLUSH, len(lines), FLUSH), len(lines)]
    want = []
    for lo, hi in zip([0, *ends], ends, strict=False):
        text = b"".join(x.rstrip(b"\r\n") + b"\n" for x in lines[:hi])
        digest = hashlib.blake2b(text, digest_size=16)
        want.append(f"replay:{lo}-{hi}:{digest.hexdigest()}")
    whole = hashlib.blake2b(want[-1].rsplit(":", 1)[1].encode() + b"\n", digest_size=16)
    assert got == [*want, f"replay:final:{whole.hexdigest()}"]


def test_next_batches_buffered_while_a_flush_runs(data: tuple[Path, Settings]) -> None:
    """The first flush waits (up to 10 s) until the engine's next batch reached the other
    sink: done inline, that batch would come only after the flush."""
    path, settings = data
    log: list[Any] = []
    spare = Recorder(log)

    class Slow(Recorder):
        overlapped: bool | None = None

        def flush(self, token: str) -> None:
            if self.overlapped is None:
                deadline = time.monotonic() + 10
                while spare.adds == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
                self.overlapped = spare.adds > 0
            super().flush(token)

    first = Slow(log)
    with BackgroundFlusher(first, spare) as flusher:
        replay([str(path)], build_engine(settings), flusher, batch_size=100, flush_rows=FLUSH)
    assert first.overlapped is True
    assert [tok for tok, *_ in log] == [tok for tok, *_ in inline(path, settings, batch_size=100)]


def test_error_of_a_flush_is_raised_at_the_next_call() -> None:
    log: list[Any] = []
    a, b = Recorder(log, fail="t2"), Recorder(log, fail="t2")
    flusher = BackgroundFlusher(a, b)
    flusher.add_alerts([])
    flusher.flush("t1")
    flusher.flush("t2")
    assert b.failed.wait(10), "the sinks take turns: t2 is the spare's"
    assert [tok for tok, *_ in log] == ["t1"]
    with pytest.raises(RuntimeError, match="insert of t2 refused"):
        flusher.add_states({})
    with pytest.raises(RuntimeError, match="insert of t2 refused"):
        flusher.flush("t3")  # still raised: what failed was not written
    with pytest.raises(RuntimeError, match="insert of t2 refused"):
        flusher.close()
    assert [tok for tok, *_ in log] == ["t1"], "no flush written after the failed one"


def test_error_of_the_last_flush_is_raised_by_replay(data: tuple[Path, Settings]) -> None:
    """No call comes after the final flush: replay itself raises its error."""
    path, settings = data
    log: list[Any] = []
    pair = Recorder(log, fail="replay:final:"), Recorder(log, fail="replay:final:")
    with pytest.raises(RuntimeError, match="replay:final:"), BackgroundFlusher(*pair) as flusher:
        replay([str(path)], build_engine(settings), flusher, batch_size=900, flush_rows=FLUSH)
    assert log and not any(tok.startswith("replay:final:") for tok, *_ in log)


def test_error_mid_replay_stops_it(data: tuple[Path, Settings]) -> None:
    path, settings = data
    log: list[Any] = []
    bad = f"replay:{FLUSH}-"
    pair = Recorder(log, delay=0.01, fail=bad), Recorder(log, delay=0.01, fail=bad)
    with pytest.raises(RuntimeError, match="refused"), BackgroundFlusher(*pair) as flusher:
        replay([str(path)], build_engine(settings), flusher, batch_size=100, flush_rows=FLUSH)
    assert [tok.split(":")[1] for tok, *_ in log] == [f"0-{FLUSH}"]


def test_final_flush_waits_for_every_flush(data: tuple[Path, Settings]) -> None:
    """finish() returns once the flushes before it and its own are written."""
    path, settings = data
    log: list[Any] = []
    engine = build_engine(settings)
    with BackgroundFlusher(Recorder(log, delay=0.3), Recorder(log, delay=0.3)) as flusher:
        flusher.add(engine.process(path.read_bytes().splitlines()[:800]))
        flusher.flush("first")
        finish(engine, flusher, ReplayStats(), token="last")  # noqa: S106 - an insert token
        assert [tok for tok, *_ in log] == ["first", "last"]
        assert log[0][1]["calls"]


def test_inline_flusher_runs_at_once() -> None:
    log: list[Any] = []
    flusher = Flusher(Recorder(log))
    flusher.flush(lambda: "made-when-run")
    assert [tok for tok, *_ in log] == ["made-when-run"]


def test_otlp_replay_in_background(tmp_path: Path) -> None:
    lines = [
        build_spans(n, seed=i, start_ms=1_748_736_000_000 + i * 60_000).encode("otlp_json")
        for i, n in enumerate([40, 7, 0, 90, 3, 25])
    ]
    path = tmp_path / "spans.jsonl"
    path.write_bytes(b"\n".join([*lines[:2], b"{oops", b"", *lines[2:]]) + b"\n")
    kw: dict[str, Any] = {"batch_size": 30, "fmt": "otlp-json", "flush_rows": 40}
    base = inline(path, Settings(), **kw)
    assert len(base) > 3
    assert sum(len(rows["calls"]) for _, rows, _ in base) == 165
    assert background(path, Settings(), delay=0.01, **kw) == [
        (tok, rows, False) for tok, rows, _ in base
    ]


def test_failed_job_stops_the_flushes_after_it() -> None:
    """A job that fails (e.g. hashing the lines a token names) leaves that token unmade: the
    flush asked after it is not written, and the error reaches the caller."""
    log: list[Any] = []
    flusher = BackgroundFlusher(Recorder(log), Recorder(log))
    asked = threading.Event()

    def broken() -> None:
        asked.wait(10)  # fails only once the flush after it was asked for
        raise OSError("lines unreadable")

    flusher.flush("before")
    flusher.run(broken)
    flusher.flush(lambda: "after")
    time.sleep(0.2)  # the flush thread takes the flush up and waits for its token
    asked.set()
    with pytest.raises(OSError, match="lines unreadable"):
        flusher.close()
    assert [tok for tok, *_ in log] == ["before"]
