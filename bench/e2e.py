"""End to end: real Apache Kafka → ``llmops-stream run`` → ClickHouse (chDB), SPEC §6.

1. Throughput: ``--events`` synthetic events (no embeddings) are produced to a topic first,
   then one worker consumes them; sustained events/s is measured on the group's committed
   offsets (commits happen only after ClickHouse holds the rows), from the first commit to
   the last.
2. Budget-alert and budget-state latency: with the worker caught up, events are produced
   at ``--rate`` (50,000/s) for ``--seconds``; every budget alert read (read_committed) from
   ``llm.alerts.budget`` is matched to the produce time (Kafka CreateTime) of the event that
   crossed the threshold: alert latency = alert received − event produced. State latency
   is what a gateway waits for: for each crossing that changes a budget's status (its first
   soft level: ``warn``; its hard level: ``exceeded``), the first ``llm.budget.state``
   record showing that status for that tenant and budget, read as the agents read it
   (``read_uncommitted``: the worker publishes states outside its transactions) − the
   crossing event produced.
3. Worker RSS: the peak over the run, and the RSS right after start-up (chDB opened,
   nothing consumed: chDB's and the runtime's own share).

Scale-out, ``--workers N`` > 1 (SPEC §6): the workers share ClickHouse through the test
HTTP front (``--clickhouse http`` implied). The events, produced once, are consumed by one
worker on group ``bench-e2e-1`` (database ``bench_e2e_1``; then stopped), then by N workers
started together on group ``bench-e2e-N`` (database ``bench_e2e_N``: no row dedupes against
the first run's), each measured as in 1. (the N-worker run includes the rebalance as they
join); printed: both rates, their ratio, the core count, each worker's peak RSS. The latency
phase runs against the N workers. ``events_per_s``/``rss_startup_mib`` are then the one
worker's, ``rss_mib`` the highest peak of any worker.

    python bench/e2e.py [--events 5000000] [--rate 50000] [--seconds 20]
    python bench/e2e.py --events 1000000 --workers 2 [--rate 20000]

The last line printed is one JSON object:
{"bench": "e2e", "events_per_s", "alert_p50_ms", "alert_p99_ms", "state_p50_ms",
"state_p99_ms", "rss_mib", ...}, with N > 1 also
"workers", "events_per_s_one", "events_per_s_n", "scale_out_ratio", "cpu_count".
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
from dataclasses import dataclass
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
PREFIX = "bench."
STATUS_RANK = {"ok": 0, "warn": 1, "exceeded": 2}
# small per-tenant limits: every tenant crosses its levels again and again
BUDGETS: dict[str, list[dict[str, Any]]] = {
    "default": [
        {"id": "hourly", "limit_usd": 0.5, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "daily", "limit_usd": 5.0, "window": "day", "soft": [0.5, 0.8], "hard": 1.0},
    ]
}


@dataclass
class Consumed:
    """One run of workers through the backlog."""

    events: int  # committed at the end
    rate: float  # sustained events/s, first commit to last
    startup_mib: float  # the first worker's RSS once it owned partitions
    peaks_mib: list[float]  # per worker


Procs = list[subprocess.Popen[bytes]]


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


def stop_workers(procs: Procs) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(120)


def wait_for(pred: Any, timeout_s: float, what: str, procs: Procs) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"worker exited while waiting for {what}")
        if pred():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def produce_backlog(bootstrap: str, events: int, tenants: int) -> int:
    t = time.perf_counter()
    produced = asyncio.run(
        run_loadgen(
            bootstrap,
            topic=TOPIC,
            rate=math.inf,
            n_events=events,
            seed=1,
            n_tenants=tenants,
            embedding_share=0.0,
        )
    )
    print(
        f"produced {produced.sent:,} events in {time.perf_counter() - t:.1f} s "
        f"({produced.achieved_rate:,.0f}/s)",
        flush=True,
    )
    return produced.sent


def run_workers(
    env: dict[str, str], logs: list[Path], started: Procs, total: int
) -> tuple[Procs, Consumed]:
    """One worker per log on ``env``'s group; sample the group's committed offsets (and
    the workers' RSS) until all ``total`` events are committed. The workers stay up."""
    procs = [start_worker(env, log) for log in logs]
    started.extend(procs)
    wait_for(lambda: any(b"assigned " in p.read_bytes() for p in logs), 120, "assignment", procs)
    startup = rss_mib(procs[0].pid)
    peaks = [rss_mib(proc.pid) for proc in procs]
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        offsets = committed_offsets(
            env["LLMOPS_KAFKA_BOOTSTRAP_SERVERS"], env["LLMOPS_GROUP"], TOPIC
        )
        done = sum(asyncio.run(offsets).values())
        samples.append((time.monotonic(), done))
        peaks = [max(peak, rss_mib(proc.pid)) for peak, proc in zip(peaks, procs, strict=True)]
        if done >= total:
            break
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(
                "worker died:\n" + "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)
            )
        time.sleep(0.5)
    first = next(i for i, (_, n) in enumerate(samples) if n > 0)
    (t0, n0), (t1, n1) = samples[max(0, first - 1)], samples[-1]
    return procs, Consumed(n1, (n1 - n0) / (t1 - t0), startup, peaks)


def print_run(label: str, res: Consumed) -> None:
    rss = (
        f"RSS after start-up {res.startup_mib:.0f} MiB, peak {res.peaks_mib[0]:.0f} MiB"
        if len(res.peaks_mib) == 1
        else "peak RSS " + ", ".join(f"{p:.0f}" for p in res.peaks_mib) + " MiB"
    )
    print(
        f"{label}: {res.events:,} events committed; sustained {res.rate:,.0f} events/s; {rss}",
        flush=True,
    )


def scale_out(
    env: dict[str, str], n: int, tmp: Path, started: Procs, total: int
) -> tuple[Procs, Consumed, Consumed]:
    """One worker (then stopped), then ``n`` workers, each on its own group and database."""
    runs = {}
    for count in (1, n):
        group = f"{GROUP}-{count}"
        env_run = env | {"LLMOPS_GROUP": group, "LLMOPS_CLICKHOUSE_DATABASE": f"bench_e2e_{count}"}
        logs = [tmp / f"{group}-{i}.log" for i in range(count)]
        procs, runs[count] = run_workers(env_run, logs, started, total)
        print_run(f"{count} worker" + "s" * (count > 1), runs[count])
        if count == 1:
            stop_workers(procs)
    ratio = runs[n].rate / runs[1].rate
    print(f"scale-out: {n} workers / 1 worker = {ratio:.2f} on {os.cpu_count()} cores", flush=True)
    return procs, runs[1], runs[n]


@dataclass
class Latencies:
    """Latencies (ms) of the latency phase, and the rate it produced at (events/s)."""

    alerts: list[float]
    states: list[float]
    rate: float


async def collect(
    bootstrap: str,
    topic: str,
    start: dict[int, int],
    isolation_level: str,
    done: asyncio.Event,
    received: list[tuple[float, bytes]],
) -> None:
    """Append (arrival epoch ms, value) of every record of ``topic`` from ``start`` on,
    until ``done`` is set (the workers committed every event) and nothing came for 2 s.
    Values are parsed afterwards: this process shares the cores with the worker."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation_level)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in start]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, start[tp.partition])
    try:
        quiet_since = None
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time() * 1000
            for recs in batch.values():
                received.extend((now, r.value) for r in recs)
            if done.is_set():
                quiet_since = quiet_since or time.monotonic()
                if batch:
                    quiet_since = time.monotonic()
                if time.monotonic() - quiet_since > 2:
                    return
    finally:
        await consumer.stop()


def status_changes(
    alerts: list[dict[str, Any]],
) -> list[tuple[str, str, str, str]]:
    """(event_id, tenant, budget_id, status) of the firing budget alerts whose crossing
    changes the budget's status: its first soft level (→ warn) and its hard level
    (→ exceeded); a later soft level leaves it ``warn``."""
    first_soft = {b["id"]: min(b["soft"]) for b in BUDGETS["default"]}
    out = []
    for a in alerts:
        d = a["details"]
        if d["kind"] == "hard" or d["level"] == first_soft.get(d["budget_id"]):
            out.append((d["event_id"], a["tenant_id"], d["budget_id"], d["status"]))
    return out


def state_latencies(
    changes: list[tuple[str, str, str, str]],
    states: list[tuple[float, bytes]],
    produced: dict[str, int],
) -> list[float]:
    """For each status change, the first state record of its tenant and budget arriving
    after the crossing event was produced with at least that status, minus that time."""
    seen: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for arrival, raw in states:
        value = orjson.loads(raw)
        for b in value["budgets"]:
            key = (value["tenant_id"], b["budget_id"])
            seen.setdefault(key, []).append((arrival, STATUS_RANK[b["status"]]))
    out = []
    for event_id, tenant, budget, status in changes:
        if event_id not in produced:
            continue
        at, rank = produced[event_id], STATUS_RANK[status]
        hits = [t for t, r in seen.get((tenant, budget), ()) if t >= at and r >= rank]
        if hits:
            out.append(hits[0] - at)
    return out


async def caught_up(bootstrap: str, group: str, partitions: int, timeout_s: float) -> None:
    """Wait until ``group`` committed every event produced so far: all alerts are out."""
    end = await end_offsets(bootstrap, TOPIC, partitions)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = await committed_offsets(bootstrap, group, TOPIC)
        if all(done.get(p, 0) >= n for p, n in end.items()):
            return
        await asyncio.sleep(0.5)
    print(f"the workers did not catch up within {timeout_s:.0f} s", flush=True)


async def latency_phase(
    bootstrap: str, group: str, partitions: int, rate: float, seconds: float, prefix: str
) -> Latencies:
    """Produce at ``rate`` while collecting budget alerts and budget states; collect until
    ``group`` has committed everything (a worker behind the rate still counts)."""
    alert_topic, state_topic = prefix + "llm.alerts.budget", prefix + "llm.budget.state"
    start_in = await end_offsets(bootstrap, TOPIC, partitions)
    alert_raw: list[tuple[float, bytes]] = []
    state_raw: list[tuple[float, bytes]] = []
    done = asyncio.Event()
    collectors = [
        asyncio.create_task(
            collect(
                bootstrap,
                topic,
                await end_offsets(bootstrap, topic, partitions),
                isolation,
                done,
                into,
            )
        )
        for topic, isolation, into in (
            (alert_topic, "read_committed", alert_raw),
            (state_topic, "read_uncommitted", state_raw),
        )
    ]
    stats = await run_loadgen(
        bootstrap,
        topic=TOPIC,
        rate=rate,
        n_events=int(rate * seconds),
        seed=99,
        n_tenants=2000,
        embedding_share=0.0,
    )
    await caught_up(bootstrap, group, partitions, timeout_s=600)
    done.set()
    await asyncio.gather(*collectors)

    alerts = [orjson.loads(raw) for _, raw in alert_raw]
    firing = [
        (t, a) for (t, _), a in zip(alert_raw, alerts, strict=True) if a["status"] == "firing"
    ]
    received = [(a["details"]["event_id"], t) for t, a in firing]
    changes = status_changes([a for _, a in firing])

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
    return Latencies(
        alerts=[recv - produced[e] for e, recv in received if e in produced],
        states=state_latencies(changes, state_raw, produced),
        rate=stats.achieved_rate,
    )


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max of ``values`` (NaN if there are none)."""
    arr = np.array(values) if values else np.array([np.nan])
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.max())


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=float, default=50_000.0, help="latency phase rate")
    ap.add_argument("--seconds", type=float, default=20.0, help="latency phase length")
    ap.add_argument("--tenants", type=int, default=2000, help="tenants in the traffic")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="N > 1: measure one worker, then N workers on another group, and their ratio",
    )
    ap.add_argument(
        "--clickhouse",
        choices=("chdb", "http"),
        help="chdb (default with one worker): embedded in the worker (its memory counts in "
        "the worker's RSS); http (implied by --workers > 1): the test HTTP front over chDB "
        "in another process, so the worker's RSS is its own",
    )
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    if args.workers > 1 and args.clickhouse == "chdb":
        ap.error("--workers > 1 needs one ClickHouse shared by the workers: use --clickhouse http")
    args.clickhouse = args.clickhouse or ("http" if args.workers > 1 else "chdb")
    return args


