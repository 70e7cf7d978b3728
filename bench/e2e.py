"""End to end: real Apache Kafka → ``llmops-stream run`` → ClickHouse (chDB), SPEC §6.

1. Throughput: ``--events`` synthetic events (no embeddings) are produced to a topic first,
   then one worker consumes them; sustained events/s is measured on the group's committed
   offsets (commits happen only after ClickHouse holds the rows), from the first commit to
   the last.
2. Budget-alert latency: with the worker caught up, events are produced at ``--rate``
   (50,000/s) for ``--seconds``; every budget alert read (read_committed) from
   ``llm.alerts.budget`` is matched to the produce time (Kafka CreateTime) of the event that
   crossed the threshold: latency = alert received − event produced.
3. Worker RSS: the peak over the run, and the RSS right after start-up (chDB opened,
   nothing consumed: chDB's and the runtime's own share).

    python bench/e2e.py [--events 5000000] [--rate 50000] [--seconds 20]

The last line printed is one JSON object:
{"bench": "e2e", "events_per_s", "alert_p99_ms", "rss_mib", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.dev.loadgen import run_loadgen

# the Kafka read-back helpers and the chDB HTTP front of the test suite
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from workers import committed_offsets, end_offsets  # noqa: E402

GROUP = "bench-e2e"
TOPIC = "bench.llm.calls"
BUDGETS = {  # small per-tenant limits: every tenant crosses its levels again and again
    "default": [
        {"id": "hourly", "limit_usd": 0.5, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "daily", "limit_usd": 5.0, "window": "day", "soft": [0.5, 0.8], "hard": 1.0},
    ]
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmops_stream.stream.cli", "run"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_for(pred: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited while waiting for {what}")
        if pred():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


async def latency_phase(
    bootstrap: str, partitions: int, rate: float, seconds: float, prefix: str
) -> tuple[list[float], float]:
    """Produce at ``rate`` while collecting budget alerts; returns latencies (ms), rate."""
    alert_topic = prefix + "llm.alerts.budget"
    start_in = await end_offsets(bootstrap, TOPIC, partitions)
    start_alerts = await end_offsets(bootstrap, alert_topic, partitions)
    received: list[tuple[str, float]] = []
    done = asyncio.Event()

    async def collect() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        await consumer.start()
        tps = [TopicPartition(alert_topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start_alerts[tp.partition])
        try:
            quiet_since = None
            while True:
                batch = await consumer.getmany(timeout_ms=50)
                now = time.time() * 1000
                for recs in batch.values():
                    received.extend(
                        (orjson.loads(r.value)["details"]["event_id"], now) for r in recs
                    )
                if done.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if batch:
                        quiet_since = time.monotonic()
                    if time.monotonic() - quiet_since > 5:
                        return
        finally:
            await consumer.stop()

    collector = asyncio.create_task(collect())
    stats = await run_loadgen(
        bootstrap,
        topic=TOPIC,
        rate=rate,
        n_events=int(rate * seconds),
        seed=99,
        n_tenants=2000,
        embedding_share=0.0,
    )
    done.set()
    await collector

    # produce times of the crossing events: the input records' CreateTime
    wanted = {event_id for event_id, _ in received}
    produced: dict[str, int] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, start_in[tp.partition])
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                for r in recs:
                    event_id = orjson.loads(r.value).get("event_id")
                    if event_id in wanted:
                        produced[event_id] = r.timestamp
    finally:
        await consumer.stop()
    latencies = [recv - produced[e] for e, recv in received if e in produced]
    return latencies, stats.achieved_rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=float, default=50_000.0, help="latency phase rate")
    ap.add_argument("--seconds", type=float, default=20.0, help="latency phase length")
    ap.add_argument("--tenants", type=int, default=2000, help="tenants in the traffic")
    ap.add_argument(
        "--clickhouse",
        choices=("chdb", "http"),
        default="chdb",
        help="chdb: embedded in the worker (its memory counts in the worker's RSS); http: "
        "the test HTTP front over chDB in another process, so the worker's RSS is its own",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llmops-e2e-"))
    budgets = tmp / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    broker = KafkaBroker(data_dir=tmp / "kafka", heap="1g")
    broker.start()
    proc: subprocess.Popen[bytes] | None = None
    front = None
    try:
        clickhouse_url = f"chdb://{tmp / 'ch'}"
        if args.clickhouse == "http":
            from chdb_front import FrontProcess  # noqa: PLC0415 - test-only helper

            front = FrontProcess(tmp / "ch", tmp / "front.log").start()
            clickhouse_url = front.url
        bootstrap = broker.bootstrap_servers
        broker.create_topics({TOPIC: args.partitions})
        t = time.perf_counter()
        produced = asyncio.run(
            run_loadgen(
                bootstrap,
                topic=TOPIC,
                rate=math.inf,
                n_events=args.events,
                seed=1,
                n_tenants=args.tenants,
                embedding_share=0.0,
            )
        )
        print(
            f"produced {produced.sent:,} events in {time.perf_counter() - t:.1f} s "
            f"({produced.achieved_rate:,.0f}/s)",
            flush=True,
        )

        prefix = "bench."
        env = {
            **os.environ,
            "LLMOPS_CLICKHOUSE": clickhouse_url,
            "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LLMOPS_TOPIC": TOPIC,
            "LLMOPS_GROUP": GROUP,
            "LLMOPS_OUTPUT_TOPIC_PREFIX": prefix,
            "LLMOPS_PARTITIONS": str(args.partitions),
            "LLMOPS_BUDGETS": str(budgets),
            "LLMOPS_METRICS_PORT": "0",
            "OPENBLAS_NUM_THREADS": "1",
        }
        log = tmp / "worker.log"
        proc = start_worker(env, log)
        wait_for(lambda: b"assigned " in log.read_bytes(), 120, "assignment", proc)
        baseline = rss_mib(proc.pid)
        peak = baseline
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            done = sum(asyncio.run(committed_offsets(bootstrap, GROUP, TOPIC)).values())
            samples.append((time.monotonic(), done))
            peak = max(peak, rss_mib(proc.pid))
            if done >= produced.sent:
                break
            if proc.poll() is not None:
                raise RuntimeError("worker died:\n" + log.read_text()[-3000:])
            time.sleep(0.5)
        first = next(i for i, (_, n) in enumerate(samples) if n > 0)
        (t0, n0), (t1, n1) = samples[max(0, first - 1)], samples[-1]
        rate = (n1 - n0) / (t1 - t0)
        print(
            f"worker: {n1:,} events committed; sustained {rate:,.0f} events/s; "
            f"RSS after start-up {baseline:.0f} MiB, peak {peak:.0f} MiB",
            flush=True,
        )

        latencies, achieved = asyncio.run(
            latency_phase(bootstrap, args.partitions, args.rate, args.seconds, prefix)
        )
        peak = max(peak, rss_mib(proc.pid))
        lat = np.array(latencies) if latencies else np.array([np.nan])
        p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        print(
            f"alert latency at {achieved:,.0f} events/s produced: {len(latencies)} alerts, "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {float(lat.max()):.0f} ms",
            flush=True,
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if front is not None:
            front.stop()
        broker.stop()
    print(
        json.dumps(
            {
                "bench": "e2e",
                "events_per_s": round(rate),
                "alert_p50_ms": round(p50, 1),
                "alert_p99_ms": round(p99, 1),
                "alert_rate_events_per_s": round(achieved),
                "rss_mib": round(peak),
                "rss_startup_mib": round(baseline),
                "events": n1,
                "tenants": args.tenants,
                "clickhouse": args.clickhouse,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
