"""Budget state latency of ``llmops-stream agents``: a record on ``llm.budget.state`` → the
answer of ``GET /budgets/{tenant}`` shows it (real Apache Kafka, the agents as a process).

1. Ingest: ``--tenants`` state records (two budgets each, as the worker publishes them) are
   produced, then timed until the agents applied them all (records/s).
2. Flips: ``--flips`` times, a state record flips one of ``--hot`` tenants between ``ok``
   and ``exceeded``; the latency runs from just before the record is sent to the first
   ``GET`` whose ``allow`` shows the flip (the client polls over a kept-alive connection,
   ~0.3 ms a request). With ``--load R``, other tenants' states arrive at R records/s
   meanwhile (above what the agents apply per second, the flips queue behind them and the
   run stops at a flip not seen within a minute). Every answer's ``Server-Timing`` gives
   the server time (table lookup + JSON).
3. Restart: SIGTERM, a new process on the same data directory, the seconds until
   ``/healthz`` is 200; then ``--sweep`` GETs of random tenants (each answer checked):
   the server time of a first read (from RocksDB) and of a second one (cached).

    python bench/agents_state.py [--tenants 20000] [--flips 300] [--load 0]
    python bench/agents_state.py --tenants 100000 --bootstrap-servers 127.0.0.1:9092

The last line printed is one JSON object: {"bench": "agents_state", "state_p50_ms",
"state_p99_ms", "server_p50_ms", "server_p99_ms", "restart_ready_s", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiokafka import AIOKafkaProducer

from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.kafka.records import Record, budget_state_records

AS_OF_MS = 1_780_000_000_000
PARTITIONS = 6
FLIP_TIMEOUT_S = 60.0


def states(tenants: list[str], spend: float, status: str, as_of_ms: int) -> list[Record]:
    """One record per tenant with an hourly and a daily budget, as the worker makes them."""
    n = len(tenants)
    rows = 2 * n
    columns = {
        "tenant_id": np.repeat(np.array(tenants, dtype=object), 2),
        "budget_id": np.array(["h", "d"] * n, dtype=object),
        "window": np.array(["1h", "day"] * n, dtype=object),
        "limit_usd": np.array([3.0, 20.0] * n),
        "spend_usd": np.full(rows, spend),
        "remaining_usd": np.array([3.0, 20.0] * n) - spend,
        "status": np.array([status, "ok"] * n, dtype=object),
        "as_of_ms": np.full(rows, as_of_ms, dtype=np.int64),
        "period_start_ms": np.full(rows, as_of_ms - 3_600_000, dtype=np.int64),
        "current": np.ones(rows, dtype=bool),
    }
    return budget_state_records(columns)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class AgentsProcess:
    def __init__(self, bootstrap: str, tmp: Path, prefix: str) -> None:
        self.port = free_port()
        self.log = tmp / "agents.log"
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith("LLMOPS_")}
        self.env = base | {
            "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LLMOPS_OUTPUT_TOPIC_PREFIX": prefix,
            "LLMOPS_AGENTS_APP_ID": prefix.rstrip(".") + "-agents",
            "LLMOPS_AGENTS_DATA_DIR": str(tmp / "agents-data"),
            "LLMOPS_AGENTS_PORT": str(self.port),
            "LLMOPS_PARTITIONS": str(PARTITIONS),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> float:
        """Start and wait for /healthz 200; the seconds that took."""
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmops_stream.stream.cli", "agents"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while time.monotonic() - started < 300:
            if self.proc.poll() is not None:
                raise SystemExit("the agents exited:\n" + self.log.read_text()[-3000:])
            if self.health(quiet=True) is not None:
                return time.monotonic() - started
            time.sleep(0.02)
        raise SystemExit("the agents never became ready")

    def health(self, quiet: bool = False) -> dict[str, Any] | None:
        import urllib.error  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=5) as resp:  # noqa: S310
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError):
            if quiet:
                return None
            raise

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)


async def produce(bootstrap: str, records: list[Record], prefix: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        for i in range(0, len(records), 5000):
            futures = [
                await producer.send(prefix + r.topic, r.value, key=r.key)
                for r in records[i : i + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[dict[str, Any], float]:
    async with session.get(url) as resp:
        body = await resp.json()
        timing = resp.headers["Server-Timing"]
        assert resp.status == 200, body
    return body, float(timing.split("dur=")[1])


async def background(bootstrap: str, prefix: str, rate: float, stop: asyncio.Event) -> int:
    """Other tenants' states at ``rate`` records/s until ``stop``; the number sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent, started = 0, time.monotonic()
    try:
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate) - sent
            if due > 0:
                batch = states([f"bg-{(sent + i) % 5000}" for i in range(due)], 1.0, "ok", AS_OF_MS)
                for r in batch:
                    await producer.send(prefix + r.topic, r.value, key=r.key)
                sent += due
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def flips(
    agents: AgentsProcess, bootstrap: str, prefix: str, n: int, hot: int, load: float
) -> dict[str, Any]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    stop = asyncio.Event()
    loader = asyncio.create_task(background(bootstrap, prefix, load, stop)) if load else None
    latencies: list[float] = []
    server: list[float] = []
    polls = 0
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(n):
                tenant = f"hot-{i % hot}"
                capped = (i // hot) % 2 == 0  # each hot tenant alternates capped / not
                (record,) = states(
                    [tenant], 3.5 if capped else 1.0, "exceeded" if capped else "ok", AS_OF_MS + i
                )
                t0 = time.perf_counter()
                await producer.send_and_wait(prefix + record.topic, record.value, key=record.key)
                while True:
                    body, dur = await get(session, agents.url(f"/budgets/{tenant}"))
                    polls += 1
                    server.append(dur)
                    if body["allow"] is not capped:
                        break
                    if time.perf_counter() - t0 > FLIP_TIMEOUT_S:
                        raise SystemExit(
                            f"flip {i} not seen after {FLIP_TIMEOUT_S} s: the agents fall "
                            "behind (lower --load)"
                        )
                latencies.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        background_sent = await loader if loader else 0
        await producer.stop()
    return {
        "latencies": latencies,
        "server": server,
        "polls": polls,
        "background_sent": background_sent,
    }


async def sweep(agents: AgentsProcess, tenants: int, n: int) -> tuple[list[float], list[float]]:
    """Server times of first reads (RocksDB) and second reads (cached) of random tenants."""
    picked = random.Random(5).sample(range(tenants), min(n, tenants))
    first: list[float] = []
    second: list[float] = []
    async with aiohttp.ClientSession() as session:
        for out in (first, second):
            for i in picked:
                body, dur = await get(session, agents.url(f"/budgets/t{i:06d}"))
                assert body["budgets"][0]["spend_usd"] == 1.0, body
                out.append(dur)
    return first, second


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=20_000, help="tenants with a state")
    ap.add_argument("--flips", type=int, default=300, help="state flips timed")
    ap.add_argument("--hot", type=int, default=20, help="tenants the flips cycle through")
    ap.add_argument("--load", type=float, default=0.0, help="other states/s during the flips")
    ap.add_argument("--sweep", type=int, default=2000, help="random GETs after the restart")
    ap.add_argument("--bootstrap-servers", help="an existing broker (default: start one)")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmops-agents-bench-"))
    broker = None
    if args.bootstrap_servers:
        bootstrap = args.bootstrap_servers
    else:
        broker = KafkaBroker(data_dir=tmp / "kafka")
        broker.start()
        bootstrap = broker.bootstrap_servers
    prefix = f"bench{int(time.time())}."
    agents = AgentsProcess(bootstrap, tmp, prefix)
    try:
        first_start = agents.start()
        tenants = [f"t{i:06d}" for i in range(args.tenants)]
        records = states(tenants, 1.0, "ok", AS_OF_MS)
        t0 = time.monotonic()
        asyncio.run(produce(bootstrap, records, prefix))
        while (agents.health() or {})["budgets"]["applied"] < len(records):
            time.sleep(0.2)
        ingest_s = time.monotonic() - t0
        rss = agents.rss_mib()
        result = asyncio.run(flips(agents, bootstrap, prefix, args.flips, args.hot, args.load))
        agents.stop()
        restart_s = agents.start()
        cold, warm = asyncio.run(sweep(agents, args.tenants, args.sweep))
        agents.stop()
    finally:
        agents.stop()
        if broker is not None:
            broker.stop()
    lat, server = result["latencies"], result["server"]
    summary = {
        "bench": "agents_state",
        "flips": len(lat),
        "load_per_s": args.load,
        "state_p50_ms": round(pct(lat, 50), 2),
        "state_p99_ms": round(pct(lat, 99), 2),
        "state_max_ms": round(max(lat), 2),
        "server_p50_ms": round(pct(server, 50), 4),
        "server_p99_ms": round(pct(server, 99), 4),
        "server_first_read_p50_ms": round(pct(cold, 50), 4),
        "server_first_read_p99_ms": round(pct(cold, 99), 4),
        "server_cached_p50_ms": round(pct(warm, 50), 4),
        "server_cached_p99_ms": round(pct(warm, 99), 4),
        "tenants": args.tenants,
        "ingest_per_s": round(args.tenants / ingest_s),
        "first_start_ready_s": round(first_start, 2),
        "restart_ready_s": round(restart_s, 2),
        "rss_mib": round(rss, 1),
        "polls": result["polls"],
        "background_sent": result["background_sent"],
    }
    print(
        f"state latency over {len(lat)} flips: p50 {summary['state_p50_ms']} ms, p99 "
        f"{summary['state_p99_ms']} ms; server time p50 {summary['server_p50_ms']} ms, p99 "
        f"{summary['server_p99_ms']} ms; restart ready in {summary['restart_ready_s']} s with "
        f"{args.tenants} tenants"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
