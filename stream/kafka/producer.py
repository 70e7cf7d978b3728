"""The producer apps use to emit call events (SPEC §3) to Kafka, and Kafka security settings.

Job
---
:class:`CallEventProducer` is the small async API an app calls once per LLM call::

    async with CallEventProducer("kafka:9092") as producer:
        await producer.send(event_from_openai(response, tenant_id="acme", app="doc-qa"))

``send`` checks the required fields cheaply (a bad event fails in the app, where the bug
is, rather than in the worker's dead-letter topic), keys the message by ``tenant_id``
(aiokafka's default partitioner is the Java client's murmur2, so one tenant's events
land on one partition, in order, whichever client produced them) and serialises with
orjson. It returns once the event is queued, not delivered: aiokafka batches events per
partition for ``linger_ms``. :meth:`CallEventProducer.flush` (and ``stop``) wait for
delivery and raise :class:`DeliveryError` if any queued event could not be delivered; the
producer stays usable afterwards.

Delivery settings: ``acks="all"`` with the idempotent producer, so a retried batch is
never written twice (the worker deduplicates by ``event_id`` too, but only within its
horizon). Compression is off by default: with aiokafka, lz4/zstd/snappy need the
optional ``cramjam`` package on the producer *and* on every consumer (a worker without
it could not read the topic), and gzip, the only built-in codec, costs the worker about
3 µs per event to inflate (measured on synthetic events of ~800 bytes: ~320,000 events/s
per core) — a third of a core at the 100,000 events/s end-to-end target. Pass
``compression_type="gzip"`` (or ``"lz4"`` with cramjam everywhere) when network bytes
matter more.

:func:`kafka_security_kwargs` turns the ``kafka_*`` security settings into aiokafka
keyword arguments (SASL/PLAIN or SCRAM, TLS) for any Kafka client of the project: the
producer, the load generator, the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from llmops_stream.stream.core.decode import MAX_MESSAGE_BYTES
from llmops_stream.stream.core.errors import ConfigError

__all__ = ["CallEventProducer", "DeliveryError", "kafka_security_kwargs"]

DEFAULT_TOPIC = "llm.calls"

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Mechanisms aiokafka speaks without extra packages or a token-provider object.
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class DeliveryError(Exception):
    """Queued events could not be delivered (broker unreachable past the timeout, topic
    missing, not authorised, ...). ``failed`` counts them; the first cause is chained."""

    def __init__(self, failed: int, first: BaseException) -> None:
        super().__init__(f"{failed} call event(s) not delivered to Kafka: {first!r}")
        self.failed = failed


def _check_event(event: Mapping[str, Any]) -> str:
    """Raise ValueError unless the required v1 fields are present and typed; the tenant."""
    if not isinstance(event, Mapping):
        raise ValueError(f"call event must be a dict, got {type(event).__name__}")
    for name in ("event_id", "tenant_id", "model"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"call event: {name} must be a non-empty string, got {value!r}")
    for name in ("event_id", "tenant_id"):
        if len(event[name]) > 128:
            raise ValueError(f"call event: {name} is longer than 128 characters")
    ts = event.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, str | int):
        raise ValueError(f"call event: ts must be an RFC 3339 string or epoch ms, got {ts!r}")
    usage = event.get("usage")
    if not isinstance(usage, Mapping):
        raise ValueError(f"call event: usage must be an object, got {usage!r}")
    for name in ("input_tokens", "output_tokens"):
        value = usage.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"call event: usage.{name} must be an integer >= 0, got {value!r}")
    tenant: str = event["tenant_id"]
    return tenant


class CallEventProducer:
    """Async producer of call events to ``topic`` (default ``llm.calls``).

    ``kafka_kwargs`` go to :class:`aiokafka.AIOKafkaProducer` and override the defaults
    (``acks="all"``, ``enable_idempotence=True``, no compression); add
    ``**kafka_security_kwargs(settings)`` for SASL/TLS clusters.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = DEFAULT_TOPIC,
        linger_ms: int = 5,
        **kafka_kwargs: Any,
    ) -> None:
        self.topic = topic
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            **kafka_kwargs,
        }
        self._producer: AIOKafkaProducer | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._failed = 0
        self._first_error: BaseException | None = None

    async def start(self) -> None:
        """Connect to the cluster (aiokafka producers must be created inside a running loop,
        which is why this is not done in ``__init__``)."""
        if self._producer is not None:
            return
        self._producer = await _started(self._config)

    async def stop(self) -> None:
        """Deliver what is queued, then disconnect; raises :class:`DeliveryError` like
        :meth:`flush` (the connection is closed either way)."""
        if self._producer is None:
            return
        try:
            await self._flush(renew=False)
        finally:
            producer, self._producer = self._producer, None
            if producer is not None:
                await producer.stop()

    async def __aenter__(self) -> CallEventProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def send(self, event: Mapping[str, Any]) -> None:
        """Queue ``event`` (a v1 call event dict) for delivery, keyed by its tenant.

        Raises ValueError, before anything is sent, when a required field is missing or
        mistyped, the event cannot be serialised, or it exceeds the 1 MiB message limit.
        Waits only when aiokafka's per-partition buffer is full (backpressure).
        """
        producer = self._producer
        if producer is None:
            raise RuntimeError("CallEventProducer is not started: call start() or use async with")
        tenant = _check_event(event)
        try:
            value = orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"call event is not JSON-serialisable: {exc}") from None
        if len(value) > MAX_MESSAGE_BYTES:
            raise ValueError(
                f"call event is {len(value)} bytes, above the {MAX_MESSAGE_BYTES}-byte limit"
            )
        future = await producer.send(self.topic, value, key=tenant.encode())
        # Delivery is confirmed per batch later; remember the outcome without awaiting it.
        self._pending.add(future)
        future.add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if future.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = future.exception()
        if error is not None:
            self._failed += 1
            if self._first_error is None:
                self._first_error = error

    async def flush(self) -> None:
        """Wait until every queued event is delivered (or failed); raise
        :class:`DeliveryError` for events that failed since the last flush."""
        await self._flush(renew=True)

    async def _flush(self, *, renew: bool) -> None:
        if self._producer is not None:
            await self._producer.flush()
        if self._pending:
            # The batch futures are resolved by flush(); this only lets their callbacks run.
            await asyncio.wait(list(self._pending))
        if self._first_error is not None:
            failed, first = self._failed, self._first_error
            self._failed, self._first_error = 0, None
            if renew:
                await self._renew()
            raise DeliveryError(failed, first) from first

    async def _renew(self) -> None:
        """Replace the Kafka producer after a failed batch.

        The idempotent producer numbers its batches per partition; aiokafka counts a
        batch the broker refused (too large, expired while the broker was away) as sent,
        so every later batch to that partition would fail as out of order. A new producer
        gets a new producer id and starts its numbering afresh. The new one is started
        before the old one is closed, so concurrent ``send`` calls never see no producer.
        """
        old = self._producer
        if old is None:
            return
        self._producer = await _started(self._config)
        await old.stop()


