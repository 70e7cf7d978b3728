"""The local Kafka broker is a real Kafka: the client features the worker relies on work
against it with aiokafka — keyed produce, consumer groups with manual commits, transactions
seen through read_committed, compacted topics, and a broker crash plus restart that keeps
the committed data. Also the command-line start/status/stop and the port-clash retry.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord

from llmops_stream.stream.dev import kafka_broker as kb
from llmops_stream.stream.dev.kafka_broker import KafkaBroker, KafkaBrokerError

pytestmark = pytest.mark.integration

Records = list[ConsumerRecord[bytes, bytes]]


async def drain(consumer: AIOKafkaConsumer, expected: int, timeout_s: float = 30) -> Records:
    """Poll until ``expected`` records arrived, then 0.5 s more to catch any extra one."""
    out: Records = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out) < expected and loop.time() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        out += [r for recs in batch.values() for r in recs]
    batch = await consumer.getmany(timeout_ms=500)
    out += [r for recs in batch.values() for r in recs]
    return out


async def wait_assigned(consumer: AIOKafkaConsumer, timeout_s: float = 30) -> set[TopicPartition]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not consumer.assignment():
        assert loop.time() < deadline, "consumer got no partitions"
        await consumer.getmany(timeout_ms=200)
    return set(consumer.assignment())


def consumer_for(bootstrap: str, topic: str, group: str | None, **kw: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kw,
    )


def test_keyed_produce_group_commit_and_no_redelivery(
    kafka_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("calls"), unique_name("group")
    kafka_broker.create_topics({topic: 3})
    bs = kafka_broker.bootstrap_servers
    n, tenants = 300, 10

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bs, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for i in range(n):
                await producer.send(topic, key=f"tenant-{i % tenants}".encode(), value=b"%d" % i)
            await producer.flush()

            first = consumer_for(bs, topic, group)
            await first.start()
            try:
                got = await drain(first, n)
                await first.commit()
            finally:
                await first.stop()
            assert sorted(int(r.value) for r in got) == list(range(n))
            # Keyed: one partition per tenant, and per tenant the order it was produced in.
            by_key: dict[bytes, list[ConsumerRecord[bytes, bytes]]] = {}
            for r in got:
                by_key.setdefault(r.key, []).append(r)
            assert len(by_key) == tenants
            for recs in by_key.values():
                assert len({r.partition for r in recs}) == 1
                values = [int(r.value) for r in recs]
                assert values == sorted(values)

            second = consumer_for(bs, topic, group)
            await second.start()
            try:
                assigned = await wait_assigned(second)
                assert len(assigned) == 3
                ends = await second.end_offsets(list(assigned))
                for tp in assigned:
                    assert await second.committed(tp) == ends[tp]
                    assert await second.position(tp) == ends[tp]
                assert await drain(second, 0, timeout_s=1) == []
                # Positioned at the commit, not merely idle: new records, and only they, arrive.
                for i in range(n, n + 10):
                    await producer.send(topic, key=b"tenant-0", value=b"%d" % i)
                await producer.flush()
                more = await drain(second, 10)
                assert sorted(int(r.value) for r in more) == list(range(n, n + 10))
            finally:
                await second.stop()
        finally:
            await producer.stop()

    asyncio.run(scenario())


def test_aborted_transactions_invisible_to_read_committed(
    kafka_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    topic, group, source = unique_name("tx"), unique_name("tx-group"), unique_name("src")
    # The source topic must exist: aiokafka retries a TxnOffsetCommit for an unknown topic
    # forever.
    kafka_broker.create_topics({topic: 2, source: 1})
    bs = kafka_broker.bootstrap_servers
    src = TopicPartition(source, 0)

    async def scenario() -> None:
        tx = AIOKafkaProducer(bootstrap_servers=bs, transactional_id=unique_name("txid"))
        await tx.start()
        try:
            async with tx.transaction():
                for i in range(5):
                    await tx.send(topic, key=b"a", value=b"committed-%d" % i)
                await tx.send_offsets_to_transaction({src: 5}, group)
            await tx.begin_transaction()
            for i in range(5):
                await tx.send(topic, key=b"a", value=b"aborted-%d" % i)
            await tx.send_offsets_to_transaction({src: 99}, group)
            await tx.abort_transaction()
            async with tx.transaction():
                await tx.send(topic, key=b"b", value=b"committed-5")
        finally:
            await tx.stop()

        committed = consumer_for(bs, topic, None, isolation_level="read_committed")
        uncommitted = consumer_for(bs, topic, None, isolation_level="read_uncommitted")
        await committed.start()
        await uncommitted.start()
        try:
            seen = sorted(r.value for r in await drain(committed, 6, timeout_s=10))
            raw = sorted(r.value for r in await drain(uncommitted, 11, timeout_s=10))
        finally:
            await committed.stop()
            await uncommitted.stop()
        assert seen == [b"committed-%d" % i for i in range(6)]
        # The aborted records were written: only the isolation level hides them.
        assert raw == sorted(seen + [b"aborted-%d" % i for i in range(5)])

        admin = AIOKafkaAdminClient(bootstrap_servers=bs)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        assert {tp: meta.offset for tp, meta in offsets.items()} == {src: 5}

    asyncio.run(scenario())


def test_compacted_topic_creation(
    kafka_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    state, alerts = unique_name("budget.state"), unique_name("alerts")
    kafka_broker.create_topics({state: 2, alerts: 1}, compacted={state})
    kafka_broker.create_topics({state: 2})  # existing topics are left alone, no error

    async def from_a_running_loop() -> None:
        # Callers inside an event loop (async tests, the worker's tooling) may use it too.
        kafka_broker.create_topics([state, alerts])

    asyncio.run(from_a_running_loop())
    with pytest.raises(ValueError, match="compacted"):
        kafka_broker.create_topics([alerts], compacted={"not-listed"})

    async def describe() -> tuple[dict[str, str], dict[str, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
        await admin.start()
        try:
            resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in (state, alerts)]
            responses = await admin.describe_configs(resources)
            topics = await admin.describe_topics([state, alerts])
        finally:
            await admin.close()
        policy = {
            res[3]: entry[1]
            for resp in responses
            for res in resp.resources
            for entry in res[4]
            if entry[0] == "cleanup.policy"
        }
        return policy, {t["topic"]: len(t["partitions"]) for t in topics}

    policy, partitions = asyncio.run(describe())
    assert policy == {state: "compact", alerts: "delete"}
    assert partitions == {state: 2, alerts: 1}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of the test's own, for tests that crash or restart it."""
    broker = KafkaBroker(data_dir=tmp_path / "kafka", heap="384m")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_kill_and_restart_keeps_data_and_clients_reconnect(
    own_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("calls"), unique_name("group")
    own_broker.create_topics({topic: 2})
    bs = own_broker.bootstrap_servers
    port = own_broker.port
    assert port is not None
    pid_before = own_broker.pid

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bs, enable_idempotence=True, acks="all")
        consumer = consumer_for(bs, topic, group)
        await producer.start()
        await consumer.start()
        try:
            for i in range(50):
                await producer.send(topic, key=b"k%d" % (i % 5), value=b"%d" % i)
            await producer.flush()
            first = await drain(consumer, 50)
            assert sorted(int(r.value) for r in first) == list(range(50))
            await consumer.commit()

            await asyncio.to_thread(own_broker.kill)
            assert not port_open(port)
            await asyncio.to_thread(own_broker.restart)
            assert own_broker.bootstrap_servers == bs
            assert own_broker.pid != pid_before

            # The same client objects carry on: the producer reconnects and delivers, the
            # consumer rejoins its group at the committed offsets (no redelivery).
            for i in range(50, 100):
                await producer.send(topic, key=b"k%d" % (i % 5), value=b"%d" % i)
            await asyncio.wait_for(producer.flush(), timeout=60)
            second = await drain(consumer, 50, timeout_s=60)
            assert sorted(int(r.value) for r in second) == list(range(50, 100))
            await consumer.commit()
        finally:
            await consumer.stop()
            await producer.stop()

        # Everything acknowledged before the crash is still on disk.
        fresh = consumer_for(bs, topic, unique_name("fresh"))
        await fresh.start()
        try:
            everything = await drain(fresh, 100)
        finally:
            await fresh.stop()
        assert sorted(int(r.value) for r in everything) == list(range(100))

    asyncio.run(scenario())