def main() -> int:
    args = parse_args()
    n = args.workers
    tmp = Path(tempfile.mkdtemp(prefix="llmops-e2e-"))
    budgets = tmp / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    broker = KafkaBroker(data_dir=tmp / "kafka", heap="1g")
    broker.start()
    started: Procs = []
    front = None
    try:
        clickhouse_url = f"chdb://{tmp / 'ch'}"
        if args.clickhouse == "http":
            from chdb_front import FrontProcess  # noqa: PLC0415 - test-only helper

            front = FrontProcess(tmp / "ch", tmp / "front.log").start()
            clickhouse_url = front.url
        bootstrap = broker.bootstrap_servers
        broker.create_topics({TOPIC: args.partitions})
        total = produce_backlog(bootstrap, args.events, args.tenants)
        env = {
            **os.environ,
            "LLMOPS_CLICKHOUSE": clickhouse_url,
            "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LLMOPS_TOPIC": TOPIC,
            "LLMOPS_GROUP": GROUP,
            "LLMOPS_OUTPUT_TOPIC_PREFIX": PREFIX,
            "LLMOPS_PARTITIONS": str(args.partitions),
            "LLMOPS_BUDGETS": str(budgets),
            "LLMOPS_METRICS_PORT": "0",
            "OPENBLAS_NUM_THREADS": "1",
        }
        if n == 1:
            procs, one = run_workers(env, [tmp / "worker.log"], started, total)
            print_run("worker", one)
            last = one
        else:
            procs, one, last = scale_out(env, n, tmp, started, total)

        lat = asyncio.run(
            latency_phase(
                bootstrap,
                GROUP if n == 1 else f"{GROUP}-{n}",
                args.partitions,
                args.rate,
                args.seconds,
                PREFIX,
            )
        )
        achieved = lat.rate
        last.peaks_mib = [
            max(p, rss_mib(q.pid)) for p, q in zip(last.peaks_mib, procs, strict=True)
        ]
        p50, p99, top = percentiles(lat.alerts)
        print(
            f"alert latency at {achieved:,.0f} events/s produced: {len(lat.alerts)} alerts, "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {top:.0f} ms",
            flush=True,
        )
        s50, s99, smax = percentiles(lat.states)
        print(
            f"state latency (read_uncommitted): {len(lat.states)} status changes, "
            f"p50 {s50:.0f} ms, p99 {s99:.0f} ms, max {smax:.0f} ms",
            flush=True,
        )
        stop_workers(procs)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
        if front is not None:
            front.stop()
        broker.stop()
    summary: dict[str, Any] = {
        "bench": "e2e",
        "events_per_s": round(one.rate),
        "alert_p50_ms": round(p50, 1),
        "alert_p99_ms": round(p99, 1),
        "state_p50_ms": round(s50, 1),
        "state_p99_ms": round(s99, 1),
        "alert_rate_events_per_s": round(achieved),
        "rss_mib": round(max(one.peaks_mib + last.peaks_mib)),
        "rss_startup_mib": round(one.startup_mib),
        "events": last.events,
        "tenants": args.tenants,
        "clickhouse": args.clickhouse,
    }
    if n > 1:
        summary |= {
            "workers": n,
            "events_per_s_one": round(one.rate),
            "events_per_s_n": round(last.rate),
            "scale_out_ratio": round(last.rate / one.rate, 3),
            "cpu_count": os.cpu_count(),
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