async def _started(config: dict[str, Any]) -> AIOKafkaProducer:
    """A started aiokafka producer; a failed start (e.g. no broker) is cleaned up."""
    producer = AIOKafkaProducer(**config)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


def _secret(value: Any) -> str | None:
    """The plain text of a SecretStr (or a plain string); None when empty or unset."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    text = getter() if callable(getter) else value
    return str(text) if text else None


def kafka_security_kwargs(settings: Any) -> dict[str, Any]:
    """aiokafka keyword arguments for the cluster's security settings (empty for PLAINTEXT).

    Reads, when ``settings`` has them (missing attributes count as unset):
    ``kafka_security_protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
    ``kafka_sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; default PLAIN),
    ``kafka_sasl_username``, ``kafka_sasl_password`` (a SecretStr), and
    ``kafka_ssl_cafile`` / ``kafka_ssl_certfile`` / ``kafka_ssl_keyfile`` (PEM files; with
    SSL and no CA file the system's trusted CAs verify the broker).

    Raises ConfigError for an unknown protocol or mechanism, credentials or TLS files that
    the protocol would silently ignore, SASL without username and password, or an
    unreadable TLS file. Messages name settings, never their values.
    """
    protocol = str(getattr(settings, "kafka_security_protocol", None) or "PLAINTEXT").upper()
    mechanism = getattr(settings, "kafka_sasl_mechanism", None)
    username = getattr(settings, "kafka_sasl_username", None) or None
    password = _secret(getattr(settings, "kafka_sasl_password", None))
    files = {
        name: getattr(settings, f"kafka_ssl_{name}", None) or None
        for name in ("cafile", "certfile", "keyfile")
    }
    if protocol not in _SECURITY_PROTOCOLS:
        raise ConfigError(
            f"kafka_security_protocol must be one of {', '.join(_SECURITY_PROTOCOLS)}, "
            f"got {protocol!r}"
        )
    sasl = protocol.startswith("SASL_")
    tls = protocol.endswith("SSL")
    if (username or password or mechanism) and not sasl:
        raise ConfigError(
            "Kafka SASL settings are set but kafka_security_protocol is "
            f"{protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
        )
    if any(files.values()) and not tls:
        raise ConfigError(
            f"kafka_ssl_* files are set but kafka_security_protocol is {protocol}: "
            "use SSL or SASL_SSL"
        )
    kwargs: dict[str, Any] = {}
    if protocol != "PLAINTEXT":
        kwargs["security_protocol"] = protocol
    if sasl:
        mech = str(mechanism or "PLAIN").upper()
        if mech not in _SASL_MECHANISMS:
            raise ConfigError(
                f"kafka_sasl_mechanism must be one of {', '.join(_SASL_MECHANISMS)}, got {mech!r}"
            )
        if not (username and password):
            raise ConfigError(
                f"kafka_security_protocol {protocol} needs kafka_sasl_username and "
                "kafka_sasl_password"
            )
        kwargs.update(
            sasl_mechanism=mech, sasl_plain_username=str(username), sasl_plain_password=password
        )
    if tls:
        try:
            kwargs["ssl_context"] = create_ssl_context(
                cafile=_path(files["cafile"]),
                certfile=_path(files["certfile"]),
                keyfile=_path(files["keyfile"]),
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"Kafka TLS: cannot load kafka_ssl_cafile/certfile/keyfile ({type(exc).__name__}: "
                f"{getattr(exc, 'strerror', None) or exc})"
            ) from None
    return kwargs


def _path(value: Any) -> str | None:
    return str(value) if value else None
