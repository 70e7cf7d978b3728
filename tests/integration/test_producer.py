"""The app-side producer and the load generator against a real Kafka broker: events arrive
keyed by tenant, unchanged and decodable, one tenant per partition in send order; bad events
fail before anything is sent; broker-side failures surface at flush; the load generator puts
exactly the requested number of events on the topic, near its target rate. Also the Kafka
security settings → aiokafka arguments mapping."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import ssl
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from pydantic import SecretStr

from llmops_stream.stream.core.decode import decode_batch
from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.dev.loadgen import run_loadgen, tenant_key
from llmops_stream.stream.kafka.producer import (
    CallEventProducer,
    DeliveryError,
    kafka_security_kwargs,
)
from llmops_stream.stream.normalize import call_event
from llmops_stream.stream.runtime.settings import Settings

pytestmark = pytest.mark.integration

Records = list[ConsumerRecord[bytes, bytes]]


async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> Records:
    """Every record of ``topic`` from the start (no group), waiting for ``expected`` of them."""
    parts = await partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out: Records = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            out += [r for recs in batch.values() for r in recs]
        return out
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> int:
    """Records on ``topic``: the sum of its partitions' end offsets."""
    parts = await partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


def make_events(n: int, tenants: int) -> list[dict[str, Any]]:
    return [
        call_event(
            tenant_id=f"tenant-{i % tenants}",
            model="gpt-4o-mini",
            usage={"input_tokens": 100 + i, "output_tokens": 10, "cache_read_tokens": i % 50},
            event_id=f"evt-{i:05d}",
            ts=1_795_420_000_000 + i,
            app="doc-qa",
            latency_ms=120.5,
            prompt_version=str(i),  # the send order, to check per-tenant ordering
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- producer


def test_producer_round_trip(kafka_broker: KafkaBroker, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("calls")
    kafka_broker.create_topics({topic: 3})
    bs = kafka_broker.bootstrap_servers
    events = make_events(600, tenants=7)

    async def scenario() -> Records:
        async with CallEventProducer(bs, topic=topic) as producer:
            for event in events[:300]:
                await producer.send(event)
            await producer.flush()
            assert await end_offsets(bs, topic) == 300  # flush means delivered
            for event in events[300:]:
                await producer.send(event)
        # leaving the context flushed the rest
        return await read_all(bs, topic, len(events))

    records = asyncio.run(scenario())
    assert len(records) == len(events)
    by_id = {e["event_id"]: e for e in events}
    by_tenant: dict[bytes, Records] = {}
    for r in records:
        event = orjson.loads(r.value)
        assert event == by_id[event["event_id"]]  # unchanged
        assert r.key == event["tenant_id"].encode()  # keyed by tenant (UTF-8)
        by_tenant.setdefault(r.key, []).append(r)
    assert len(by_tenant) == 7
    assert {r.partition for r in records} == {0, 1, 2}  # 7 tenants spread over partitions
    for recs in by_tenant.values():
        assert len({r.partition for r in recs}) == 1  # one tenant, one partition
        recs.sort(key=lambda r: r.offset)
        order = [int(orjson.loads(r.value)["prompt_version"]) for r in recs]
        assert order == sorted(order)  # in send order
    batch, rejected = decode_batch([r.value for r in records])
    assert len(rejected) == 0 and batch.n == len(events)
    assert int(batch.input_tokens.sum()) == sum(e["usage"]["input_tokens"] for e in events)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("event_id"), "event_id"),
        (lambda e: e.update(event_id=""), "event_id"),
        (lambda e: e.update(event_id="x" * 129), "longer than 128"),
        (lambda e: e.pop("ts"), "ts"),
        (lambda e: e.update(ts=1.5), "ts"),
        (lambda e: e.update(tenant_id=42), "tenant_id"),
        (lambda e: e.pop("model"), "model"),
        (lambda e: e.pop("usage"), "usage"),
        (lambda e: e["usage"].pop("output_tokens"), "output_tokens"),
        (lambda e: e["usage"].update(input_tokens=-1), "input_tokens"),
        (lambda e: e["usage"].update(input_tokens="12"), "input_tokens"),
        (lambda e: e.update(extra={1, 2}), "JSON"),
        (lambda e: e.update(embedding="A" * (1 << 20)), "limit"),
    ],
    ids=[
        "no-event-id",
        "empty-event-id",
        "long-event-id",
        "no-ts",
        "float-ts",
        "numeric-tenant",
        "no-model",
        "no-usage",
        "no-output-tokens",
        "negative-input",
        "string-input",
        "not-json",
        "too-large",
    ],
)
def test_invalid_events_raise_before_sending(
    kafka_broker: KafkaBroker,
    unique_name: Callable[[str], str],
    mutate: Callable[[dict[str, Any]], object],
    message: str,
) -> None:
    topic = unique_name("calls")
    kafka_broker.create_topics([topic])
    bs = kafka_broker.bootstrap_servers
    event = make_events(1, tenants=1)[0]
    mutate(event)

    async def scenario() -> int:
        async with CallEventProducer(bs, topic=topic) as producer:
            with pytest.raises(ValueError, match=message):
                await producer.send(event)
        return await end_offsets(bs, topic)

    assert asyncio.run(scenario()) == 0


