"""Soak of the dedup set: memory and checkpoint size stay flat over many horizons (SPEC §3, §6).

Streams synthetic events through :class:`~llmops_stream.stream.core.dedup.Deduper` at a
fixed rate of stream-clock time (default 100,000 events per second of clock, so ~6M live
ids with the default 60 s horizon) for ``--horizons`` horizons, with ``--retry`` of the
events repeating an id of the last ~10 s (app retries). After each horizon it prints the
horizon index, the clock, live ids, ``memory_bytes()``, the process RSS (and its peak so
far, which shows the transient of the per-shard rehashes), the snapshot's
size and time and the events/s of the checks.

Keys are fed pre-hashed: ids are drawn as uniform 64-bit keys (what ``dedup_keys`` yields
for real ids) and go through the internal entry point ``Deduper._check_keys``, because
building and hashing ~70M Python strings would take most of the run and measures the string
hashing rather than the set. The full ``check()`` path (strings -> UTF-8 buffer -> FNV-1a
-> mixer -> set) is measured apart on a sample and printed before the summary.

    python bench/soak.py [--horizon-s 60] [--horizons 12] [--rate 100000] [--retry 0.03]

The last line printed is one JSON object: {"bench": "soak", "bytes_per_live_id",
"rss_mib_first_horizon", "rss_mib_last_horizon", "checkpoint_bytes_max", "live_ids_max",
"events_per_s"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmops_stream.stream.core.dedup import Deduper  # noqa: E402

BATCH = 20_000  # events per check(), as the engine's micro-batches
RING = 1 << 20  # recent ids retries are drawn from (~10 s at the default rate)
T0 = 1_700_000_000_000  # clock origin, epoch ms


def rss_mib(field: str = "VmRSS") -> float:
    """Resident set size of this process (``VmRSS``; ``VmHWM``: its peak so far), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def string_path_rate(horizon_ms: int, n: int = 200_000) -> float:
    """Events/s of the public ``check()`` on string ids (hashing included)."""
    rng = np.random.default_rng(1)
    tenants = np.array([f"tenant-{i:05d}" for i in rng.integers(0, 2_000, n)], dtype=object)
    events = np.array([f"evt-{i:016x}" for i in rng.integers(0, 2**60, n)], dtype=object)
    clocks = T0 + np.arange(n, dtype=np.int64) // 100
    offsets = np.arange(n, dtype=np.int64)
    d = Deduper(horizon_ms)
    d.check(tenants[:1000], events[:1000], clocks[:1000], offsets[:1000])  # compile/load
    start = time.perf_counter()
    for a in range(1000, n, BATCH):
        b = min(n, a + BATCH)
        d.check(tenants[a:b], events[a:b], clocks[a:b], offsets[a:b])
    return (n - 1000) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--horizon-s", type=float, default=60.0, help="dedup horizon, s of clock")
    ap.add_argument("--horizons", type=int, default=12, help="horizons of clock to stream")
    ap.add_argument("--rate", type=int, default=100_000, help="events per second of clock")
    ap.add_argument("--retry", type=float, default=0.03, help="share of repeated ids")
    args = ap.parse_args()

    horizon_ms = int(args.horizon_s * 1000)
    per_horizon = int(args.rate * args.horizon_s)
    rng = np.random.default_rng(7)
    ring = rng.integers(0, 2**64, RING, dtype=np.uint64)
    d = Deduper(horizon_ms)
    d._check_keys(ring[:10], np.full(10, T0 - horizon_ms * 10), np.arange(-10, 0))  # compile
    d.expire(T0)
    print(f"RSS before streaming (interpreter, numpy, numba, kernels): {rss_mib():.1f} MiB")
    print(
        f"horizon {args.horizon_s:g} s of clock, {args.rate:,} events/s of clock, "
        f"{args.retry:.0%} retries, {args.horizons} horizons, batches of {BATCH:,}"
    )
    print(
        f"{'h':>3} {'clock s':>8} {'live ids':>11} {'memory B':>12} {'B/id':>6} "
        f"{'RSS MiB':>8} {'peak MiB':>8} {'ckpt B':>7} {'ckpt ms':>8} {'events/s':>11}"
    )
    event = 0
    cursor = 0
    dups = 0
    check_s = 0.0
    rows = []
    for h in range(1, args.horizons + 1):
        h_events, h_s = 0, 0.0
        end = h * per_horizon
        while event < end:
            n = min(BATCH, end - event)
            keys = rng.integers(0, 2**64, n, dtype=np.uint64)
            n_retry = rng.binomial(n, args.retry)
            keys[rng.integers(0, n, n_retry)] = ring[rng.integers(0, RING, n_retry)]
            idx = np.arange(event, event + n, dtype=np.int64)
            clocks = T0 + idx * 1000 // args.rate
            start = time.perf_counter()
            dup = d._check_keys(keys, clocks, idx)
            h_s += time.perf_counter() - start
            dups += int(dup.sum())
            pos = (cursor + np.arange(n)) % RING
            ring[pos] = keys
            cursor = (cursor + n) % RING
            event += n
            h_events += n
        start = time.perf_counter()
        snap = d.snapshot()
        snap_ms = (time.perf_counter() - start) * 1000
        check_s += h_s
        row = {
            "horizon": h,
            "clock_s": (d.clock_ms - T0) / 1000,
            "live": len(d),
            "memory": d.memory_bytes(),
            "rss": rss_mib(),
            "ckpt": len(snap),
            "ckpt_ms": snap_ms,
            "rate": h_events / h_s,
        }
        rows.append(row)
        print(
            f"{h:>3} {row['clock_s']:>8.1f} {row['live']:>11,} {row['memory']:>12,} "
            f"{row['memory'] / max(1, row['live']):>6.2f} {row['rss']:>8.1f} "
            f"{rss_mib('VmHWM'):>8.1f} {row['ckpt']:>7} "
            f"{snap_ms:>8.3f} {row['rate']:>11,.0f}"
        )
    print(f"duplicates found: {dups:,} of {event:,} events")
    print(f"check() with string ids (hashing included): {string_path_rate(horizon_ms):,.0f} ev/s")
    last = rows[-1]
    summary = {
        "bench": "soak",
        "bytes_per_live_id": round(last["memory"] / max(1, last["live"]), 2),
        "rss_mib_first_horizon": round(rows[0]["rss"], 1),
        "rss_mib_last_horizon": round(last["rss"], 1),
        "checkpoint_bytes_max": max(r["ckpt"] for r in rows),
        "live_ids_max": max(r["live"] for r in rows),
        "events_per_s": round(event / check_s),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
