"""The ``llmops-stream`` command line: demo, replay, report, run, loadgen, agents.

User errors (bad files, flags, unreachable ClickHouse) print one actionable line on stderr
and exit 2; no tracebacks. Every flag has an env twin (``LLMOPS_…``, see settings.py).

Each command imports what it needs when it runs: ``--help`` and a mistyped flag load no
settings, engine or database module (numba, pandas, pyarrow, chDB take seconds to import).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops_stream.stream.core.errors import ConfigError

from .agents_cmd import add_agents_parser, cmd_agents

if TYPE_CHECKING:
    from rich.console import Console

    from llmops_stream.stream.runtime.settings import Settings

EXIT_USAGE = 2

_DESCRIPTION = """\
Streaming processor for LLM call telemetry: prices every call per tenant, keeps rolling
budgets with hard caps, scores inputs against the eval set (drift), flags stale RAG chunks,
and writes per-minute aggregates and alerts to ClickHouse.

Start with `llmops-stream demo`, then `llmops-stream report`.
"""


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prices", help="price override JSON file (env LLMOPS_PRICES)")
    p.add_argument("--budgets", help="budget JSON file (env LLMOPS_BUDGETS)")
    p.add_argument("--eval-set", dest="eval_set", help="eval-set JSONL (env LLMOPS_EVAL_SET)")
    _add_clickhouse_flags(p)
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        help="events per micro-batch (env LLMOPS_BATCH_SIZE, default 20000)",
    )


def _add_clickhouse_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clickhouse",
        help="chdb://PATH (embedded, default ~/.local/share/llmops-stream/chdb) or "
        "http(s)://HOST:PORT (env LLMOPS_CLICKHOUSE)",
    )
    p.add_argument(
        "--database",
        dest="clickhouse_database",
        help="ClickHouse database (env LLMOPS_CLICKHOUSE_DATABASE, default llmops)",
    )


def _add_tenant_attribute_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tenant-attribute",
        metavar="NAME",
        help="OTel spans: the span (else resource) attribute holding the tenant; none: rejected "
        "missing_field (env LLMOPS_TENANT_ATTRIBUTE, default tenant.id)",
    )


def _add_kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap-servers",
        dest="kafka_bootstrap_servers",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers (env LLMOPS_KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="llmops-stream",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="synthetic traffic through the whole engine into ClickHouse, with a summary",
        description="Generate realistic synthetic traffic (tenants, models, caching, "
        "embeddings that drift, stale retrieval) with an eval set and budgets, run it "
        "through the engine into ClickHouse and print a summary.",
    )
    demo.add_argument("--events", type=int, default=200_000, help="events to generate")
    demo.add_argument("--tenants", type=int, default=40, help="number of tenants")
    demo.add_argument("--seed", type=int, default=7, help="random seed")
    _add_clickhouse_flags(demo)

    rep = sub.add_parser(
        "replay",
        help="JSONL events (files or - for stdin) through the engine, no Kafka",
        description="Replay call events, one JSON object per line (or OTel GenAI spans with "
        "--format otlp-json), through the engine into ClickHouse. Replaying the same file "
        "twice stores nothing twice.",
    )
    rep.add_argument("files", nargs="+", metavar="FILE", help="JSONL file(s), or - for stdin")
    rep.add_argument(
        "--format",
        default="jsonl",
        metavar="jsonl|otlp-json",
        help="jsonl (default): a call event per line; otlp-json: an OTLP trace export per line "
        "(the OTel Collector's file exporter), whose GenAI inference spans become call events",
    )
    _add_tenant_attribute_flag(rep)
    _add_engine_flags(rep)

    run = sub.add_parser(
        "run",
        help="the Kafka worker: consume llm.calls, write ClickHouse, publish alerts",
        description="Consume call events from Kafka as a consumer-group member, process them "
        "and write ClickHouse and the alert/state/DLQ topics, exactly once. Scale out by "
        "starting more workers with the same settings and --group (replicas need no distinct "
        "id: Kafka transactions are fenced per input partition). Health on "
        "http://127.0.0.1:9464/metrics (LLMOPS_METRICS_PORT, 0 = off).",
    )
    _add_engine_flags(run)
    _add_kafka_flags(run)
    run.add_argument("--group", help="consumer group (env LLMOPS_GROUP, default llmops-stream)")
    run.add_argument("--topic", help="input topic (env LLMOPS_TOPIC, default llm.calls)")
    run.add_argument(
        "--worker-id",
        dest="worker_id",
        help="a name for this worker in its logs; replicas may share it (env LLMOPS_WORKER_ID)",
    )
    run.add_argument(
        "--otlp-topic",
        metavar="TOPIC",
        help="also consume OTel GenAI spans from TOPIC (the OTel Collector's Kafka exporter; "
        "its default topic is otlp_spans) (env LLMOPS_OTLP_TOPIC, default empty = off)",
    )
    run.add_argument(
        "--otlp-encoding",
        metavar="otlp_proto|otlp_json",
        help="the exporter's encoding of --otlp-topic (env LLMOPS_OTLP_ENCODING, default "
        "otlp_proto)",
    )
    _add_tenant_attribute_flag(run)

    load = sub.add_parser(
        "loadgen",
        help="synthetic call events to Kafka at a target rate",
        description="Produce realistic synthetic call events (as in `demo`) to Kafka.",
    )
    _add_kafka_flags(load)
    load.add_argument("--topic", help="topic (env LLMOPS_TOPIC, default llm.calls)")
    load.add_argument("--rate", type=float, default=1000.0, help="events per second")
    load.add_argument("--events", type=int, default=None, help="stop after N events")
    load.add_argument("--tenants", type=int, default=50, help="number of tenants")
    load.add_argument("--embedding-share", dest="embedding_share", type=float, default=0.5)
    load.add_argument("--seed", type=int, default=0)

    report = sub.add_parser(
        "report",
        help="per-tenant totals and alerts read back from ClickHouse",
        description="Per-tenant totals (calls, cost, tokens, drift, freshness, rejected) "
        "and alerts from ClickHouse.",
    )
    output = report.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the JSON report")
    output.add_argument(
        "--html",
        metavar="FILE",
        help="write a self-contained HTML page of charts (cost, budgets, drift, freshness, "
        "alerts) and the totals to FILE",
    )
    _add_clickhouse_flags(report)
    add_agents_parser(sub)
    return parser


# setting → the flag that sets it (the settings a command has no flag for are env-only)
_FLAGS = {
    "clickhouse": "--clickhouse",
    "clickhouse_database": "--database",
    "prices": "--prices",
    "budgets": "--budgets",
    "eval_set": "--eval-set",
    "batch_size": "--batch-size",
    "kafka_bootstrap_servers": "--bootstrap-servers",
    "group": "--group",
    "topic": "--topic",
    "worker_id": "--worker-id",
    "otlp_topic": "--otlp-topic",
    "otlp_encoding": "--otlp-encoding",
    "tenant_attribute": "--tenant-attribute",
}


def _settings(args: argparse.Namespace, *, log_level: str = "WARNING") -> Settings:
    """The settings of env and flags (ConfigError listing every problem), with their log
    level applied; ``log_level`` is the command's level when LLMOPS_LOG_LEVEL is unset."""
    from llmops_stream.stream.runtime.logs import set_log_level  # noqa: PLC0415
    from llmops_stream.stream.runtime.settings import load_settings  # noqa: PLC0415

    settings = load_settings({k: getattr(args, k, None) for k in _FLAGS}, _FLAGS)
    set_log_level(settings.log_level if "log_level" in settings.model_fields_set else log_level)
    return settings


