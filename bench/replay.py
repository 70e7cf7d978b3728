"""The whole ``llmops-stream replay`` process on a generated JSONL file (SPEC §6).

Generates a file like the issue's reference (600,000 events without embeddings, about half
of them with a 4-chunk retrieval), then times ``python -m llmops_stream.stream.cli replay FILE``
into a fresh embedded ClickHouse, from process start to exit (imports, compilation, engine,
sink, final flush: what a user waits for). Baselines in the same run: reading and decoding
the same file with the fastest JSON decoder (orjson per line, collector off), in process;
and the start-up alone: ``replay`` of an empty file, best of 3.

    python bench/replay.py [--events 600000] [--keep FILE]

The last line printed is one JSON object:
{"bench": "replay", "events_per_s", "seconds", "events", "avg_bytes", "vs_decode_only",
"cpu_seconds", "startup_seconds", "load_avg"}: ``cpu_seconds`` is the replay process's user
+ system time (above ``seconds`` when the flush thread ran beside the engine, and the
figure to compare when other work shares the machine), ``load_avg`` the 1-minute load
average before the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmops_stream.stream.dev.synth import SynthConfig, generate_events  # noqa: E402


def write_file(path: Path, n: int) -> float:
    """Write ``n`` events to ``path``; returns the average line size in bytes."""
    cfg = SynthConfig(n_events=n, seed=11, embedding_share=0.0, retrieval_share=0.5)
    size = 0
    with path.open("wb") as f:
        for raw in generate_events(cfg):
            f.write(raw + b"\n")
            size += len(raw) + 1
    return size / max(n, 1)


def decode_only(path: Path) -> float:
    """Events/s of reading the file and decoding every line with orjson."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        with path.open("rb") as f:
            n = sum(1 for line in f if orjson.loads(line) is not None)
        return n / (time.perf_counter() - started)
    finally:
        gc.enable()


def run_replay(path: Path, chdb_dir: Path) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """``replay path`` in a fresh process into ``chdb_dir``: (the run, wall s, CPU s)."""
    env = {**os.environ, "LLMOPS_CLICKHOUSE": f"chdb://{chdb_dir}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", "replay", str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return run, seconds, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--keep", type=Path, help="reuse (or write) the event file here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "events.jsonl"
        if path.exists():
            avg = path.stat().st_size / max(sum(1 for _ in path.open("rb")), 1)
        else:
            avg = write_file(path, args.events)
        n = sum(1 for _ in path.open("rb"))
        load = os.getloadavg()[0]
        run, seconds, cpu = run_replay(path, Path(tmp) / "ch")
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        empty = Path(tmp) / "empty.jsonl"
        empty.write_bytes(b"")
        startup = min(run_replay(empty, Path(tmp) / f"ch-empty-{i}")[1] for i in range(3))
        baseline = decode_only(path)
    rate = n / seconds
    print(
        f"replay of {n:,} events ({avg:.0f} B avg): {seconds:.1f} s, whole process "
        f"({cpu:.1f} s CPU; load average {load:.1f} before)"
    )
    print(f"  start-up (empty replay)  {startup:>12.2f} s")
    print(f"  replay                   {rate:>12,.0f} events/s")
    print(f"  decode-only (orjson)     {baseline:>12,.0f} events/s")
    print(f"  replay / decode-only     {rate / baseline:>12.2f}")
    print(
        json.dumps(
            {
                "bench": "replay",
                "events_per_s": round(rate),
                "seconds": round(seconds, 2),
                "events": n,
                "avg_bytes": round(avg),
                "vs_decode_only": round(rate / baseline, 3),
                "cpu_seconds": round(cpu, 2),
                "startup_seconds": round(startup, 2),
                "load_avg": round(load, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
