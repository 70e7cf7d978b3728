"""ClickHouse sink flush: rows/s into chDB, and how much of a flush holds the GIL.

The Kafka worker flushes on a background thread while the main thread processes the next
batch, so what a flush costs the worker is the Python time it takes from the main thread,
not its wall time. Per flush this prints:

* ``flush``: wall time of ``ClickHouseSink.flush`` alone, and call rows/s;
* ``sink``: the part spent outside clickhouse-connect (building the Arrow tables);
* ``client``: the part spent inside clickhouse-connect's insert calls (whatever the sink
  leaves to the client — IPC serialisation for ``insert_arrow`` —, the temp file, chDB);
* ``cpu``: CPU time of the flushing thread itself (chDB's own threads not included);
* ``lost``: with the flush on a background thread and the main thread running Python
  without pause (a worst case: the engine often runs without the GIL), the main-thread
  time lost while the flush ran: its wall time minus its CPU time, split by whether a
  client call was running. A thread waiting for the GIL sleeps, so this is the time the
  flush kept the GIL from the main thread, hand-overs included (plus any time the OS
  preempted the main thread, e.g. for chDB's threads: chDB itself runs without the GIL).
  The main thread's loop rate would be a worse gauge: on a small VM, a thread busy
  without the GIL still slows the other one down.
  ``busy flush`` is the flush's wall time in that setting (each time it takes the GIL
  back it may wait out the interpreter's switch interval).

Data: ``--events`` synthetic events (no embeddings) processed by the engine in batches of
``--batch`` (not timed); their outputs (calls and per-minute usage rows, budget states, no
alerts) are buffered and flushed into chDB in a temp dir ``--repeat`` times with a new
token each, versions taking turns, and the best run of each measure is reported. The
outputs stay referenced throughout, so the freeing of their Python strings (which in the
worker happens when a flush drops its buffers) is not part of the figures.

``--baseline FILE`` measures another version of ``stream/sink_clickhouse.py`` as well
(e.g. ``git show HEAD~1:stream/sink_clickhouse.py > /tmp/old_sink.py``), loaded as a
module of the same package, each into its own database of the one chDB engine.

    python bench/sink.py [--events 200000] [--batch 20000] [--repeat 5] [--baseline FILE]

The last line printed is one JSON object: {"bench": "sink", "rows_per_s", "lost_ms", ...}.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmops_stream.stream.clickhouse import sink as sink_clickhouse  # noqa: E402
from llmops_stream.stream.core.engine import BatchOutput, Engine, EngineConfig  # noqa: E402
from llmops_stream.stream.core.pricing import PriceTable  # noqa: E402
from llmops_stream.stream.dev.synth import SynthConfig, generate_events  # noqa: E402


class TimedClient:
    """Forwards to a clickhouse-connect client, recording when each insert call ran."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[tuple[float, float]] = []  # perf_counter at entry and exit

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not name.startswith(("insert", "raw_insert")):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.calls.append((started, time.perf_counter()))

        return timed

    @property
    def seconds(self) -> float:
        return sum(end - start for start, end in self.calls)

    def inside(self, t: float) -> bool:
        return any(start <= t < end for start, end in self.calls)


@dataclass
class Run:
    flush_s: float
    client_s: float
    cpu_s: float
    lost_sink_s: float = float("nan")
    lost_client_s: float = float("nan")

    @property
    def lost_s(self) -> float:
        return self.lost_sink_s + self.lost_client_s


def load_sink_module(path: Path) -> ModuleType:
    """Another version of the sink module, importable next to the current one."""
    name = "llmops_stream.stream._bench_baseline_sink"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def engine_outputs(n_events: int, batch: int) -> list[BatchOutput]:
    events = list(generate_events(SynthConfig(n_events=n_events, seed=1, embedding_share=0.0)))
    engine = Engine(EngineConfig(prices=PriceTable()))
    outs = []
    for i in range(0, len(events), batch):
        out = engine.process(events[i : i + batch], source="llm.calls")
        out.alerts = []  # alerts are a handful of rows built from Python objects
        outs.append(out)
    return outs


def _busy(done: threading.Event) -> list[tuple[float, float]]:
    """Run Python until ``done``; (wall, own CPU) samples every ~0.2 ms."""
    samples = [(time.perf_counter(), time.thread_time())]
    while not done.is_set():
        now = time.perf_counter()
        if now - samples[-1][0] >= 2e-4:
            samples.append((now, time.thread_time()))
    samples.append((time.perf_counter(), time.thread_time()))
    return samples