def test_explicit_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        broker = KafkaBroker(port=busy.getsockname()[1], data_dir=tmp_path / "k")
        with pytest.raises(KafkaBrokerError, match="already in use"):
            broker.start()
    assert not broker.is_running()


def test_port_taken_between_choice_and_bind_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates losing the race for a free port to another process: the first ports handed
    # out are taken by the time the JVM binds, which must lead to a retry on fresh ports.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        real_free_ports = kb._free_ports
        calls: list[int] = []

        def racy_free_ports(count: int) -> list[int]:
            calls.append(count)
            ports = real_free_ports(count)
            # The controller listener binds first, so a clash there fails fastest.
            return [ports[0], taken] if len(calls) == 1 else ports

        monkeypatch.setattr(kb, "_free_ports", racy_free_ports)
        monkeypatch.setattr(kb, "_port_is_free", lambda port: True)
        broker = KafkaBroker(data_dir=tmp_path / "k", heap="256m")
        try:
            broker.start(timeout_s=60)
            assert len(calls) >= 2
            assert taken not in (broker.port, broker.controller_port)
            assert port_open(broker.port or 0)
        finally:
            broker.stop()


def test_command_line_start_status_stop(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    # kafka_broker is requested only so that the jars are known to be fetched already.
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "llmops_stream.stream.dev.kafka_broker"]
    env = {**os.environ, "LLMOPS_KAFKA_CACHE": str(kafka_broker.cache_dir)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own module
            [*cli, *args, "--state-dir", str(state)],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip

    started = run("start", "--heap", "256m")
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    info = json.loads((state / "broker.json").read_text())
    pid = int((state / "broker.pid").read_text())
    try:
        assert bootstrap == info["bootstrap_servers"]
        assert bootstrap.startswith("127.0.0.1:")
        # The starting process has exited; the broker it left behind serves.
        assert port_open(int(bootstrap.rsplit(":", 1)[1]))
        status = run("status")
        assert (status.returncode, status.stdout.strip()) == (0, bootstrap)
        again = run("start")
        assert (again.returncode, again.stdout.strip()) == (0, bootstrap)
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert kb._process_fingerprint(pid) is None
    assert not (state / "broker.pid").exists()
    assert not Path(info["data_dir"]).exists()
    assert run("status").returncode == 1