def test_not_started_and_delivery_failure(
    kafka_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("small")
    # The broker refuses messages above 2,000 bytes on this topic: a failure only the
    # broker can report, after send() returned.
    kafka_broker.create_topics([topic], configs={topic: {"max.message.bytes": "2000"}})
    bs = kafka_broker.bootstrap_servers
    small, big = make_events(2, tenants=1)
    big["details"] = "x" * 5000

    async def scenario() -> None:
        producer = CallEventProducer(bs, topic=topic)
        with pytest.raises(RuntimeError, match="not started"):
            await producer.send(small)
        await producer.start()
        try:
            await producer.send(small)
            await producer.flush()
            await producer.send(big)
            with pytest.raises(DeliveryError, match="1 call event") as info:
                await producer.flush()
            assert info.value.failed == 1
            await producer.send(small)
            await producer.flush()  # the failure was reported once; the producer still works
            await producer.send(big)
        finally:
            with pytest.raises(DeliveryError):
                await producer.stop()  # stop reports what flush would have
        assert await end_offsets(bs, topic) == 2
        await producer.stop()  # stopped already: a no-op

    asyncio.run(scenario())


# --------------------------------------------------------------------------- load generator


def test_loadgen_paced_exact_count(
    kafka_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("load")
    kafka_broker.create_topics({topic: 4})
    bs = kafka_broker.bootstrap_servers
    target, n = 2000.0, 4000
    progress: list[tuple[int, float]] = []  # (sent, rate so far)

    async def scenario() -> tuple[Any, Records]:
        stats = await run_loadgen(
            bs,
            topic=topic,
            rate=target,
            n_events=n,
            seed=3,
            n_tenants=20,
            embedding_share=0.2,
            on_progress=lambda sent, rate: progress.append((sent, rate)),
        )
        assert await end_offsets(bs, topic) == n  # exactly n: no loss, no duplicate
        return stats, await read_all(bs, topic, n)

    stats, records = asyncio.run(scenario())
    assert stats.sent == n and stats.target_rate == target
    # Paced, not flooded, and roughly at the target (generous: shared CI machines).
    assert 0.5 * target <= stats.achieved_rate <= 1.3 * target, stats.summary()
    assert stats.seconds >= n / target * 0.75
    assert progress and progress[-1][0] == n
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    assert all(0 < rate < 1.5 * target for _, rate in progress[1:])

    assert len(records) == n
    assert len({r.value for r in records}) > 0.98 * n  # synth's ~0.5 % app retries aside
    partition_of: dict[bytes, int] = {}
    for r in records:
        assert r.key == orjson.loads(r.value)["tenant_id"].encode()
        assert partition_of.setdefault(r.key, r.partition) == r.partition
    batch, rejected = decode_batch([r.value for r in records])
    assert len(rejected) == 0 and batch.n == n


def test_loadgen_unpaced_and_stop(
    kafka_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    fast, endless = unique_name("load-fast"), unique_name("load-endless")
    kafka_broker.create_topics({fast: 2, endless: 2})
    bs = kafka_broker.bootstrap_servers

    async def scenario() -> None:
        stats = await run_loadgen(bs, topic=fast, rate=math.inf, n_events=20_000, embedding_share=0)
        assert stats.sent == 20_000 == await end_offsets(bs, fast)
        assert stats.achieved_rate > 0 and stats.bytes_sent > 20_000 * 300

        # n_events=None runs until stopped; what was queued is delivered and counted.
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.0, stop.set)
        stats = await run_loadgen(bs, topic=endless, rate=5000, n_events=None, stop=stop)
        assert stats.sent > 1000
        assert stats.sent == await end_offsets(bs, endless)

    asyncio.run(scenario())


def test_loadgen_missing_topic(
    kafka_broker: KafkaBroker, unique_name: Callable[[str], str]
) -> None:
    missing = unique_name("missing")
    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(run_loadgen(kafka_broker.bootstrap_servers, topic=missing, n_events=1))


def test_tenant_key_fast_path_and_fallback() -> None:
    assert tenant_key(b'{"event_id":"e","tenant_id":"acme-1","ts":1}') == b"acme-1"
    # Spacing or escapes the slice cannot handle go through a real JSON parse.
    assert tenant_key(b'{"tenant_id": "spaced"}') == b"spaced"
    assert tenant_key(b'{"tenant_id":"a\\"b"}') == b'a"b'
    assert tenant_key(b'{"tenant_id":"caf\\u00e9"}') == "café".encode()
    assert tenant_key('{"tenant_id":"café"}'.encode()) == "café".encode()


# --------------------------------------------------------------------------- security settings

SECRET = "hunter2-do-not-log"  # noqa: S105 - a test value, not a credential


def test_security_kwargs_plaintext_and_sasl() -> None:
    assert kafka_security_kwargs(SimpleNamespace()) == {}  # before the settings exist
    assert kafka_security_kwargs(SimpleNamespace(kafka_security_protocol="PLAINTEXT")) == {}
    sasl = SimpleNamespace(
        kafka_security_protocol="sasl_plaintext",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password=SecretStr("s3cret"),
    )
    assert kafka_security_kwargs(sasl) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret",
    }
    # The real settings object, as the CLI passes it (explicit values win over env).
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="svc",
        kafka_sasl_password=SecretStr(SECRET),
        kafka_ssl_cafile=None,
        kafka_ssl_certfile=None,
        kafka_ssl_keyfile=None,
    )
    kwargs = kafka_security_kwargs(settings)
    assert kwargs["sasl_plain_password"] == SECRET
    assert isinstance(kwargs.pop("ssl_context"), ssl.SSLContext)
    assert SECRET not in repr(settings)
    ssl_only = kafka_security_kwargs(SimpleNamespace(kafka_security_protocol="SSL"))
    assert ssl_only["security_protocol"] == "SSL"
    assert isinstance(ssl_only["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kafka_security_protocol": "TLS"}, "must be one of"),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": SecretStr(SECRET)}, "SASL_SSL"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "password"),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "GSSAPI",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": SecretStr(SECRET),
            },
            "mechanism",
        ),
        ({"kafka_ssl_cafile": "ca.pem"}, "use SSL"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"}, "TLS"),
    ],
)
def test_security_kwargs_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        kafka_security_kwargs(SimpleNamespace(**fields))
    assert SECRET not in str(info.value)  # names settings, never the secret's value


def test_security_kwargs_tls_files(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmops-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = SimpleNamespace(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="svc",
        kafka_sasl_password=SecretStr("pw"),
        kafka_ssl_cafile=cert_file,
        kafka_ssl_certfile=cert_file,
        kafka_ssl_keyfile=key_file,
    )
    kwargs = kafka_security_kwargs(settings)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "llmops-test"),),)]
    assert kwargs["sasl_mechanism"] == "PLAIN"
