"""The whole ``llmops-stream replay`` process on a generated JSONL file (SPEC §6).

Generates a file like the issue's reference (600,000 events without embeddings, about half
of them with a 4-chunk retrieval), then times ``python -m llmops_stream.stream.cli replay FILE``
into a fresh embedded ClickHouse, from process start to exit (imports, compilation, engine,
sink, final flush: what a user waits for). Baselines in the same run: reading and decoding
the same file with the fastest JSON decoder (orjson per line, collector off), in process.

    python bench/replay.py [--events 600000] [--keep FILE]

The last line printed is one JSON object:
{"bench": "replay", "events_per_s", "seconds", "events", "avg_bytes", "vs_decode_only"}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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
        env = {**os.environ, "LLMOPS_CLICKHOUSE": f"chdb://{Path(tmp) / 'ch'}"}
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "llmops_stream.stream.cli", "replay", str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        baseline = decode_only(path)
    rate = n / seconds
    print(f"replay of {n:,} events ({avg:.0f} B avg): {seconds:.1f} s, whole process")
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
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