def _connect(settings: Settings) -> Any:
    from llmops_stream.stream.clickhouse.sink import connect  # noqa: PLC0415 - heavy, after arg parsing

    return connect(
        settings.clickhouse,
        settings.clickhouse_database,
        user=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
    )


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    """``replay FILE…|-``."""
    from rich.console import Console  # noqa: PLC0415

    from llmops_stream.stream.clickhouse.sink import ClickHouseSink  # noqa: PLC0415
    from llmops_stream.stream.files.flushing import BackgroundFlusher  # noqa: PLC0415
    from llmops_stream.stream.files.replay import FORMATS, build_engine, replay  # noqa: PLC0415

    from .summary import prepared_kernels, print_run_summary, progress_bar  # noqa: PLC0415

    if args.format not in FORMATS:
        raise ConfigError(f"bad --format {args.format!r}: use one of {', '.join(FORMATS)}")
    for f in args.files:
        if f != "-" and not Path(f).is_file():
            raise ConfigError(f"no such file: {f}")
    settings = _settings(args)
    engine = build_engine(settings)
    prepared_kernels(Console(stderr=True))
    client = _connect(settings)
    db = settings.clickhouse_database
    total = sum(Path(f).stat().st_size for f in args.files if f != "-") or None
    with (
        # one sink buffers the next batches while the other is written, on its own thread
        BackgroundFlusher(ClickHouseSink(client, db), ClickHouseSink(client, db)) as sink,
        progress_bar(Console(stderr=True)) as progress,
    ):
        task = progress.add_task("replay", total=total, rate="")
        started = time.perf_counter()
        events = 0

        def on_progress(consumed: int, n: int) -> None:
            nonlocal events
            events += n
            rate = events / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=consumed, rate=f"{events:,} events {rate:,.0f}/s")

        result = replay(
            args.files,
            engine,
            sink,
            batch_size=settings.batch_size,
            flush_rows=settings.flush_rows,
            on_progress=on_progress,
            fmt=args.format,
            tenant_attribute=settings.tenant_attribute,
        )
    print_run_summary(
        console,
        result.stats,
        result.alerts,
        result.seconds,
        result.alert_statuses.get("resolved", 0),
    )
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """``report [--json|--html FILE]``."""
    import orjson  # noqa: PLC0415
    from rich.markup import escape  # noqa: PLC0415

    from llmops_stream.stream.clickhouse.report import budget_states, build_report  # noqa: PLC0415

    from .summary import print_report  # noqa: PLC0415

    settings = _settings(args)
    if args.html is not None:
        # matplotlib is imported only here; the target is checked before any query
        from llmops_stream.stream.clickhouse import html_report  # noqa: PLC0415

        target = html_report.check_target(args.html)
    client = _connect(settings)
    rep = build_report(client, settings.clickhouse_database)
    if args.json:
        sys.stdout.write(orjson.dumps(rep, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    states = budget_states(client, settings.clickhouse_database)
    if args.html is not None:
        size = html_report.write_report(target, client, settings, rep, states)
        console.print(
            f"Wrote the HTML report ({size / 1024:,.0f} KB) to {escape(str(target))}",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    print_report(console, rep, states)
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """``run``: the Kafka worker, until SIGTERM/SIGINT."""
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from llmops_stream.stream.files.replay import build_engine_config  # noqa: PLC0415
    from llmops_stream.stream.kafka.otlp_relay import (  # noqa: PLC0415
        relay_from_settings,
        run_with_relay,
    )
    from llmops_stream.stream.kafka.worker import Worker  # noqa: PLC0415
    from llmops_stream.stream.runtime.metrics import WorkerMetrics  # noqa: PLC0415

    settings = _settings(args, log_level="INFO")  # the worker says what it does
    from llmops_stream.stream.core.evalset import EvalSetWatcher  # noqa: PLC0415

    # files validated before joining the group; the eval set is watched for hot reload
    watcher = (
        EvalSetWatcher(settings.eval_set, threshold=settings.eval_threshold)
        if settings.eval_set
        else None
    )
    config = build_engine_config(settings, watcher.current if watcher else None)
    client = _connect(settings)
    metrics = WorkerMetrics()
    try:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port}: {exc} "
            "(set LLMOPS_METRICS_PORT, 0 = off)"
        ) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # partitions share one config: prices, budgets and eval sets are read-only to them
        worker = Worker(settings, lambda: config, client, metrics=metrics, eval_watcher=watcher)
        # with --otlp-topic, the relay re-keys OTel spans into the calls topic beside it
        await run_with_relay(worker.run, relay_from_settings(settings, metrics), stop)

    from aiokafka.errors import KafkaConnectionError  # noqa: PLC0415

    from llmops_stream.stream.kafka.transactions import FatalKafkaError  # noqa: PLC0415

    try:
        asyncio.run(main())
    except FatalKafkaError as exc:
        raise ConfigError(str(exc)) from None
    except KafkaConnectionError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from None
    return 0


def cmd_loadgen(args: argparse.Namespace, console: Console) -> int:
    """``loadgen``: synthetic events to Kafka at ``--rate``."""
    import asyncio  # noqa: PLC0415

    from aiokafka.errors import KafkaConnectionError  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415

    from llmops_stream.stream.dev.loadgen import run_loadgen  # noqa: PLC0415
    from llmops_stream.stream.kafka.admin import kafka_kwargs  # noqa: PLC0415

    from .summary import progress_bar  # noqa: PLC0415

    settings = _settings(args)
    if args.rate <= 0:
        raise ConfigError("--rate must be positive")
    kw = kafka_kwargs(settings)
    with progress_bar(Console(stderr=True)) as progress:
        task = progress.add_task("loadgen", total=args.events, rate="")

        def on_progress(sent: int, rate: float) -> None:
            progress.update(task, completed=sent, rate=f"{rate:,.0f} events/s")

        try:
            stats = asyncio.run(
                run_loadgen(
                    kw.pop("bootstrap_servers"),
                    topic=settings.topic,
                    rate=args.rate,
                    n_events=args.events,
                    seed=args.seed,
                    n_tenants=args.tenants,
                    embedding_share=args.embedding_share,
                    on_progress=on_progress,
                    **kw,
                )
            )
        except KafkaConnectionError as exc:
            raise ConfigError(
                f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
            ) from None
    console.print(
        f"Sent {stats.sent:,} events in {stats.seconds:.1f} s "
        f"({stats.achieved_rate:,.0f} events/s) to {settings.topic}."
    )
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """``demo``: synthetic traffic → engine → ClickHouse → summary."""
    from rich.console import Console  # noqa: PLC0415

    from .demo import run_demo  # noqa: PLC0415
    from .summary import prepared_kernels, print_report, print_run_summary, progress_bar  # noqa: PLC0415

    if args.events <= 0 or args.tenants <= 0:
        raise ConfigError("--events and --tenants must be positive")
    settings = _settings(args)
    prepared_kernels(Console(stderr=True))
    with tempfile.TemporaryDirectory(prefix="llmops-demo-") as tmp:
        progress = progress_bar(Console(stderr=True))
        result = run_demo(
            settings,
            Path(tmp),
            n_events=args.events,
            n_tenants=args.tenants,
            seed=args.seed,
            progress=progress,
            connect=_connect,
        )
    print_run_summary(
        console,
        result.stats,
        result.alerts,
        result.seconds,
        result.alert_statuses.get("resolved", 0),
        generate_seconds=result.generate_seconds,
    )
    from llmops_stream.stream.clickhouse.report import budget_states, build_report  # noqa: PLC0415

    client = _connect(settings)
    print_report(
        console,
        build_report(client, settings.clickhouse_database),
        budget_states(client, settings.clickhouse_database),
    )
    console.print(
        f"\nData is in ClickHouse at [bold]{settings.clickhouse}[/] (database "
        f"[bold]{settings.clickhouse_database}[/]). Read it back with "
        "[bold]llmops-stream report[/] (or [bold]report --json[/])."
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llmops-stream``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from rich.console import Console  # noqa: PLC0415
    from rich.markup import escape  # noqa: PLC0415

    from llmops_stream.stream.runtime.logs import setup_logging  # noqa: PLC0415

    setup_logging("WARNING")
    console = Console()
    handlers = {
        "demo": cmd_demo,
        "replay": cmd_replay,
        "report": cmd_report,
        "run": cmd_run,
        "loadgen": cmd_loadgen,
        "agents": cmd_agents,
    }
    try:
        return handlers[args.command](args, console)
    except ConfigError as exc:
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