def one_flush(
    module: ModuleType, client: Any, db: str, outs: list[BatchOutput], token: str, *, busy: bool
) -> Run:
    """Flush ``outs`` once on a background thread; when ``busy``, the main thread runs
    Python meanwhile and the time it lost is measured, inside and outside client calls."""
    timed = TimedClient(client)
    sink = module.ClickHouseSink(timed, db)
    for out in outs:
        sink.add(out)
    result: dict[str, float] = {}
    go, done = threading.Event(), threading.Event()

    def work() -> None:
        go.wait()
        cpu = time.thread_time()
        started = time.perf_counter()
        try:
            sink.flush(token)
        finally:
            result["wall"] = time.perf_counter() - started
            result["cpu"] = time.thread_time() - cpu
            done.set()

    thread = threading.Thread(target=work)
    thread.start()
    if not busy:
        go.set()
        thread.join()
        return Run(result["wall"], timed.seconds, result["cpu"])
    go.set()  # the flush starts while the main thread is already busy
    samples = _busy(done)
    thread.join()
    lost = {True: 0.0, False: 0.0}
    for (w0, c0), (w1, c1) in itertools.pairwise(samples):
        lost[timed.inside(w0)] += (w1 - w0) - (c1 - c0)
    return Run(result["wall"], timed.seconds, result["cpu"], lost[False], lost[True])


def summarise(runs: list[Run], busy: list[Run], n_calls: int) -> dict[str, float]:
    """The best of each measure over the runs (the least disturbed by anything else)."""
    best = min(runs, key=lambda r: r.flush_s)
    least = min(busy, key=lambda r: r.lost_s)
    return {
        "flush_ms": best.flush_s * 1e3,
        "rows_per_s": n_calls / best.flush_s,
        "sink_ms": min(r.flush_s - r.client_s for r in runs) * 1e3,
        "client_ms": min(r.client_s for r in runs) * 1e3,
        "cpu_ms": min(r.cpu_s for r in runs) * 1e3,
        "busy_flush_ms": min(r.flush_s for r in busy) * 1e3,
        "lost_ms": least.lost_s * 1e3,
        "lost_sink_ms": least.lost_sink_s * 1e3,
        "lost_client_ms": least.lost_client_s * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="another sink_clickhouse.py to compare")
    args = ap.parse_args()

    outs = engine_outputs(args.events, args.batch)
    n_calls = sum(len(o.calls["event_id"]) for o in outs)
    n_usage = sum(len(o.usage["minute"]) for o in outs)
    print(f"{n_calls} call rows, {n_usage} usage rows per flush; best of {args.repeat}")
    versions: dict[str, ModuleType] = {"current": sink_clickhouse}
    if args.baseline is not None:
        versions = {"baseline": load_sink_module(args.baseline), **versions}
    runs: dict[str, tuple[list[Run], list[Run]]] = {name: ([], []) for name in versions}
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        client = sink_clickhouse.connect(f"chdb://{tmp}/ch", "bench_setup")
        for name in versions:
            db = f"bench_{name}"
            sink_clickhouse.apply_schema(client, db)
            # Background merges of earlier flushes' parts would compete for the CPU with
            # the flush being measured; they are stopped so that each run measures one flush.
            for table in ("llm_calls", "llm_usage_1m", "llm_budget_state"):
                client.command(f"SYSTEM STOP MERGES {db}.{table}")
        # versions take turns, so that load from outside the benchmark hits them alike
        for i in range(args.repeat):
            for name, module in versions.items():
                solo, busy = runs[name]
                db = f"bench_{name}"
                solo.append(one_flush(module, client, db, outs, f"solo-{i}", busy=False))
                busy.append(one_flush(module, client, db, outs, f"busy-{i}", busy=True))
        for name in versions:
            stored = int(client.command(f"SELECT count() FROM bench_{name}.llm_calls"))  # noqa: S608
            if stored != 2 * args.repeat * n_calls:
                raise SystemExit(
                    f"{name}: {stored} call rows stored, expected {2 * args.repeat * n_calls}"
                )
        client.close()
    results = {name: summarise(*runs[name], n_calls) for name in versions}
    for name, r in results.items():
        print(
            f"{name:>8}: flush {r['flush_ms']:5.0f} ms ({r['rows_per_s']:,.0f} call rows/s)"
            f" = sink {r['sink_ms']:4.0f} + client {r['client_ms']:4.0f} ms,"
            f" thread CPU {r['cpu_ms']:4.0f} ms | busy main thread: flush"
            f" {r['busy_flush_ms']:5.0f} ms, main thread lost {r['lost_ms']:4.0f} ms"
            f" = {r['lost_sink_ms']:4.0f} in sink + {r['lost_client_ms']:4.0f} in client"
        )
    summary: dict[str, Any] = {
        "bench": "sink",
        "call_rows": n_calls,
        "usage_rows": n_usage,
        **results["current"],
    }
    if "baseline" in results:
        base, cur = results["baseline"], results["current"]
        summary["baseline"] = base
        summary["speedup_rows_per_s"] = cur["rows_per_s"] / base["rows_per_s"]
        summary["lost_ratio"] = cur["lost_ms"] / base["lost_ms"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
