"""Baseline (c) of SPEC §6: a per-event faust-streaming agent doing the pricing and budget work.

What one would write first with faust: an agent iterating over the input topic one event at
a time (faust's ``json`` value serializer, which decodes with orjson), pricing each call as
of its ``ts`` with our :class:`PriceTable` (``resolve(model, provider, at=ts_ms)`` then
``cost_formula``), and keeping every tenant's budget spend in a faust ``Table`` (in-memory
store, changelog topic in Kafka, so the state survives a restart the faust way): sliding
windows in per-minute (``1h``/``24h``) or per-hour (``7d``/``30d``) buckets on the tenant's
own clock, calendar windows (``day``/``month``, UTC) per period. A level that is reached
fires one budget alert (the message of ``llm.alerts.budget``); it resolves when the spend
falls 5 % of the limit below it or its period ends.

The faust agent does only that; our worker does all of its work on the same events
(validation, dedup, pricing, budgets, drift, freshness, per-minute aggregates, ClickHouse,
budget state, transactions).

Both run against the same broker and the same events as ``bench/e2e.py`` (its broker start,
event generation and produce helpers): the events are produced once to a topic, then the
faust worker (a process of its own) consumes them on one group, then our worker on another;
each rate is the sustained one, measured on the group's committed offsets from the first
commit to the last, as ``bench/e2e.py`` does.

    python bench/faust_baseline.py [--events 200000] [--partitions 4] [--tenants 2000]

The last line printed is one JSON object:
{"bench": "faust_baseline", "events", "faust_events_per_s", "ours_events_per_s", "ratio", ...}
(ratio = ours / faust).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import GroupCoordinatorNotAvailableError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e import (  # noqa: E402
    BUDGETS,
    PREFIX,
    TOPIC,
    Consumed,
    Procs,
    committed_offsets,  # tests/workers.py's, as e2e reads offsets
    print_run,
    produce_backlog,
    rss_mib,
    run_workers,
    stop_workers,
)
from llmops_stream.stream.core.alerts import FIRING, RESOLVED, Alert, make_alert  # noqa: E402
from llmops_stream.stream.core.budgets import BudgetConfig, BudgetRule, parse_budgets  # noqa: E402
from llmops_stream.stream.core.pricing import PriceTable, cost_formula  # noqa: E402
from llmops_stream.stream.dev.kafka_broker import KafkaBroker  # noqa: E402

FAUST_GROUP = "bench-faust"
OURS_GROUP = "bench-faust-ours"
FAUST_ALERTS = "bench.faust.alerts.budget"
HYSTERESIS = 0.05  # of the limit, as our BudgetTracker's default
# window -> (width, bucket) in ms, for the sliding windows
SLIDING = {
    "1h": (3_600_000, 60_000),
    "24h": (86_400_000, 60_000),
    "7d": (7 * 86_400_000, 3_600_000),
    "30d": (30 * 86_400_000, 3_600_000),
}


# -- the faust app -------------------------------------------------------------------------------


def ts_ms(value: Any) -> int:
    """Event time in epoch ms: an integer, or an RFC 3339 string."""
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def period_of(window: str, at_ms: int) -> tuple[str, int, int]:
    """Calendar period of ``at_ms``: (name, start ms, end ms), UTC."""
    day = datetime.fromtimestamp(at_ms / 1000, tz=UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if window == "day":
        start, name = day, day.strftime("%Y-%m-%d")
        end_ms = int(start.timestamp() * 1000) + 86_400_000
    else:
        start, name = day.replace(day=1), day.strftime("%Y-%m")
        nxt = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        end_ms = int(nxt.timestamp() * 1000)
    return name, int(start.timestamp() * 1000), end_ms


def budget_alert(
    tenant: str,
    app: str,
    rule: BudgetRule,
    level: float,
    state: dict[str, Any],
    episode: int,
    status: str,
    event_id: str,
) -> Alert:
    sliding = rule.window in SLIDING
    clock = state["clock"]
    start = clock - SLIDING[rule.window][0] if sliding else state["start"]
    return make_alert(
        type="budget",
        severity="critical" if level == rule.hard else "warning",
        tenant_id=tenant,
        app=app if status != RESOLVED else "",
        metric="spend_usd",
        value=state["spend"],
        threshold=level * rule.limit_usd,
        window_start_ms=start,
        window_end_ms=clock if sliding else state["end"],
        id_parts=(tenant, rule.budget_id, level, 0 if sliding else state["start"], episode),
        details={"budget_id": rule.budget_id, "level": level, "event_id": event_id},
        status=status,
        emitted_at_ms=clock,
    )


def charge(
    rule: BudgetRule, state: dict[str, Any], at_ms: int, cost: float
) -> tuple[bool, dict[str, Any] | None]:
    """Add one call's cost to one budget's state; returns (counted, the state of the period
    that ended, if the call opened a new one). A call older than the window (or than the
    current period) is not counted."""
    if rule.window in SLIDING:
        width, step = SLIDING[rule.window]
        clock = state["clock"] = max(state.get("clock", at_ms), at_ms)
        oldest = clock // step - width // step  # buckets at or before this one have left
        if at_ms // step <= oldest:
            return False, None
        buckets = state.setdefault("buckets", {})
        key = str(at_ms // step)
        buckets[key] = buckets.get(key, 0.0) + cost
        for old in [k for k in buckets if int(k) <= oldest]:
            del buckets[old]
        state["spend"] = sum(buckets.values())
        return True, None
    name, start, end = period_of(rule.window, at_ms)
    current = state.get("period")
    if current is not None and name < current:
        return False, None
    ended = None
    if name != current:
        if current is not None:
            ended = {**state, "clock": at_ms, "fired": dict(state["fired"])}
        state.update(period=name, start=start, end=end, spend=0.0, clock=at_ms, fired={})
    state["clock"] = max(state["clock"], at_ms)
    state["spend"] += cost
    return True, ended


def build_app(cfg: dict[str, Any]) -> faust.App:
    """The faust app: one agent on ``cfg["topic"]``, one table, one alert topic."""
    app = faust.App(
        cfg["group"],
        broker=f"kafka://{cfg['bootstrap']}",
        store="memory://",
        datadir=cfg["datadir"],
        topic_partitions=cfg["partitions"],
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    prices = PriceTable()
    budgets: BudgetConfig = parse_budgets(cfg["budgets"])
    calls = app.topic(cfg["topic"], key_serializer="raw", value_serializer="json")
    alerts = app.topic(cfg["alerts"], key_serializer="raw", value_serializer="json")
    # tenant -> {budget_id: state}; one changelog record per event
    spend = app.Table("budget-spend", default=dict, partitions=cfg["partitions"])

    @app.agent(calls)
    async def price_and_budget(stream: faust.StreamT) -> None:
        async for event in stream:
            try:
                usage = event["usage"]
                tenant, model = event["tenant_id"], event["model"]
                inp, out = int(usage["input_tokens"]), int(usage["output_tokens"])
                read = int(usage.get("cache_read_tokens") or 0)
                write = int(usage.get("cache_write_tokens") or 0)
                at = ts_ms(event["ts"])
            except (KeyError, TypeError, ValueError):
                continue
            price = prices.resolve(model, event.get("provider") or "", at=at)
            cost = cost_formula(
                price,
                inp,
                out,
                read,
                write,
                cache_hit=event.get("status") == "cache_hit",
                cache_write_1h_tokens=int(usage.get("cache_write_1h_tokens") or 0),
                reasoning_tokens=int(usage.get("reasoning_tokens") or 0),
            )
            eid, app_name = event.get("event_id", ""), event.get("app") or ""
            states = spend[tenant]
            out_alerts: list[Alert] = []
            for rule in budgets.rules_for(tenant):
                state = states.setdefault(rule.budget_id, {"spend": 0.0, "fired": {}})
                counted, ended = charge(rule, state, at, cost)
                if ended is not None:  # a calendar period is over: its alerts resolve
                    out_alerts.extend(
                        budget_alert(tenant, "", rule, float(level), ended, episode, RESOLVED, eid)
                        for level, episode in ended["fired"].items()
                    )
                if not counted:
                    continue
                fired = state["fired"]
                for level in rule.levels:
                    threshold = level * rule.limit_usd
                    if str(level) not in fired and state["spend"] >= threshold:
                        fired[str(level)] = episode = state["clock"]
                        status = FIRING
                    elif str(level) in fired and state["spend"] < threshold - (
                        HYSTERESIS * rule.limit_usd
                    ):
                        episode, status = fired.pop(str(level)), RESOLVED
                    else:
                        continue
                    out_alerts.append(
                        budget_alert(tenant, app_name, rule, level, state, episode, status, eid)
                    )
            spend[tenant] = states
            for alert in out_alerts:
                await alerts.send(key=tenant.encode(), value=msgspec.to_builtins(alert))

    return app


def faust_worker_main(cfg_json: str) -> None:
    """Body of the faust worker process (``--faust-worker``)."""
    app = build_app(json.loads(cfg_json))
    # INFO, as `faust -A app worker -l info` of faust's docs: at WARNING and above the worker
    # sets the root logger to DEBUG for its start-up spinner and leaves it there, so every
    # debug call of faust and aiokafka would build a log record
    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


# -- the measurement -----------------------------------------------------------------------------


def consume_with_faust(
    cfg: dict[str, Any], log: Path, started: Procs, total: int
) -> tuple[subprocess.Popen[bytes], Consumed]:
    """Start the faust worker and sample its group's committed offsets (and its RSS) until
    all ``total`` events are committed, as ``bench.e2e.run_workers`` does for ours."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--faust-worker", json.dumps(cfg)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    started.append(proc)
    peak = rss_mib(proc.pid)
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        try:
            offsets = asyncio.run(committed_offsets(cfg["bootstrap"], cfg["group"], TOPIC))
        except GroupCoordinatorNotAvailableError:  # before the first group's first join
            offsets = {}
        done = sum(offsets.values())
        samples.append((time.monotonic(), done))
        peak = max(peak, rss_mib(proc.pid))
        if done >= total:
            break
        if proc.poll() is not None:
            raise RuntimeError("faust worker died:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    first = next(i for i, (_, n) in enumerate(samples) if n > 0)
    (t0, n0), (t1, n1) = samples[max(0, first - 1)], samples[-1]
    return proc, Consumed(n1, (n1 - n0) / (t1 - t0), float("nan"), [peak])


async def count_firing(bootstrap: str, topic: str, partitions: int) -> int:
    """Firing alerts on ``topic`` (read_committed), from the start to the end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        firing = 0
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                firing += sum(orjson.loads(r.value)["status"] == FIRING for r in recs)
        return firing
    finally:
        await consumer.stop()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--tenants", type=int, default=2000, help="tenants in the traffic")
    ap.add_argument("--faust-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    if args.faust_worker:
        faust_worker_main(args.faust_worker)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="llmops-faust-"))
    budgets = tmp / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    broker = KafkaBroker(data_dir=tmp / "kafka", heap="1g")
    broker.start()
    started: Procs = []
    try:
        bootstrap = broker.bootstrap_servers
        broker.create_topics({TOPIC: args.partitions, FAUST_ALERTS: args.partitions})
        total = produce_backlog(bootstrap, args.events, args.tenants)
        cfg = {
            "bootstrap": bootstrap,
            "group": FAUST_GROUP,
            "topic": TOPIC,
            "alerts": FAUST_ALERTS,
            "partitions": args.partitions,
            "budgets": BUDGETS,
            "datadir": str(tmp / "faust-data"),
        }
        proc, faust_run = consume_with_faust(cfg, tmp / "faust.log", started, total)
        print(
            f"faust agent: {faust_run.events:,} events committed; sustained "
            f"{faust_run.rate:,.0f} events/s; peak RSS {faust_run.peaks_mib[0]:.0f} MiB",
            flush=True,
        )
        stop_workers([proc])

        env = {
            **os.environ,
            "LLMOPS_CLICKHOUSE": f"chdb://{tmp / 'ch'}",
            "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LLMOPS_TOPIC": TOPIC,
            "LLMOPS_GROUP": OURS_GROUP,
            "LLMOPS_OUTPUT_TOPIC_PREFIX": PREFIX,
            "LLMOPS_PARTITIONS": str(args.partitions),
            "LLMOPS_BUDGETS": str(budgets),
            "LLMOPS_METRICS_PORT": "0",
            "OPENBLAS_NUM_THREADS": "1",
        }
        procs, ours = run_workers(env, [tmp / "worker.log"], started, total)
        print_run("our worker", ours)
        stop_workers(procs)

        faust_alerts = asyncio.run(count_firing(bootstrap, FAUST_ALERTS, args.partitions))
        ours_alerts = asyncio.run(
            count_firing(bootstrap, PREFIX + "llm.alerts.budget", args.partitions)
        )
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
        broker.stop()
    ratio = ours.rate / faust_run.rate
    print(
        f"budget alerts fired: faust {faust_alerts:,}, ours {ours_alerts:,}\n"
        f"ours / faust = {ratio:.1f}x on {os.cpu_count()} cores",
        flush=True,
    )
    print(
        json.dumps(
            {
                "bench": "faust_baseline",
                "events": total,
                "faust_events_per_s": round(faust_run.rate),
                "ours_events_per_s": round(ours.rate),
                "ratio": round(ratio, 2),
                "faust_rss_mib": round(faust_run.peaks_mib[0]),
                "ours_rss_mib": round(ours.peaks_mib[0]),
                "faust_alerts_fired": faust_alerts,
                "ours_alerts_fired": ours_alerts,
                "partitions": args.partitions,
                "tenants": args.tenants,
                "cpu_count": os.cpu_count(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
