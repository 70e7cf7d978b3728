"""Fixtures for tests against real services.

``kafka_broker``: one real single-node Apache Kafka broker (KRaft) for the whole test
session, started on a free port on 127.0.0.1 and stopped at the end. Its jars are fetched
with Maven once and cached (``$LLMOPS_KAFKA_CACHE`` or ``~/.cache/llmops-stream/kafka``).
Tests share it, so each test works on its own topics and groups: ``unique_name``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from llmops_stream.stream.core.warmup import warm_up
from llmops_stream.stream.dev.kafka_broker import KafkaBroker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    # The data dir (with broker.log) lives under pytest's temp root, so the log of a failed
    # run is still there afterwards; pytest prunes old roots itself.
    broker = KafkaBroker(data_dir=tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("calls")`` → ``calls-test-foo-1a2b3c4d``: a topic or group name no other
    test (or earlier run against the same broker) uses."""
    # Kafka allows [A-Za-z0-9._-]; '_' is mapped too, because topics differing only in
    # '.' versus '_' collide in Kafka's metric names and are refused.
    test = re.sub(r"[^A-Za-z0-9.-]+", "-", request.node.name).strip("-")[:80]

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """The engine's kernels compiled into numba's on-disk cache before any test starts a
    worker or CLI process: on a fresh checkout the first compile takes tens of seconds, and
    processes started together would each compile on their own."""
    warm_up()
