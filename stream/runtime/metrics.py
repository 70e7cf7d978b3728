"""The worker's own health: Prometheus ``/metrics`` and a periodic structured log line.

Exposed (own registry, served on ``metrics_host:metrics_port``, loopback by default):
``llmops_events_total{result}``, ``llmops_rejected_total{reason}``,
``llmops_alerts_total{type}``, ``llmops_consumer_lag{partition}``,
``llmops_events_per_second``, ``llmops_flush_seconds`` (histogram),
``llmops_clickhouse_errors_total``, ``llmops_kafka_errors_total``,
``llmops_partitions_assigned``, ``llmops_segments_lost_total`` (segments another worker had
claimed: see the worker's module docstring).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PCounter

log = logging.getLogger("llmops_stream.worker")


class WorkerMetrics:
    """Counters and gauges of one worker process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = PCounter("llmops_events", "Events consumed", ["result"], registry=r)
        self.rejected = PCounter(
            "llmops_rejected", "Events sent to the DLQ", ["reason"], registry=r
        )
        self.alerts = PCounter("llmops_alerts", "Alerts published", ["type"], registry=r)
        self.lag = Gauge(
            "llmops_consumer_lag",
            "Messages behind the end of the partition",
            ["partition"],
            registry=r,
        )
        self.rate = Gauge(
            "llmops_events_per_second", "Events/s over the last log period", registry=r
        )
        self.flush = Histogram(
            "llmops_flush_seconds",
            "ClickHouse + Kafka commit of a flush",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.ch_errors = PCounter(
            "llmops_clickhouse_errors", "Failed ClickHouse writes", registry=r
        )
        self.kafka_errors = PCounter("llmops_kafka_errors", "Failed Kafka transactions", registry=r)
        self.segments_lost = PCounter(
            "llmops_segments_lost",
            "Segments dropped because another worker claimed their "
            "start (the partition was taken up again)",
            registry=r,
        )
        self.assigned = Gauge("llmops_partitions_assigned", "Partitions owned", registry=r)
        self.otlp_spans = PCounter(
            "llmops_otlp_spans",
            "OTel spans read by the OTLP relay: relayed as calls, skipped (not an inference), "
            "rejected (to the DLQ)",
            ["result"],
            registry=r,
        )
        self.totals: Counter[str] = Counter()
        self._window_start = time.monotonic()
        self._window_events = 0
        self._lags: dict[int, int] = {}
        self._flush_times: list[float] = []

    def serve(self, host: str, port: int) -> None:
        """Start the ``/metrics`` HTTP server (a daemon thread); port 0 = off."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)

    def record_batch(self, stats: Counter[str]) -> None:
        """Count one processed batch (engine stats)."""
        self.events.labels("valid").inc(stats.get("valid", 0))
        self.events.labels("duplicate").inc(stats.get("duplicates", 0))
        self.events.labels("rejected").inc(stats.get("rejected", 0))
        # counted in the totals, but older than their budget window or period
        self.events.labels("budget_late").inc(stats.get("budget_late", 0))
        for key, n in stats.items():
            if key.startswith("rejected:"):
                self.rejected.labels(key.split(":", 1)[1]).inc(n)
        self.totals.update(stats)
        self._window_events += stats.get("events", 0)

    def record_otlp(self, relayed: int, skipped: int, rejected: list[str]) -> None:
        """Spans the OTLP relay read: relayed, skipped, and the reasons of the rejected."""
        self.otlp_spans.labels("relayed").inc(relayed)
        self.otlp_spans.labels("skipped").inc(skipped)
        self.otlp_spans.labels("rejected").inc(len(rejected))
        for reason in rejected:
            self.rejected.labels(reason).inc()
            self.totals[f"rejected:{reason}"] += 1

    def record_alerts(self, types: list[str]) -> None:
        for t in types:
            self.alerts.labels(t).inc()

    def record_flush(self, seconds: float) -> None:
        """One flush (ClickHouse writes + Kafka commit) took ``seconds``."""
        self.flush.observe(seconds)
        self._flush_times.append(seconds)

    def set_lag(self, partition: int, lag: int) -> None:
        self._lags[partition] = lag
        self.lag.labels(str(partition)).set(lag)

    def maybe_log(self, every_s: float = 10.0, **extra: Any) -> None:
        """Emit one JSON log line with throughput, lag and DLQ counts every ``every_s``."""
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < every_s:
            return
        rate = self._window_events / elapsed
        self.rate.set(rate)
        self._window_start, self._window_events = now, 0
        dlq = {k.split(":", 1)[1]: v for k, v in self.totals.items() if k.startswith("rejected:")}
        flushes, self._flush_times = self._flush_times, []
        log.info(
            {
                "event": "worker_health",
                "events_per_s": round(rate, 1),
                "events_total": self.totals.get("events", 0),
                "duplicates_total": self.totals.get("duplicates", 0),
                "dlq_total": self.totals.get("rejected", 0),
                "dlq_by_reason": dlq,
                "lag": sum(self._lags.values()),
                "flushes": len(flushes),
                "flush_s_avg": round(sum(flushes) / len(flushes), 3) if flushes else None,
                "flush_s_max": round(max(flushes), 3) if flushes else None,
                **extra,
            }
        )
