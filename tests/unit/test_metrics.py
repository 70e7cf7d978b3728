"""The worker's /metrics view serves the counters it records (Prometheus text format)."""

import socket
import urllib.request
from collections import Counter

from llmops_stream.stream.runtime.metrics import WorkerMetrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_reports_batches_lag_and_dlq() -> None:
    m = WorkerMetrics()
    port = free_port()
    m.serve("127.0.0.1", port)
    m.record_batch(
        Counter(
            {"events": 10, "valid": 7, "duplicates": 1, "rejected": 2, "rejected:invalid_json": 2}
        )
    )
    m.record_alerts(["budget", "budget", "drift"])
    m.set_lag(3, 42)
    m.flush.observe(0.2)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'llmops_events_total{result="valid"} 7.0' in body
    assert 'llmops_events_total{result="rejected"} 2.0' in body
    assert 'llmops_rejected_total{reason="invalid_json"} 2.0' in body
    assert 'llmops_alerts_total{type="budget"} 2.0' in body
    assert 'llmops_consumer_lag{partition="3"} 42.0' in body
    assert "llmops_flush_seconds_count 1.0" in body
